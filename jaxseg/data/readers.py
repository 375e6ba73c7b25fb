"""Readers of real feature/annotation formats into a :class:`Dataset`.

Formats (``docs/data-formats.md`` shows a config for each):

1. ActivityNet-style JSON + a features folder (the BaSNet / LACP layout):
   :func:`read_activitynet`.
2. The W-TALC bundle (one object array of per-video features plus
   ``videoname.npy``, ``subset.npy``, ...): :func:`read_wtalc`.
3. LACP-style point labels (CSV + per-video fps JSON), turned into one-segment
   labels: :func:`read_point_labels`.

:func:`load_dataset` dispatches on ``config.data.format``.

Every video is checked: features exist, are 2-D, non-empty and finite, with
the same ``D`` for all videos (and equal to the configured one); labels are
known; instance bounds are numeric with ``0 <= start <= end``. Bad input
raises :class:`DataError` naming the file, the video and the field; nothing is
returned half-read. With ``skip_bad_videos=True`` a video whose *features* are
bad is skipped instead (a warning lists them) and the returned dataset's
``skipped_videos`` field holds ``[(video_id, reason), ...]``; annotation
errors (unknown label, bad bounds, malformed files) always raise.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from jaxseg.data import io
from jaxseg.data import labels as labels_lib
from jaxseg.data import layouts
from jaxseg.data import npy
from jaxseg.data import synthetic
from jaxseg.data.video import DataError, Dataset, I3D_FEATURE_RATE, Instance, Video

POINT_COLUMNS = ("class", "class_index", "start_frame", "stop_frame", "video_id", "point")


# ------------------------------------------------------------------ helpers


def _bounds(pair, *, where: str) -> tuple[float, float]:
  """``(start, end)`` seconds from a two-element ``[start, end]`` (numbers or numeric strings).

  Raises:
    DataError: naming ``where`` if a bound is not a number, negative, or end < start.
  """
  start = _number(pair[0], where=f"{where}[0]")
  end = _number(pair[1], where=f"{where}[1]")
  if start < 0:
    raise DataError(f"{where}: start {start} < 0")
  if end < start:
    raise DataError(f"{where}: end {end} < start {start}")
  return start, end


def _number(value: Any, *, where: str) -> float:
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


def _text(value: Any) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.bytes_):
    return bytes(value).decode("utf-8")
  return str(value)


def check_features(features: Any, *, path: str, video_id: str,
                   feature_dim: int | None) -> np.ndarray:
  """Validates one video's features; returns them as ``(T, D) float32``.

  Raises:
    DataError: not a numeric array, not 2-D, empty, non-finite, or ``D`` not
      ``feature_dim``; the message names ``path`` and ``video_id``.
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
  out = np.asarray(features, np.float32)
  finite = np.isfinite(out)
  if not finite.all():
    bad = np.argwhere(~finite)[0]
    raise DataError(
        f"{where}: {int((~finite).sum())} non-finite value(s) (NaN or inf), "
        f"first at segment {bad[0]}, dim {bad[1]}")
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


def _load_video_features(features_dir: str, video_id: str,
                         streams: Sequence[str]) -> tuple[np.ndarray, str]:
  """Raw ``(T, D)`` features (streams concatenated on D) and the file named."""
  return load_feature_files(layouts.Layout(features_dir, "stream" if streams else "flat",
                                           tuple(streams)).paths(video_id), video_id)


def load_feature_files(paths: Sequence[str], video_id: str) -> tuple[np.ndarray, str]:
  """Raw ``(T, D)`` features of one video from its file(s), one per stream
  (concatenated on D, same T), and the first file (for messages)."""
  if len(paths) == 1:
    return _load_npy(paths[0], video_id=video_id), paths[0]
  parts = []
  for path in paths:
    arr = check_features(_load_npy(path, video_id=video_id), path=path,
                         video_id=video_id, feature_dim=None)
    parts.append(arr)
  lengths = [p.shape[0] for p in parts]
  if len(set(lengths)) > 1:
    detail = ", ".join(f"{p}: T={t}" for p, t in zip(paths, lengths))
    names = [os.path.basename(os.path.dirname(p)) for p in paths]
    raise DataError(
        f"{paths[0]}: video {video_id!r}: streams {names} differ in "
        f"length ({detail})")
  return np.concatenate(parts, axis=1), paths[0]


