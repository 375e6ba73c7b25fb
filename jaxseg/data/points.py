"""The LACP point-label reader (format 3 of :mod:`jaxseg.data.readers`): a CSV
plus per-video fps JSON, turned into one-segment labels: :func:`read_point_labels`.
"""

from __future__ import annotations

import csv
import warnings

import numpy as np

from jaxseg.data import io
from jaxseg.data import labels as labels_lib
from jaxseg.data.reader_common import number
from jaxseg.data.video import DataError, Dataset

POINT_COLUMNS = ("class", "class_index", "start_frame", "stop_frame", "video_id", "point")


def read_points(csv_path: str, fps_json_path: str,
                dataset: Dataset) -> dict[str, list[tuple[float, int]]]:
  """Parses an LACP point-label CSV into ``{video_id: [(time_s, class), ...]}``.

  Columns ``class,class_index,start_frame,stop_frame,video_id,point`` (others
  are ignored); ``point`` is a frame index at the video's original fps, taken
  from ``fps_json_path`` (``{video_id: fps}``). The class is matched by name
  (``class``) against ``dataset.class_names``.

  Raises:
    DataError: naming the file, the row (CSV line number) and the field, for a
      missing column, a non-numeric field, an unknown class or video, or a
      video without fps; also for a CSV with no row.
  """
  fps_data = io.load_json(fps_json_path, "fps")
  if not isinstance(fps_data, dict):
    raise DataError(f"{fps_json_path}: expected an object {{video_id: fps}}")
  index = {n: i for i, n in enumerate(dataset.class_names)}
  known = {v.video_id for v in dataset.videos}
  try:
    f = open(csv_path, newline="", encoding="utf-8-sig")  # a BOM is not part of "class"
  except FileNotFoundError:
    raise DataError(f"{csv_path}: point-label CSV not found") from None
  except OSError as e:
    raise DataError(f"{csv_path}: cannot read point-label CSV: {e}") from None
  points: dict[str, list[tuple[float, int]]] = {}
  with f:
    try:
      reader = csv.DictReader(f)
      header = reader.fieldnames
      if not header:
        raise DataError(f"{csv_path}: empty CSV (no header)")
      header = [h.strip() for h in header]
      reader.fieldnames = header
      missing = [c for c in POINT_COLUMNS if c not in header]
      if missing:
        raise DataError(f"{csv_path}: line 1: missing column(s) {missing}; "
                        f"expected {list(POINT_COLUMNS)}")
      rows = 0
      for row in reader:
        line = reader.line_num
        where = f"{csv_path}: line {line}"
        if None in row or any(row.get(c) is None for c in POINT_COLUMNS):
          raise DataError(f"{where}: expected {len(header)} fields")
        vid = row["video_id"].strip()
        if vid not in known:
          raise DataError(f"{where}: field video_id: unknown video {vid!r}")
        cls = row["class"].strip()
        if cls not in index:
          raise DataError(f"{where}: video {vid!r}: field class: unknown class "
                          f"{cls!r}; known: {dataset.class_names}")
        for c in ("class_index", "start_frame", "stop_frame"):
          number(row[c], where=f"{where}: video {vid!r}: field {c}")
        point = number(row["point"], where=f"{where}: video {vid!r}: field point")
        if point < 0:
          raise DataError(f"{where}: video {vid!r}: field point: {point} < 0")
        if vid not in fps_data:
          raise DataError(f"{fps_json_path}: no fps for video {vid!r} "
                          f"(needed by {csv_path} line {line})")
        fps = number(fps_data[vid], where=f"{fps_json_path}: video {vid!r}")
        if fps <= 0:
          raise DataError(f"{fps_json_path}: video {vid!r}: fps must be > 0, got {fps}")
        points.setdefault(vid, []).append((point / fps, index[cls]))
        rows += 1
    except csv.Error as e:
      raise DataError(f"{csv_path}: line {reader.line_num}: malformed CSV: {e}") from None
    except UnicodeDecodeError as e:
      raise DataError(f"{csv_path}: cannot decode CSV: {e}") from None
  if rows == 0:
    raise DataError(f"{csv_path}: no point label (the CSV has a header only)")
  return points


def read_point_labels(csv_path: str, fps_json_path: str,
                      dataset: Dataset) -> dict[str, np.ndarray]:
  """Format 3: LACP point labels as one-segment labels.

  Each point labels the segment holding it (segment ``t`` covers
  ``[t, t+1) / feature_rate`` seconds); a point past the end of the features
  is dropped with a warning.

  Returns:
    ``{video_id: (T, N) uint8}`` for every video of ``dataset`` (all zeros
    where the CSV has no point).
  """
  return read_point_segment_labels(csv_path, fps_json_path, dataset).labels


def read_point_segment_labels(csv_path: str, fps_json_path: str,
                               dataset: Dataset) -> labels_lib.SegmentLabels:
  """Like :func:`read_point_labels`, as a :class:`SegmentLabels` (mode
  ``"points"``) that also counts the points dropped past the end."""
  points = read_points(csv_path, fps_json_path, dataset)
  out = labels_lib.labels_from_points(dataset, points)
  if out.num_dropped:
    warnings.warn(f"{csv_path}: {out.num_dropped} point(s) lie past the end of "
                  "their video's features and were dropped", stacklevel=2)
  return out
