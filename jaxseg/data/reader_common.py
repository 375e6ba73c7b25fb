"""What the dataset readers share: feature loading and checking, annotation
fields, split files, ambiguous intervals.

:mod:`jaxseg.data.readers` (ActivityNet JSON, :func:`~jaxseg.data.readers.load_dataset`),
:mod:`jaxseg.data.wtalc` (the W-TALC bundle) and :mod:`jaxseg.data.points`
(LACP point labels) build on these; the checks and their errors are described
in :mod:`jaxseg.data.readers`.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from jaxseg.data import io
from jaxseg.data import layouts
from jaxseg.data import npy
from jaxseg.data.video import DataError, Dataset, Video


# ------------------------------------------------------- annotation fields


def bounds(pair, *, where: str) -> tuple[float, float]:
  """``(start, end)`` seconds from a two-element ``[start, end]`` (numbers or numeric strings).

  Raises:
    DataError: naming ``where`` if a bound is not a number, negative, or end < start.
  """
  start = number(pair[0], where=f"{where}[0]")
  end = number(pair[1], where=f"{where}[1]")
  if start < 0:
    raise DataError(f"{where}: start {start} < 0")
  if end < start:
    raise DataError(f"{where}: end {end} < start {start}")
  return start, end


def number(value: Any, *, where: str) -> float:
  """A finite float from a number or a numeric string, else DataError."""
  if isinstance(value, np.ndarray) and value.size == 1:
    value = value.reshape(()).item()
  if isinstance(value, bool):
    raise DataError(f"{where}: expected a number, got {value!r}")
  if isinstance(value, (int, float, np.integer, np.floating)):
    out = float(value)
  elif isinstance(value, (str, bytes)):
    s = value.decode() if isinstance(value, bytes) else value
    try:
      out = float(s.strip())
    except ValueError:
      raise DataError(f"{where}: expected a number, got {value!r}") from None
  else:
    raise DataError(f"{where}: expected a number, got {value!r}")
  if not math.isfinite(out):
    raise DataError(f"{where}: expected a finite number, got {value!r}")
  return out


def check_id(vid: Any, *, where: str, what: str = "video id") -> None:
  """A video id (or a subset: ``what``) is a plain file name (never a path):
  else DataError naming ``where``."""
  try:
    io.child_path("", vid, what=what)
  except DataError as e:
    raise DataError(f"{where}: {e}") from None


def class_index(class_names: Sequence[str]) -> dict[str, int]:
  names = list(class_names)
  if len(set(names)) != len(names):
    raise ValueError(f"class_names has duplicates: {names}")
  return {n: i for i, n in enumerate(names)}


# ---------------------------------------------------------------- features


# No feature extractor in use comes near this (I3D's features are tens at most);
# a larger value is a byte-order or dtype mistake, and would overflow the
# model's float32 sums into inf scores.
MAX_FEATURE_MAGNITUDE = 1e6


def check_features(features: Any, *, path: str, video_id: str,
                   feature_dim: int | None) -> np.ndarray:
  """Validates one video's features; returns them as ``(T, D) float32``.

  Raises:
    DataError: not a numeric array, not 2-D, empty, non-finite, a value past
      float32 or ``MAX_FEATURE_MAGNITUDE``, or ``D`` not ``feature_dim``; the
      message names ``path`` and ``video_id``.
  """
  where = f"{path}: video {video_id!r}: features"
  if not isinstance(features, np.ndarray):
    raise DataError(f"{where}: expected an array, got {type(features).__name__}")
  if features.dtype == object or np.iscomplexobj(features) or not (
      np.issubdtype(features.dtype, np.number) or features.dtype == bool):
    raise DataError(f"{where}: expected a numeric array, got dtype {features.dtype}")
  if features.ndim != 2:
    raise DataError(f"{where}: expected a 2-D (T, D) array, got shape {features.shape}")
  if features.shape[0] == 0 or features.shape[1] == 0:
    raise DataError(f"{where}: empty array of shape {features.shape}")
  if feature_dim is not None and features.shape[1] != feature_dim:
    raise DataError(
        f"{where}: feature dimension D={features.shape[1]} but expected "
        f"D={feature_dim} (data.feature_dim in the config, or the first video's D)")
  finite = np.isfinite(features)
  if not finite.all():
    bad = np.argwhere(~finite)[0]
    raise DataError(
        f"{where}: {int((~finite).sum())} non-finite value(s) (NaN or inf), "
        f"first at segment {bad[0]}, dim {bad[1]}")
  with np.errstate(over="ignore"):
    out = np.asarray(features, np.float32)
  overflow = ~np.isfinite(out)
  if overflow.any():  # finite in the file's dtype, too large for float32
    bad = np.argwhere(overflow)[0]
    raise DataError(
        f"{where}: {int(overflow.sum())} value(s) beyond float32's range "
        f"(|x| > {float(np.finfo(np.float32).max):.3g}), first at segment {bad[0]}, "
        f"dim {bad[1]}: {features[tuple(bad)]!r}")
  huge = np.abs(out) > MAX_FEATURE_MAGNITUDE
  if huge.any():
    bad = np.argwhere(huge)[0]
    raise DataError(
        f"{where}: {int(huge.sum())} value(s) with |x| > {MAX_FEATURE_MAGNITUDE:g}, first "
        f"at segment {bad[0]}, dim {bad[1]}: {float(out[tuple(bad)]):.3g} (features are "
        "orders of magnitude smaller; check the file's byte order and dtype)")
  return out


def _load_npy(path: str, *, video_id: str) -> np.ndarray:
  if not os.path.isfile(path):
    _explain_missing(path, video_id)
  try:
    npy.read_header(path)  # a header claiming more than the file holds: no allocation
  except DataError as e:
    raise DataError(f"{path}: video {video_id!r}: cannot read features: "
                    f"{str(e).split(': ', 1)[1]}") from None
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise DataError(f"{path}: video {video_id!r}: cannot read features: {e}") from None


def _explain_missing(path: str, video_id: str) -> None:
  """Raises the DataError for a feature path that is not a readable file."""
  layouts.explain_unreadable(path, video_id)
  raise DataError(f"{path}: feature file missing for annotated video {video_id!r}")



def load_feature_files(paths: Sequence[str], video_id: str
                       ) -> tuple[np.ndarray, str, tuple[tuple[str, int], ...]]:
  """Raw ``(T, D)`` features of one video from its file(s), one per stream
  (concatenated on D, same T), the first file (for messages), and each
  stream's ``(file, width)`` (empty for one file: a joint layout)."""
  if len(paths) == 1:
    return _load_npy(paths[0], video_id=video_id), paths[0], ()
  parts = []
  for path in paths:
    arr = check_features(_load_npy(path, video_id=video_id), path=path,
                         video_id=video_id, feature_dim=None)
    parts.append(arr)
  lengths = [p.shape[0] for p in parts]
  if len(set(lengths)) > 1:
    detail = ", ".join(f"{p}: T={t}" for p, t in zip(paths, lengths))
    names = [stream_name(p) for p in paths]
    raise DataError(
        f"{paths[0]}: video {video_id!r}: streams {names} differ in "
        f"length ({detail})")
  return (np.concatenate(parts, axis=1), paths[0],
          tuple((p, int(a.shape[1])) for p, a in zip(paths, parts)))


