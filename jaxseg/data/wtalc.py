"""The W-TALC bundle reader (format 2 of :mod:`jaxseg.data.readers`): one
object array of per-video features plus ``videoname.npy``, ``subset.npy``, ...:
:func:`read_wtalc`. The checks and their errors are those of
:mod:`jaxseg.data.readers`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from jaxseg.data import npy
from jaxseg.data.reader_common import (Collector, apply_splits, attach_ambiguous, bounds,
                                       check_id, class_index, number, split_assignment)
from jaxseg.data.video import DataError, Dataset, I3D_FEATURE_RATE, Instance, Video

# The W-TALC arrays that are pickled object arrays (one ragged entry per video);
# they are read with a restricted unpickler that runs no code (data/npy.py).
# The others are plain string / number arrays, read without pickle.
WTALC_OBJECT_ARRAYS = ("segments", "labels", "features")
WTALC_ARRAYS = ("videoname", "subset", "classlist", "duration", "segments", "labels")


def _text(value: Any) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.bytes_):
    return bytes(value).decode("utf-8")
  return str(value)


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
      text = _text(v).strip()
      if any(ord(c) > 0x10FFFF for c in text):  # numpy's '<U' holds any 32-bit value
        raise ValueError("a code point past U+10FFFF")
      text.encode("utf-8")
    except UnicodeDecodeError as e:
      raise DataError(f"{path}: {what}[{i}]: {bytes(v)!r} is not UTF-8 ({e.reason})") from None
    except (UnicodeEncodeError, ValueError, SystemError) as e:  # past U+10FFFF; surrogates
      raise DataError(f"{path}: {what}[{i}]: not valid Unicode text ({e})") from None
    out.append(text)
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
  and ``Ambiguous_test.txt`` (``dataset.ambiguous``, see
  :func:`jaxseg.data.reader_common.read_ambiguous`).

  Args:
    directory: the bundle folder.
    features_file: the features array's file name (or path).
    feature_rate: segments per second.
    feature_dim: expected D (None: the first video's D).
    split_files: as in :func:`jaxseg.data.readers.read_activitynet`.
    skip_bad_videos: as in :func:`jaxseg.data.readers.read_activitynet`.

  Raises:
    DataError: see :mod:`jaxseg.data.readers`.
  """
  if feature_rate <= 0:
    raise ValueError(f"feature_rate must be > 0, got {feature_rate}")
  feat_path = _wtalc_features_path(directory, features_file)
  arrays = {}
  for name in WTALC_ARRAYS:
    arrays[name] = _load_bundle_array(os.path.join(directory, name + ".npy"),
                                      allow_pickle=name in WTALC_OBJECT_ARRAYS)
  features = _load_bundle_array(feat_path, allow_pickle=True)
  names = _video_names(directory, arrays, features, feat_path)
  class_names = _class_names(directory, arrays["classlist"])
  index = class_index(class_names)
  extra = _wtalc_labels_all(directory, names, index, class_names)
  subsets = _bundle_texts(arrays["subset"], os.path.join(directory, "subset.npy"), "subset")
  if len(subsets) != len(names):
    raise DataError(f"{os.path.join(directory, 'subset.npy')}: holds {len(subsets)} names "
                    f"but videoname.npy holds {len(names)}")
  for vid, subset in zip(names, subsets):
    check_id(subset, where=f"{os.path.join(directory, 'subset.npy')}: video {vid!r}",
             what="subset")
  dur_path = os.path.join(directory, "duration.npy")
  parsed = []
  for i, vid in enumerate(names):
    instances = _instances(directory, vid, arrays["segments"][i], arrays["labels"][i],
                           index, class_names)
    duration = number(arrays["duration"][i], where=f"{dur_path}: video {vid!r}")
    parsed.append((vid, subsets[i], duration, instances))
  assignment = split_assignment(split_files, names)
  col = Collector(feature_dim, skip_bad_videos)
  videos = []
  for i, (vid, subset, duration, instances) in enumerate(parsed):
    feats = col.features(lambda i=i: (features[i], feat_path, ()), video_id=vid)
    if feats is None:
      continue
    if duration <= 0:
      duration = feats.shape[0] / feature_rate
    videos.append(Video(video_id=vid, subset=subset, features=feats,
                        feature_rate=float(feature_rate), duration=float(duration),
                        instances=instances, extra_labels=extra.get(vid, ())))
  if assignment:
    apply_splits(videos, assignment, split_files)
  notes = [f"W-TALC bundle: {directory} ({len(class_names)} classes in classlist.npy; "
           + ("video-level labels from labels_all.npy)" if extra else "no labels_all.npy)")]
  ds = Dataset(class_names, videos, notes=notes)
  amb_path = os.path.join(directory, WTALC_AMBIGUOUS_FILE)
  if os.path.isfile(amb_path):
    attach_ambiguous(ds, amb_path)
  return col.finish(ds, feat_path)


def _video_names(directory: str, arrays: Mapping[str, np.ndarray], features: np.ndarray,
                 feat_path: str) -> list[str]:
  """The ids of ``videoname.npy``: plain names, distinct, one per entry of
  every other array of the bundle."""
  vn_path = os.path.join(directory, "videoname.npy")
  names = _bundle_texts(arrays["videoname"], vn_path, "videoname")
  for vid in names:
    check_id(vid, where=vn_path)
  num = len(names)
  if num == 0:
    raise DataError(f"{vn_path}: no video")
  if len(set(names)) != num:
    dup = sorted({n for n in names if names.count(n) > 1})
    raise DataError(f"{vn_path}: duplicate video id(s) {dup[:3]}")
  for name, arr in list(arrays.items()) + [("features", features)]:
    if name == "classlist":
      continue
    if len(arr) != num:
      path = feat_path if name == "features" else os.path.join(directory, name + ".npy")
      raise DataError(f"{path}: holds {len(arr)} entries but videoname.npy holds {num}")
  return names


def _class_names(directory: str, classlist: np.ndarray) -> list[str]:
  """The classes of ``classlist.npy``, in its order, each once."""
  cl_path = os.path.join(directory, "classlist.npy")
  class_names = _bundle_texts(classlist, cl_path, "classlist")
  if len(set(class_names)) != len(class_names):
    dup = sorted({n for n in class_names if class_names.count(n) > 1})
    raise DataError(f"{cl_path}: class(es) {dup} listed twice")
  return class_names


def _instances(directory: str, vid: str, segs: Any, labs: Any, index: Mapping[str, int],
               class_names: Sequence[str]) -> list[Instance]:
  """One video's instances from its ``segments.npy`` and ``labels.npy`` entries."""
  seg_path = os.path.join(directory, "segments.npy")
  lab_path = os.path.join(directory, "labels.npy")
  try:
    segs = [] if segs is None else list(segs)
  except TypeError:
    raise DataError(f"{seg_path}: video {vid!r}: expected a list of [start, end], got "
                    f"{segs!r:.60}") from None
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
    start, end = bounds(pair, where=where)
    try:
      label = _text(lab).strip()
    except UnicodeDecodeError as e:
      raise DataError(f"{lab_path}: video {vid!r}: labels[{j}]: {lab!r} is not UTF-8 "
                      f"({e.reason})") from None
    if label not in index:
      raise DataError(f"{lab_path}: video {vid!r}: labels[{j}]: unknown class "
                      f"{label!r}; classlist.npy: {list(class_names)}")
    instances.append(Instance(start, end, index[label]))
  return instances


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
