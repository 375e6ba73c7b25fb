"""Readers of real feature/annotation formats into a :class:`Dataset`.

Formats (``docs/data-formats.md`` shows a config for each):

1. ActivityNet-style JSON + a features folder (the BaSNet / LACP layout):
   :func:`read_activitynet`.
2. The W-TALC bundle (one object array of per-video features plus
   ``videoname.npy``, ``subset.npy``, ...): :func:`jaxseg.data.wtalc.read_wtalc`.
3. LACP-style point labels (CSV + per-video fps JSON), turned into one-segment
   labels: :func:`jaxseg.data.points.read_point_labels`.

:func:`load_dataset` dispatches on ``config.data.format``. The helpers the
readers share live in :mod:`jaxseg.data.reader_common`.

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

import os
from typing import Any, Mapping, Sequence

from jaxseg.data import io
from jaxseg.data import labels as labels_lib
from jaxseg.data import layouts
from jaxseg.data import synthetic
from jaxseg.data.points import read_point_segment_labels
from jaxseg.data.reader_common import (Collector, apply_splits, attach_ambiguous, bounds,
                                       check_id, class_index, load_feature_files, number,
                                       split_assignment)
from jaxseg.data.video import DataError, Dataset, I3D_FEATURE_RATE, Instance, Video
from jaxseg.data.wtalc import read_wtalc


# ------------------------------------------------------- format 1: ActivityNet


def _parse_activitynet(path: str, data: Any) -> dict[str, dict[str, Any]]:
  """Validates the JSON structure; returns ``{vid: {"subset", "duration",
  "annotations": [(start, end, label_str)]}}``."""
  if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
    raise DataError(f'{path}: expected an object with a "database" object of videos')
  out: dict[str, dict[str, Any]] = {}
  for vid, entry in data["database"].items():
    where = f"{path}: video {vid!r}"
    check_id(vid, where=path)
    if not isinstance(entry, dict):
      raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
    subset = entry.get("subset")
    if not isinstance(subset, str) or not subset:
      raise DataError(f'{where}: field "subset" missing or not a string')
    check_id(subset, where=where, what="subset")  # a folder of the subset layouts
    duration = entry.get("duration")
    if duration is not None:
      duration = number(duration, where=f'{where}: field "duration"')
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
      start, end = bounds(seg, where=f"{aw}.segment")
      label = ann.get("label")
      if not isinstance(label, str) or not label.strip():
        raise DataError(f'{aw}: field "label" missing or not a string')
      parsed.append((start, end, label.strip()))  # "Diving " is "Diving", as in W-TALC
    out[str(vid)] = {"subset": subset, "duration": duration, "annotations": parsed,
                     "video_labels": _video_labels(entry.get("video_labels", []), where)}
  if not out:
    raise DataError(f'{path}: "database" holds no video')
  return out


def _video_labels(labels: Any, where: str) -> list[str]:
  """The optional ``"video_labels"`` of a video: class names it shows with or
  without annotated instances (W-TALC's ``labels_all.npy``)."""
  if not isinstance(labels, list) or not all(isinstance(x, str) and x.strip() for x in labels):
    raise DataError(f'{where}: field "video_labels" must be a list of class names, '
                    f"got {labels!r}")
  return [x.strip() for x in labels]


def read_activitynet(annotation_path: str, features_dir: str, *,
                     feature_streams: Sequence[str] = (),
                     feature_rate: float = I3D_FEATURE_RATE,
                     feature_dim: int | None = None,
                     class_names: Sequence[str] | None = None,
                     split_files: Mapping[str, str] | None = None,
                     skip_bad_videos: bool = False) -> Dataset:
  """Reads format 1: ActivityNet-style JSON plus a features folder.

  JSON: ``{"database": {vid: {"subset": str, "duration": s (optional),
  "annotations": [{"segment": [start_s, end_s], "label": str}, ...],
  "video_labels": [str, ...] (optional)}}}``; bounds may be numbers or numeric
  strings. ``video_labels`` are classes the video shows with or without
  annotated instances (the video-level labels ``y`` add them; W-TALC's
  ``labels_all.npy``, as :mod:`jaxseg.data.wtalc_convert` writes it). Features: ``features_dir/<vid>.npy``
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
    class_names = sorted({lab for e in entries.values() for _, _, lab in e["annotations"]}
                         | {lab for e in entries.values() for lab in e["video_labels"]})
    if not class_names:
      raise DataError(f"{annotation_path}: no annotated instance, so no class list; "
                      "give class_names")
  index = class_index(class_names)
  for vid, e in entries.items():
    for i, (_, _, lab) in enumerate(e["annotations"]):
      if lab not in index:
        raise DataError(
            f"{annotation_path}: video {vid!r}: annotations[{i}].label: unknown "
            f"class {lab!r}; known: {list(class_names)}")
    for i, lab in enumerate(e["video_labels"]):
      if lab not in index:
        raise DataError(
            f"{annotation_path}: video {vid!r}: video_labels[{i}]: unknown "
            f"class {lab!r}; known: {list(class_names)}")
  assignment = split_assignment(split_files, entries)
  if not os.path.isdir(features_dir):
    raise DataError(f"{features_dir}: features folder not found (annotations "
                    f"{annotation_path})")
  streams = tuple(feature_streams)
  layout = layouts.detect_layout(features_dir, [(vid, e["subset"]) for vid, e in entries.items()],
                                 streams, allow_missing=skip_bad_videos)
  col = Collector(feature_dim, skip_bad_videos)
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
        instances=[Instance(s, t, index[lab]) for s, t, lab in e["annotations"]],
        extra_labels=tuple(sorted({index[lab] for lab in e["video_labels"]}))))
  if assignment:
    apply_splits(videos, assignment, split_files)
  return col.finish(Dataset(list(class_names), videos, notes=[layout.describe()]),
                    annotation_path)


# ------------------------------------------------------------- dispatching


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


def synthetic_world(s) -> dict:
  """The generator knobs of ``config.data.synthetic`` that differ from the default world.

  Only those are passed, so a default config regenerates the same dataset.
  """
  defaults = synthetic.SyntheticParams()
  out = {}
  for name in synthetic.CONFIG_WORLD_KNOBS:
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