def stream_name(path: str) -> str:
  """The stream of a stream layout's feature file: its folder's name."""
  return os.path.basename(os.path.dirname(path))


def stream_widths(files: Sequence[tuple[str, int]]) -> dict[str, int]:
  """``{stream: width}`` of :func:`load_feature_files`' ``(file, width)`` pairs."""
  return {stream_name(p): w for p, w in files}


def check_stream_widths(files: Sequence[tuple[str, int]], expected: dict, *,
                        video_id: str, source: str) -> None:
  """Each stream's width is the one ``expected`` gives it (``{stream: width}``).

  Args:
    files: the video's ``(file, width)`` per stream (:func:`load_feature_files`).
    expected: ``{stream: width}``; a stream it does not name is not checked.
    video_id: for the message.
    source: what ``expected`` comes from, for the message ("the run", ...).

  Raises:
    DataError: naming the stream's file, its width and the expected one.
  """
  for path, width in files:
    name = stream_name(path)
    want = expected.get(name)
    if want is not None and want != width:
      got = ", ".join(f"{k} {v}" for k, v in stream_widths(files).items())
      wanted = ", ".join(f"{k} {v}" for k, v in expected.items())
      raise DataError(
          f"{path}: video {video_id!r}: stream {name!r} has width {width}, but "
          f"{source} has {name!r} of width {want} (this video: {got}; expected: "
          f"{wanted})")


class Collector:
  """Accumulates videos, enforcing one D, or records skipped ones."""

  def __init__(self, feature_dim: int | None, skip_bad_videos: bool):
    self.feature_dim = feature_dim
    self.skip = skip_bad_videos
    self.skipped: list[tuple[str, str]] = []
    self.stream_widths: dict[str, int] = {}  # of the first video (stream layouts)

  def features(self, load, *, video_id: str) -> np.ndarray | None:
    try:
      raw, path, files = load()
      check_stream_widths(files, self.stream_widths, video_id=video_id,
                          source="the first video")
      feats = check_features(raw, path=path, video_id=video_id,
                             feature_dim=self.feature_dim)
    except DataError as e:
      if not self.skip:
        raise
      self.skipped.append((video_id, str(e)))
      return None
    if self.feature_dim is None:
      self.feature_dim = int(feats.shape[1])
    if files and not self.stream_widths:
      self.stream_widths = stream_widths(files)
    return feats

  def finish(self, dataset: Dataset, source: str) -> Dataset:
    if self.skipped:
      lines = "\n  ".join(r for _, r in self.skipped[:20])
      more = f"\n  ... and {len(self.skipped) - 20} more" if len(self.skipped) > 20 else ""
      warnings.warn(f"{source}: skipped {len(self.skipped)} bad video(s):\n  {lines}{more}",
                    stacklevel=3)
    if not dataset.videos:
      raise DataError(f"{source}: no usable video")
    dataset.skipped_videos = list(self.skipped)
    dataset.stream_widths = dict(self.stream_widths)
    return dataset


