"""The data of a run: splits, segment labels, class list and the record binding
the run to its data.

In the run directory: ``splits.json`` (the validation hold-out),
``segment_labels.npz`` (the labels the run trained on), ``classes.json`` (the
class list and D, for ``--mode predict``) and ``data.json`` (the dataset
fingerprint and the hashes of the labels; a rerun must match it).
:func:`prepare_data` creates what is missing; :func:`read_data` writes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from jaxseg import config as config_lib
from jaxseg import parallel
from jaxseg import subsets as subsets_lib
from jaxseg.data import io
from jaxseg.data import labels as labels_lib
from jaxseg.data import readers
from jaxseg.data.video import DataError, Dataset

ConfigError = config_lib.ConfigError

DATA_RECORD = "data.json"
CLASSES_FILE = "classes.json"


@dataclasses.dataclass
class RunData:
  """The data of one run: splits and the segment labels of the training videos."""
  dataset: Dataset
  train: Dataset
  validation: Dataset | None
  test: Dataset
  segment_labels: labels_lib.SegmentLabels
  train_subset: str = ""  # the subset names used (``"auto"`` resolved)
  test_subset: str = ""
  subset_note: str = ""  # how "auto" was resolved ("" : explicit names)


def _validation_ids(train: Dataset, fraction: float, seed: int) -> list[str]:
  """A seeded draw of ``fraction`` of the training videos (sorted ids)."""
  if fraction <= 0:
    return []
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(train.videos))
  n_val = max(1, int(round(fraction * len(train.videos))))
  return sorted(train.videos[i].video_id for i in order[:n_val])


def _split(train: Dataset, ids: list[str]) -> tuple[Dataset, Dataset | None]:
  held = set(ids)
  rest = [v for v in train.videos if v.video_id not in held]
  if not rest:
    raise ConfigError("train.validation_fraction leaves no training video")
  val = Dataset(train.class_names, [v for v in train.videos if v.video_id in held],
                list(train.skipped_videos), stream_widths=dict(train.stream_widths))
  return (Dataset(train.class_names, rest, list(train.skipped_videos),
                  stream_widths=dict(train.stream_widths)),
          val if val.videos else None)


def _run_data(config, workdir: str, *, write: bool) -> RunData:
  """Loads the dataset, splits it and samples (``write``) or reads the labels.

  Everything is checked before the first file is written: the data against
  the run's ``data.json``, the training split, the labels; then ``splits.json``,
  ``segment_labels.npz`` and ``data.json`` are written if missing.
  """
  dataset = readers.load_dataset(config.data, workdir=workdir, generate=write)
  record = data_record(config, dataset)
  check_data_record(workdir, record)
  train_name, test_name, note = subsets_lib.resolve_subsets(
      config.data.train_subset, config.data.test_subset, [v.subset for v in dataset.videos])
  train = dataset.subset(train_name, source="data.train_subset")
  test = dataset.subset(test_name, source="data.test_subset")
  check_training_annotations(config, train)
  splits_path = os.path.join(workdir, "splits.json")
  labels_path = os.path.join(workdir, "segment_labels.npz")
  new_splits = None
  if os.path.exists(splits_path):
    ids = _read_splits(splits_path, train)
  elif write:
    fraction, seed = config.train.validation_fraction, config.seed
    ids = _validation_ids(train, fraction, seed)
    new_splits = json.dumps({"validation": ids, "seed": seed, "fraction": fraction},
                            indent=1) + "\n"
  else:
    raise ConfigError(f"{splits_path}: missing; {workdir} holds no finished run")
  train, val = _split(train, ids)
  if os.path.exists(labels_path) or not write:
    seg = labels_lib.load_segment_labels(labels_path)
  else:
    seg = readers.segment_labels(config.labels, dataset, train)  # a bad CSV: nothing written
    if new_splits is not None:
      io.atomic_write_text(splits_path, new_splits)
      new_splits = None
    labels_lib.save_segment_labels(labels_path, seg)
  if new_splits is not None:
    io.atomic_write_text(splits_path, new_splits)
  if write and parallel.is_main_process():
    save_run_classes(workdir, dataset)
  if write and parallel.is_main_process() and not os.path.exists(
      os.path.join(workdir, DATA_RECORD)):
    record["segment_labels_sha256"] = file_sha256(labels_path)
    io.atomic_write_text(os.path.join(workdir, DATA_RECORD),
                         json.dumps(record, indent=1, sort_keys=True) + "\n")
  check_data_record(workdir, {"segment_labels_sha256": file_sha256(labels_path)})
  missing = [v.video_id for v in train.videos if v.video_id not in seg.labels]
  if missing:
    raise DataError(f"{labels_path}: no segment labels for training video(s) "
                    f"{missing[:3]}; delete the file to sample labels again")
  return RunData(dataset, train, val, test, seg, train_name, test_name, note)


def save_run_classes(workdir: str, dataset: Dataset) -> None:
  """Writes ``workdir/classes.json``: the class list (label index order), the
  feature dimension D the run's model takes and, for a stream layout, each
  stream's width, so that ``--mode predict`` needs the run directory only,
  not the training data."""
  record = {"class_names": list(dataset.class_names), "feature_dim": dataset.feature_dim}
  if dataset.stream_widths:
    record["stream_widths"] = dict(dataset.stream_widths)
  io.atomic_write_text(os.path.join(workdir, CLASSES_FILE),
                       json.dumps(record, indent=1) + "\n")


def load_run_classes(workdir: str) -> tuple[list[str], int, dict[str, int]] | None:
  """``(class_names, feature_dim, stream_widths)`` from ``workdir/classes.json``
  (``stream_widths`` ``{}`` for joint features or a file without them); None
  without the file.

  Raises:
    DataError: the file is malformed.
  """
  path = os.path.join(workdir, CLASSES_FILE)
  if not os.path.exists(path):
    return None
  data = io.load_json(path, "class list")
  names = data.get("class_names") if isinstance(data, dict) else None
  dim = data.get("feature_dim") if isinstance(data, dict) else None
  widths = data.get("stream_widths", {}) if isinstance(data, dict) else None

  def positive(x):
    return isinstance(x, int) and not isinstance(x, bool) and x > 0

  if (not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names)
      or not positive(dim) or not isinstance(widths, dict)
      or not all(isinstance(k, str) and positive(w) for k, w in widths.items())
      or (widths and sum(widths.values()) != dim)):
    raise DataError(f'{path}: expected {{"class_names": [str, ...], "feature_dim": int > 0, '
                    f'"stream_widths": {{stream: int > 0, ...}} summing to feature_dim '
                    f'(optional)}}')
  return names, dim, dict(widths)


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def data_record(config, dataset: Dataset) -> dict:
  """What binds a run to its data: the dataset fingerprint (annotations, classes,
  feature shapes; :func:`jaxseg.provenance.dataset_fingerprint`), the class
  list, the video count, and the SHA-256 of the label files a ``points`` run reads."""
  from jaxseg import provenance  # pylint: disable=g-import-not-at-top
  record = {"dataset_fingerprint": provenance.dataset_fingerprint(dataset),
            "class_names": list(dataset.class_names), "num_videos": len(dataset.videos)}
  if config.labels.mode == "points":
    for field in ("points_csv", "fps_json"):
      path = config.labels[field]
      if os.path.isfile(path):
        record[f"labels.{field}_sha256"] = file_sha256(path)
  return record


def _read_splits(path: str, train: Dataset) -> list[str]:
  """The validation ids of a run's ``splits.json``, each a training video.

  Raises:
    DataError: naming the file: not ``{"validation": [id, ...]}``, or an id
      that is no training video (the data changed, or the file was edited).
  """
  data = io.load_json(path, "splits")
  ids = data.get("validation") if isinstance(data, dict) else None
  if not isinstance(ids, list) or not all(isinstance(v, str) for v in ids):
    raise DataError(f'{path}: expected {{"validation": [video id, ...], ...}}, got '
                    f"{data!r:.80}; delete it with the run (--overwrite) to split again")
  known = {v.video_id for v in train.videos}
  unknown = [v for v in ids if v not in known]
  if unknown:
    raise DataError(f"{path}: validation video(s) {unknown[:3]} are not training videos; "
                    "the data changed since this run started: pass --overwrite to start "
                    "over, or use another --workdir")
  return ids


def check_data_record(workdir: str, record: dict) -> None:
  """Refuses data that differs from what the run in ``workdir`` was made with.

  Compares ``record`` with ``workdir/data.json`` (absent: a new run, or one
  made before jaxseg wrote it: nothing to compare).

  Raises:
    DataError: naming what changed and suggesting ``--overwrite``.
  """
  path = os.path.join(workdir, DATA_RECORD)
  if not os.path.exists(path):
    return
  old = io.load_json(path, "data record")
  if not isinstance(old, dict):
    raise DataError(f"{path}: expected a JSON object (the run's data record), got "
                    f"{type(old).__name__}; pass --overwrite to start over")
  changed = []
  for key, new in record.items():
    if key not in old or old[key] == new:
      continue
    if key == "class_names":
      changed.append(f"classes {old[key]} -> {new}")
    elif key == "num_videos":
      changed.append(f"{old[key]} -> {new} videos")
    elif key == "dataset_fingerprint":
      changed.append(f"dataset fingerprint {old[key][:12]} -> {new[:12]} (videos, "
                     "instances, classes or feature shapes)")
    elif key == "segment_labels_sha256":
      changed.append("segment_labels.npz was modified")
    else:
      changed.append(f"{key[:-len('_sha256')]} file contents")
  if changed:
    raise DataError(
        f"{workdir}: the data changed since this run started ({'; '.join(changed)}); "
        "its checkpoints and labels belong to the old data: pass --overwrite to "
        "start over, or use another --workdir")


def check_training_annotations(config, train: Dataset) -> None:
  """Refuses a training split with no annotated instance (nothing to learn from).

  Raises:
    DataError: naming the subset and the annotation source.
  """
  if config.labels.mode == "points" or any(v.instances for v in train.videos):
    return
  d = config.data
  source = {"activitynet": d.annotation_path, "wtalc": d.wtalc_dir}.get(
      d.format, d.synthetic.output_dir or "the synthetic dataset")
  raise DataError(f"{source}: no video of data.train_subset {d.train_subset!r} "
                  f"({len(train.videos)} videos) has an annotated instance")


def prepare_data(config, workdir: str) -> RunData:
  """The data of a run, creating what is missing: the synthetic dataset, the
  validation split (``splits.json``) and the segment labels (``segment_labels.npz``).
  A rerun reads them back, so it trains on the same ones."""
  return _run_data(config, workdir, write=True)


def read_data(config, workdir: str) -> RunData:
  """The data of an existing run, as :func:`prepare_data` left it; writes nothing.

  Raises:
    ConfigError, DataError: a file of the run is missing or unreadable.
  """
  return _run_data(config, workdir, write=False)


def data_summary(data: RunData) -> str:
  """The dataset, the splits and the segment labels a run uses, as text."""
  seg = data.segment_labels
  n_lab = sum(int(u.any(axis=1).sum()) for u in seg.labels.values())
  return "\n".join([
      data.dataset.summary(),
      *([data.subset_note] if data.subset_note else []),
      f"train {len(data.train.videos)} | validation "
      f"{len(data.validation.videos) if data.validation else 0} | test "
      f"{len(data.test.videos)}",
      f"segment labels: mode {seg.mode}, seed {seg.seed}, {n_lab} labeled segments, "
      f"{seg.num_clipped} instances clipped at the end of their features, "
      f"{seg.num_dropped} wholly past it"])