class _Collector:
  """Accumulates videos, enforcing one D, or records skipped ones."""

  def __init__(self, feature_dim: int | None, skip_bad_videos: bool):
    self.feature_dim = feature_dim
    self.skip = skip_bad_videos
    self.skipped: list[tuple[str, str]] = []

  def features(self, load, *, video_id: str) -> np.ndarray | None:
    try:
      raw, path = load()
      feats = check_features(raw, path=path, video_id=video_id,
                             feature_dim=self.feature_dim)
    except DataError as e:
      if not self.skip:
        raise
      self.skipped.append((video_id, str(e)))
      return None
    if self.feature_dim is None:
      self.feature_dim = int(feats.shape[1])
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
    return dataset


def read_split_file(path: str) -> list[str]:
  """Video ids of a split file: one per line; blank lines and ``#`` comments
  are ignored.

  Raises:
    DataError: missing, unreadable or empty file, or an id listed twice.
  """
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    raise DataError(f"{path}: split file not found") from None
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: cannot read split file: {e}") from None
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


def _split_assignment(split_files: Mapping[str, str] | None,
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


def _apply_splits(videos: list[Video], assignment: Mapping[str, str],
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


# ------------------------------------------------------- format 1: ActivityNet


def _parse_activitynet(path: str, data: Any) -> dict[str, dict[str, Any]]:
  """Validates the JSON structure; returns ``{vid: {"subset", "duration",
  "annotations": [(start, end, label_str)]}}``."""
  if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
    raise DataError(f'{path}: expected an object with a "database" object of videos')
  out: dict[str, dict[str, Any]] = {}
  for vid, entry in data["database"].items():
    where = f"{path}: video {vid!r}"
    _check_id(vid, where=path)
    if not isinstance(entry, dict):
      raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
    subset = entry.get("subset")
    if not isinstance(subset, str) or not subset:
      raise DataError(f'{where}: field "subset" missing or not a string')
    duration = entry.get("duration")
    if duration is not None:
      duration = _number(duration, where=f'{where}: field "duration"')
      if duration <= 0:
        raise DataError(f'{where}: field "duration" must be > 0, got {duration}')
    anns = entry.get("annotations", [])
    if not isinstance(anns, list):
      raise DataError(f'{where}: field "annotations" must be a list')
    parsed = []
    for i, ann in enumerate(anns):
      aw = f"{where}: annotations[{i}]"
      if not isinstance(ann, dict):
        raise DataError(f"{aw}: expected an object")
      seg = ann.get("segment")
      if not isinstance(seg, (list, tuple)) or len(seg) != 2:
        raise DataError(f'{aw}: field "segment" must be [start, end], got {seg!r}')
      start, end = _bounds(seg, where=f"{aw}.segment")
      label = ann.get("label")
      if not isinstance(label, str) or not label.strip():
        raise DataError(f'{aw}: field "label" missing or not a string')
      parsed.append((start, end, label.strip()))  # "Diving " is "Diving", as in W-TALC
    out[str(vid)] = {"subset": subset, "duration": duration, "annotations": parsed}
  if not out:
    raise DataError(f'{path}: "database" holds no video')
  return out


def _check_id(vid: Any, *, where: str) -> None:
  """A video id is a plain file name (never a path): else DataError naming ``where``."""
  try:
    io.child_path("", vid)
  except DataError as e:
    raise DataError(f"{where}: {e}") from None


def _class_index(class_names: Sequence[str]) -> dict[str, int]:
  names = list(class_names)
  if len(set(names)) != len(names):
    raise ValueError(f"class_names has duplicates: {names}")
  return {n: i for i, n in enumerate(names)}


def read_activitynet(annotation_path: str, features_dir: str, *,
                     feature_streams: Sequence[str] = (),
                     feature_rate: float = I3D_FEATURE_RATE,
                     feature_dim: int | None = None,
                     class_names: Sequence[str] | None = None,
                     split_files: Mapping[str, str] | None = None,
                     skip_bad_videos: bool = False) -> Dataset:
  """Reads format 1: ActivityNet-style JSON plus a features folder.

  JSON: ``{"database": {vid: {"subset": str, "duration": s (optional),
  "annotations": [{"segment": [start_s, end_s], "label": str}, ...]}}}``;
  bounds may be numbers or numeric strings. Features: ``features_dir/<vid>.npy``
  ``(T, D)``, or with ``feature_streams=("rgb", "flow")``
  ``features_dir/rgb/<vid>.npy`` and ``features_dir/flow/<vid>.npy``
  concatenated on D (in that order; they must have the same T).

  Args:
    annotation_path: the JSON file.
    features_dir: the features folder.
    feature_streams: sub-folders concatenated on D; empty: none.
    feature_rate: segments per second.
    feature_dim: expected D (None: the first video's D).
    class_names: the class list (label index order); None: the sorted unique
      labels of the JSON.
    split_files: ``{subset: path}`` of text files of video ids (one per line).
      A split file defines its subset: listed videos get that subset whatever
      the JSON says; videos the JSON puts in it but the file does not list are
      moved to ``"<subset>-unlisted"``.
    skip_bad_videos: skip (warn, and list in ``dataset.skipped_videos``)
      videos with missing or bad features instead of raising.

  Returns:
    The :class:`Dataset`, videos in JSON order; ``duration`` from the JSON or
    ``T / feature_rate``.

  Raises:
    DataError: see the module docstring.
  """
  if feature_rate <= 0:
    raise ValueError(f"feature_rate must be > 0, got {feature_rate}")
  entries = _parse_activitynet(annotation_path, io.load_json(annotation_path, "annotation"))
  if class_names is None:
    class_names = sorted({lab for e in entries.values() for _, _, lab in e["annotations"]})
    if not class_names:
      raise DataError(f"{annotation_path}: no annotated instance, so no class list; "
                      "give class_names")
  index = _class_index(class_names)
  for vid, e in entries.items():
    for i, (_, _, lab) in enumerate(e["annotations"]):
      if lab not in index:
        raise DataError(
            f"{annotation_path}: video {vid!r}: annotations[{i}].label: unknown "
            f"class {lab!r}; known: {list(class_names)}")
  assignment = _split_assignment(split_files, entries)
  if not os.path.isdir(features_dir):
    raise DataError(f"{features_dir}: features folder not found (annotations "
                    f"{annotation_path})")
  streams = tuple(feature_streams)
  layout = layouts.detect_layout(features_dir, [(vid, e["subset"]) for vid, e in entries.items()],
                                 streams, allow_missing=skip_bad_videos)
  col = _Collector(feature_dim, skip_bad_videos)
  videos = []
  for vid, e in entries.items():
    feats = col.features(
        lambda vid=vid, sub=e["subset"]: load_feature_files(layout.paths(vid, sub), vid),
        video_id=vid)
    if feats is None:
      continue
    duration = e["duration"] if e["duration"] is not None else feats.shape[0] / feature_rate
    videos.append(Video(
        video_id=vid, subset=e["subset"], features=feats,
        feature_rate=float(feature_rate), duration=float(duration),
        instances=[Instance(s, t, index[lab]) for s, t, lab in e["annotations"]]))
  if assignment:
    _apply_splits(videos, assignment, split_files)
  return col.finish(Dataset(list(class_names), videos, notes=[layout.describe()]),
                    annotation_path)


# -------------------------------------------------------- format 2: W-TALC


# The W-TALC arrays that are pickled object arrays (one ragged entry per video);
# they are read with a restricted unpickler that runs no code (data/npy.py).
# The others are plain string / number arrays, read without pickle.
WTALC_OBJECT_ARRAYS = ("segments", "labels", "features")
WTALC_ARRAYS = ("videoname", "subset", "classlist", "duration", "segments", "labels")


def _load_bundle_array(path: str, *, allow_pickle: bool) -> np.ndarray:
  if not os.path.isfile(path):
    raise DataError(f"{path}: W-TALC bundle file not found")
  arr = npy.load_array(path, allow_objects=allow_pickle, what="W-TALC array")
  if arr.ndim == 0:
    raise DataError(f"{path}: W-TALC array is 0-d (a single value); expected one "
                    "entry per video (or per class)")
  if arr.dtype.hasobject:
    npy.check_plain(arr, path=path, what="W-TALC array")
  return arr


def _bundle_texts(arr: np.ndarray, path: str, what: str) -> list[str]:
  """The stripped UTF-8 strings of a W-TALC name array, else DataError naming the entry."""
  out = []
  for i, v in enumerate(np.ravel(arr)):
    if not isinstance(v, (str, bytes, np.str_, np.bytes_)):
      raise DataError(f"{path}: {what}[{i}]: expected a string, got {v!r}")
    try:
      out.append(_text(v).strip())
    except UnicodeDecodeError as e:
      raise DataError(f"{path}: {what}[{i}]: {bytes(v)!r} is not UTF-8 ({e.reason})") from None
  return out


def _wtalc_features_path(directory: str, features_file: str) -> str:
  """The features file: absolute as given; a relative name inside ``directory``
  or, as W-TALC's repository ships it (``Thumos14reduced-I3D-JOINTFeatures.npy``
  beside ``Thumos14reduced-Annotations/``), in its parent folder.

  Raises:
    DataError: in neither place (both paths named).
  """
  if os.path.isabs(features_file):
    return features_file
  inside = os.path.join(directory, features_file)
  beside = os.path.join(os.path.dirname(os.path.abspath(directory)), features_file)
  for path in (inside, beside):
    if os.path.isfile(path):
      return path
  raise DataError(f"{inside}: W-TALC bundle file not found (nor {beside})")


def read_wtalc(directory: str, features_file: str, *,
               feature_rate: float = I3D_FEATURE_RATE,
               feature_dim: int | None = None,
               split_files: Mapping[str, str] | None = None,
               skip_bad_videos: bool = False) -> Dataset:
  """Reads format 2: the W-TALC bundle.

  ``directory`` holds ``features_file`` (an object array of per-video
  ``(T, D)`` features, e.g. ``Thumos14reduced-I3D-JOINTFeatures.npy``; a
  relative name is taken inside ``directory``, else beside it as W-TALC ships
  it) and the annotation arrays
  ``videoname.npy``, ``subset.npy``, ``classlist.npy``, ``duration.npy``,
  ``segments.npy`` (per video ``[[s, e], ...]``) and ``labels.npy`` (per video
  one class name per segment), strings as ``bytes`` as numpy saves them. The
  class order is ``classlist.npy``'s. Optional, read when present:
  ``labels_all.npy`` (per video every class it shows, also without annotated
  instances: the video-level labels ``y``; the 101-class ``Thumos14-Annotations``)
  and ``Ambiguous_test.txt`` (``dataset.ambiguous``, see :func:`read_ambiguous`).

  Args:
    directory: the bundle folder.
    features_file: the features array's file name (or path).
    feature_rate: segments per second.
    feature_dim: expected D (None: the first video's D).
    split_files: as in :func:`read_activitynet`.
    skip_bad_videos: as in :func:`read_activitynet`.

  Raises:
    DataError: see the module docstring.
  """
  if feature_rate <= 0:
    raise ValueError(f"feature_rate must be > 0, got {feature_rate}")
  feat_path = _wtalc_features_path(directory, features_file)
  arrays = {}
  for name in WTALC_ARRAYS:
    arrays[name] = _load_bundle_array(os.path.join(directory, name + ".npy"),
                                      allow_pickle=name in WTALC_OBJECT_ARRAYS)
  features = _load_bundle_array(feat_path, allow_pickle=True)
  vn_path = os.path.join(directory, "videoname.npy")
  names = _bundle_texts(arrays["videoname"], vn_path, "videoname")
  for vid in names:
    _check_id(vid, where=vn_path)
  num = len(names)
  if num == 0:
    raise DataError(f"{os.path.join(directory, 'videoname.npy')}: no video")
  if len(set(names)) != num:
    dup = sorted({n for n in names if names.count(n) > 1})
    raise DataError(f"{os.path.join(directory, 'videoname.npy')}: duplicate video "
                    f"id(s) {dup[:3]}")
  for name, arr in list(arrays.items()) + [("features", features)]:
    if name == "classlist":
      continue
    if len(arr) != num:
      path = feat_path if name == "features" else os.path.join(directory, name + ".npy")
      raise DataError(f"{path}: holds {len(arr)} entries but videoname.npy holds {num}")
  cl_path = os.path.join(directory, "classlist.npy")
  class_names = _bundle_texts(arrays["classlist"], cl_path, "classlist")
  if len(set(class_names)) != len(class_names):
    dup = sorted({n for n in class_names if class_names.count(n) > 1})
    raise DataError(f"{cl_path}: class(es) {dup} listed twice")
  index = _class_index(class_names)
  extra = _wtalc_labels_all(directory, names, index, class_names)
  seg_path = os.path.join(directory, "segments.npy")
  lab_path = os.path.join(directory, "labels.npy")
  dur_path = os.path.join(directory, "duration.npy")
  subsets = _bundle_texts(arrays["subset"], os.path.join(directory, "subset.npy"), "subset")
  parsed = []
  for i, vid in enumerate(names):
    segs = arrays["segments"][i]
    labs = arrays["labels"][i]
    segs = [] if segs is None else list(segs)
    labs = [] if labs is None else list(np.ravel(np.asarray(labs, dtype=object)))
    if len(segs) != len(labs):
      raise DataError(f"{seg_path}: video {vid!r}: {len(segs)} segments but "
                      f"{lab_path} holds {len(labs)} labels")
    instances = []
    for j, (seg, lab) in enumerate(zip(segs, labs)):
      where = f"{seg_path}: video {vid!r}: segments[{j}]"
      try:
        pair = list(seg)
      except TypeError:
        raise DataError(f"{where}: expected [start, end], got {seg!r}") from None
      if len(pair) != 2:
        raise DataError(f"{where}: expected [start, end], got {seg!r}")
      start, end = _bounds(pair, where=where)
      try:
        label = _text(lab).strip()
      except UnicodeDecodeError as e:
        raise DataError(f"{lab_path}: video {vid!r}: labels[{j}]: {lab!r} is not UTF-8 "
                        f"({e.reason})") from None
      if label not in index:
        raise DataError(f"{lab_path}: video {vid!r}: labels[{j}]: unknown class "
                        f"{label!r}; classlist.npy: {class_names}")
      instances.append(Instance(start, end, index[label]))
    duration = _number(arrays["duration"][i], where=f"{dur_path}: video {vid!r}")
    parsed.append((vid, subsets[i], duration, instances))
  assignment = _split_assignment(split_files, names)
  col = _Collector(feature_dim, skip_bad_videos)
  videos = []
  for i, (vid, subset, duration, instances) in enumerate(parsed):
    feats = col.features(lambda i=i: (features[i], feat_path), video_id=vid)
    if feats is None:
      continue
    if duration <= 0:
      duration = feats.shape[0] / feature_rate
    videos.append(Video(video_id=vid, subset=subset, features=feats,
                        feature_rate=float(feature_rate), duration=float(duration),
                        instances=instances, extra_labels=extra.get(vid, ())))
  if assignment:
    _apply_splits(videos, assignment, split_files)
  notes = [f"W-TALC bundle: {directory} ({len(class_names)} classes in classlist.npy; "
           + ("video-level labels from labels_all.npy)" if extra else "no labels_all.npy)")]
  ds = Dataset(class_names, videos, notes=notes)
  amb_path = os.path.join(directory, WTALC_AMBIGUOUS_FILE)
  if os.path.isfile(amb_path):
    attach_ambiguous(ds, amb_path)
  return col.finish(ds, feat_path)


WTALC_AMBIGUOUS_FILE = "Ambiguous_test.txt"


def _wtalc_labels_all(directory: str, names: Sequence[str], index: Mapping[str, int],
                      class_names: Sequence[str]) -> dict[str, tuple[int, ...]]:
  """``{video_id: class indices}`` from the bundle's ``labels_all.npy`` (per
  video, every class the video shows, with or without annotated instances);
  ``{}`` when the bundle has no such file."""
  path = os.path.join(directory, "labels_all.npy")
  if not os.path.isfile(path):
    return {}
  arr = _load_bundle_array(path, allow_pickle=True)
  if len(arr) != len(names):
    raise DataError(f"{path}: holds {len(arr)} entries but videoname.npy holds {len(names)}")
  out = {}
  for i, vid in enumerate(names):
    labs = arr[i]
    labs = [] if labs is None else list(np.ravel(np.asarray(labs, dtype=object)))
    idx = []
    for j, lab in enumerate(labs):
      label = _text(lab).strip()
      if label not in index:
        raise DataError(f"{path}: video {vid!r}: labels_all[{j}]: unknown class {label!r}; "
                        f"classlist.npy: {list(class_names)}")
      idx.append(index[label])
    out[vid] = tuple(sorted(set(idx)))
  return out


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
        out.setdefault(str(vid), []).append(_bounds(seg, where=f"{path}: video {vid!r}: [{j}]"))
    return out
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    raise DataError(f"{path}: ambiguous-intervals file not found") from None
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: cannot read ambiguous-intervals file: {e}") from None
  out = {}
  for n, line in enumerate(lines, 1):
    fields = line.split()
    if not fields:
      continue
    if len(fields) != 3:
      raise DataError(f"{path}: line {n}: expected 'video start end', got {line.strip()!r}")
    out.setdefault(fields[0], []).append(_bounds(fields[1:], where=f"{path}: line {n}"))
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


# ------------------------------------------------------ format 3: points CSV


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
          _number(row[c], where=f"{where}: video {vid!r}: field {c}")
        point = _number(row["point"], where=f"{where}: video {vid!r}: field point")
        if point < 0:
          raise DataError(f"{where}: video {vid!r}: field point: {point} < 0")
        if vid not in fps_data:
          raise DataError(f"{fps_json_path}: no fps for video {vid!r} "
                          f"(needed by {csv_path} line {line})")
        fps = _number(fps_data[vid], where=f"{fps_json_path}: video {vid!r}")
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


def segment_labels(labels_config: Any, dataset: Dataset,
                   train: Dataset) -> labels_lib.SegmentLabels:
  """The segment labels ``config.labels`` asks for (the one place the label mode branches).

  ``mode="points"`` reads ``labels.points_csv`` with ``labels.fps_json``
  (format 3) against the whole ``dataset`` (the CSV also names held-out
  videos); every other mode samples the videos of ``train`` with ``labels.seed``.
  """
  if labels_config.mode == "points":
    return read_point_segment_labels(labels_config.points_csv, labels_config.fps_json,
                                     dataset)
  return labels_lib.sample_segment_labels(train, labels_config.mode, labels_config.seed)


# ------------------------------------------------------------- dispatching


def synthetic_world(s) -> dict:
  """The generator knobs of ``config.data.synthetic`` that differ from the default world.

  Only those are passed, so a default config regenerates the same dataset.
  """
  defaults = synthetic.SyntheticParams()
  out = {}
  for name in ("noise", "noise_ar", "activation", "instance_length_median", "coverage_mean",
               "core_strength", "action_strength"):
    value = s.get(name, getattr(defaults, name))
    if value != getattr(defaults, name):
      out[name] = value
  return out


def load_dataset(data_config: Any, workdir: str | None = None, *,
                 generate: bool = True) -> Dataset:
  """Loads the dataset ``config.data`` names (format 1, 2 or the synthetic one).

  ``"synthetic"`` generates the dataset into ``data.synthetic.output_dir`` (or
  ``<workdir>/data``) unless it is already there, then reads it with
  :func:`read_activitynet`; its D is ``data.synthetic.feature_dim`` (not
  ``data.feature_dim``). Split files ``data.train_split_file`` /
  ``data.test_split_file`` define the subsets ``data.train_subset`` /
  ``data.test_subset``. With ``generate=False`` (reading a run back) the
  synthetic dataset must already be there: nothing is written.

  Raises:
    DataError: bad data (naming file and video); ValueError: a bad config.
  """
  d = data_config
  fmt = d.format
  split_files = {}
  if d.train_split_file:
    split_files[d.train_subset] = d.train_split_file
  if d.test_split_file:
    if d.test_subset in split_files:
      raise ValueError("data.train_subset and data.test_subset are the same "
                       f"({d.test_subset!r}) but both have a split file")
    split_files[d.test_subset] = d.test_split_file
  if fmt == "synthetic":
    s = d.synthetic
    out_dir = s.output_dir or (os.path.join(workdir, "data") if workdir else "")
    if not out_dir:
      raise ValueError("data.format='synthetic' needs data.synthetic.output_dir or a workdir")
    if generate:
      ann = synthetic.generate_synthetic(
          out_dir, seed=s.seed, num_classes=s.num_classes, num_train=s.num_train,
          num_test=s.num_test, feature_dim=s.feature_dim, max_length=s.max_length,
          feature_rate=d.feature_rate, **synthetic_world(s))
    else:
      ann = os.path.join(os.path.abspath(out_dir), synthetic.ANNOTATION_FILE)
    record = synthetic.read_generator_record(out_dir)
    if record is None:
      raise DataError(f"{out_dir}: no synthetic dataset ({synthetic.GENERATOR_FILE} "
                      "missing); train first")
    return read_activitynet(
        ann, os.path.join(out_dir, synthetic.FEATURES_DIR), feature_rate=d.feature_rate,
        feature_dim=int(s.feature_dim), class_names=record["class_names"],
        split_files=split_files or None, skip_bad_videos=False)
  feature_dim = int(d.feature_dim) if d.feature_dim and d.feature_dim > 0 else None
  if fmt == "activitynet":
    if not d.annotation_path or not d.features_dir:
      raise ValueError("data.format='activitynet' needs data.annotation_path and "
                       "data.features_dir")
    ds = read_activitynet(
        d.annotation_path, d.features_dir, feature_streams=tuple(d.feature_streams),
        feature_rate=d.feature_rate, feature_dim=feature_dim,
        split_files=split_files or None, skip_bad_videos=d.skip_bad_videos)
    return attach_ambiguous(ds, d.ambiguous_path) if d.ambiguous_path else ds
  if fmt == "wtalc":
    if not d.wtalc_dir or not d.wtalc_features_file:
      raise ValueError("data.format='wtalc' needs data.wtalc_dir and "
                       "data.wtalc_features_file")
    ds = read_wtalc(d.wtalc_dir, d.wtalc_features_file, feature_rate=d.feature_rate,
                    feature_dim=feature_dim, split_files=split_files or None,
                    skip_bad_videos=d.skip_bad_videos)
    if d.ambiguous_path:
      ds.notes[:] = [n for n in ds.notes if not n.startswith("ambiguous intervals")]
      attach_ambiguous(ds, d.ambiguous_path)
    return ds
  raise ValueError(f"data.format must be one of 'synthetic', 'activitynet', "
                   f"'wtalc'; got {fmt!r}")