# ------------------------------------------------------------------ splits


def read_split_file(path: str) -> list[str]:
  """Video ids of a split file: one per line; blank lines and ``#`` comments
  are ignored.

  Raises:
    DataError: missing, unreadable or empty file, or an id listed twice.
  """
  lines = io.read_lines(path, "split file")
  ids, seen = [], {}
  for n, line in enumerate(lines, 1):
    vid = line.split("#", 1)[0].strip()
    if not vid:
      continue
    if vid in seen:
      raise DataError(f"{path}: line {n}: video {vid!r} already listed on line {seen[vid]}")
    seen[vid] = n
    ids.append(vid)
  if not ids:
    raise DataError(f"{path}: the split file is empty (no video ids)")
  return ids


def split_assignment(split_files: Mapping[str, str] | None,
                      known: Iterable[str]) -> dict[str, str]:
  """video_id -> subset from the split files (validated against ``known``)."""
  if not split_files:
    return {}
  known = set(known)
  out: dict[str, str] = {}
  where: dict[str, str] = {}
  for subset, path in split_files.items():
    for vid in read_split_file(path):
      if vid not in known:
        raise DataError(f"{path}: video {vid!r} (split {subset!r}) is not in the annotations")
      if vid in out:
        raise DataError(f"{path}: video {vid!r} is also listed in {where[vid]}")
      out[vid] = subset
      where[vid] = path
  return out


def apply_splits(videos: list[Video], assignment: Mapping[str, str],
                  split_files: Mapping[str, str]) -> None:
  """A split file defines its subset exactly: listed videos join it; videos
  the annotations put in that subset but the file does not list are moved to
  ``"<subset>-unlisted"``."""
  overridden = set(split_files)
  for v in videos:
    if v.video_id in assignment:
      v.subset = assignment[v.video_id]
    elif v.subset in overridden:
      v.subset = f"{v.subset}-unlisted"


# ---------------------------------------------------- ambiguous intervals


def read_ambiguous(path: str) -> dict[str, list[tuple[float, float]]]:
  """Ambiguous intervals ``{video_id: [(start, end), ...]}`` in seconds.

  Two formats: W-TALC's ``Ambiguous_test.txt`` (one ``video start end`` line
  per interval, whitespace-separated; blank lines skipped) or, for a ``.json``
  file, ``{video_id: [[start, end], ...]}``.

  Raises:
    DataError: naming the file and the line (or video): missing or unreadable
      file, a line without three fields, a bound that is not a number, end < start.
  """
  if path.lower().endswith(".json"):
    data = io.load_json(path, "ambiguous-intervals")
    if not isinstance(data, dict):
      raise DataError(f"{path}: expected an object {{video_id: [[start, end], ...]}}")
    out: dict[str, list[tuple[float, float]]] = {}
    for vid, segs in data.items():
      if not isinstance(segs, list):
        raise DataError(f"{path}: video {vid!r}: expected a list of [start, end]")
      for j, seg in enumerate(segs):
        if not isinstance(seg, (list, tuple)) or len(seg) != 2:
          raise DataError(f"{path}: video {vid!r}: [{j}]: expected [start, end], got {seg!r}")
        out.setdefault(str(vid), []).append(bounds(seg, where=f"{path}: video {vid!r}: [{j}]"))
    return out
  lines = io.read_lines(path, "ambiguous-intervals file")
  out = {}
  for n, line in enumerate(lines, 1):
    fields = line.split()
    if not fields:
      continue
    if len(fields) != 3:
      raise DataError(f"{path}: line {n}: expected 'video start end', got {line.strip()!r}")
    out.setdefault(fields[0], []).append(bounds(fields[1:], where=f"{path}: line {n}"))
  return out


def attach_ambiguous(dataset: Dataset, path: str) -> Dataset:
  """Reads ``path`` (:func:`read_ambiguous`) into ``dataset.ambiguous`` and
  notes it in the summary; intervals of videos not in the dataset are kept
  but never used. Returns ``dataset``."""
  amb = read_ambiguous(path)
  ids = {v.video_id for v in dataset.videos}
  n_vid = sum(1 for v in amb if v in ids)
  n_int = sum(len(s) for v, s in amb.items() if v in ids)
  dataset.ambiguous = amb
  dataset.notes.append(f"ambiguous intervals (not evaluated): {n_int} in {n_vid} videos, "
                       f"from {path}")
  return dataset
