"""The run directory: what a run writes, and reading a run back without writing.

``workdir`` holds ``config.json`` (the resolved config; a rerun must match
it), ``metrics.jsonl``, ``splits.json`` (the validation hold-out),
``segment_labels.npz`` (the labels the run trained on), ``classes.json`` (the
class list and D, for ``--mode predict``), ``checkpoints/``
(Orbax: ``latest`` and ``best``) and the reports of :mod:`jaxseg.evaluate`.

:func:`claim_workdir` and :func:`prepare_data` create what is missing (a
training run); :func:`load_run` reads a finished run back and never creates
or modifies a file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxseg import config as config_lib
from jaxseg import model as model_lib
from jaxseg import state as state_lib
from jaxseg import subsets as subsets_lib
from jaxseg.data import io
from jaxseg.data import labels as labels_lib
from jaxseg.data import readers
from jaxseg.data.video import DataError, Dataset

ConfigError = config_lib.ConfigError

# Fields that may differ between the config that made a workdir and a rerun:
# they do not change a run's results (train.device_data: the same batches,
# gathered on the device instead of stacked on the host).
RERUN_FREE_FIELDS = ("train.progress", "train.num_steps", "train.device_data",
                     "eval.num_plot_videos", "train.log_to", "train.log_project",
                     "train.log_images",
                     "ablation.num_seeds", "parallel.num_devices",
                     "distributed.coordinator_address", "distributed.num_processes",
                     "distributed.process_id", "distributed.auto")

# What a run writes besides config.json (removed by claim_workdir(overwrite=True)).
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "segment_labels.npz", "splits.json",
               "classes.json",
               "detections.json", "detections_selected.json", "results.csv",
               "results.md", "results.json", "tensorboard")


def is_main_process() -> bool:
  """Only process 0 writes logs and results in a multi-process run."""
  return jax.process_index() == 0


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def config_diff(config, workdir: str) -> list[str] | None:
  """The fields (other than ``RERUN_FREE_FIELDS``) where ``config`` differs from
  ``workdir/config.json``, each as ``"field: old -> new"``; None without one.

  Raises:
    ConfigError: ``config.json`` is unreadable.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      old = json.load(f)
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path}: unreadable ({e}); move it away or pass --overwrite") from e
  a, b = config_lib.flatten(old), config_lib.flatten(config_to_dict(config))
  keys = sorted(k for k in set(a) | set(b)
                if k not in RERUN_FREE_FIELDS and a.get(k) != b.get(k))
  return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys]


def _refuse_other_config(workdir: str, diff: list[str]) -> None:
  shown = ", ".join(diff[:5])
  raise ConfigError(
      f"{workdir} holds a run of another config ({shown}"
      f"{', ...' if len(diff) > 5 else ''}); use another --workdir or pass --overwrite")


def claim_workdir(config, workdir: str, *, overwrite: bool = False) -> None:
  """Writes ``workdir/config.json``, refusing a workdir made by another config.

  Raises:
    ConfigError: if ``workdir`` holds a run of a different config and
      ``overwrite`` is False; the message lists the differing fields.
  """
  os.makedirs(workdir, exist_ok=True)
  diff = config_diff(config, workdir)
  if diff and not overwrite:
    _refuse_other_config(workdir, diff)
  if not is_main_process():
    return
  if diff and overwrite:
    for name in RUN_OUTPUTS:
      p = os.path.join(workdir, name)
      if os.path.isdir(p):
        shutil.rmtree(p)
      elif os.path.exists(p):
        os.remove(p)
  io.atomic_write_text(os.path.join(workdir, "config.json"),
                       json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n")


class MetricsLog:
  """Appends JSON lines to ``metrics.jsonl``; on resume, drops lines past the step."""

  def __init__(self, path: str, resume_step: int):
    self.path = path
    kept = []
    if os.path.exists(path):
      with open(path) as f:
        for line in f:
          try:
            rec = json.loads(line)
          except json.JSONDecodeError:
            continue  # a line cut by a crash
          if rec.get("step", 0) <= resume_step:
            kept.append(json.dumps(rec))
    if is_main_process():
      io.atomic_write_text(path, "".join(k + "\n" for k in kept))

  def write(self, record: dict) -> None:
    if not is_main_process():
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())


# -------------------------------------------------------------------------- data


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
                list(train.skipped_videos))
  return (Dataset(train.class_names, rest, list(train.skipped_videos)),
          val if val.videos else None)


def _run_data(config, workdir: str, *, write: bool) -> RunData:
  """Loads the dataset, splits it and samples (``write``) or reads the labels."""
  dataset = readers.load_dataset(config.data, workdir=workdir, generate=write)
  train_name, test_name, note = subsets_lib.resolve_subsets(
      config.data.train_subset, config.data.test_subset, [v.subset for v in dataset.videos])
  train = dataset.subset(train_name, source="data.train_subset")
  test = dataset.subset(test_name, source="data.test_subset")
  if write and is_main_process():
    save_run_classes(workdir, dataset)
  splits_path = os.path.join(workdir, "splits.json")
  labels_path = os.path.join(workdir, "segment_labels.npz")
  if os.path.exists(splits_path):
    ids = io.load_json(splits_path, "splits")["validation"]
  elif write:
    fraction, seed = config.train.validation_fraction, config.seed
    ids = _validation_ids(train, fraction, seed)
    io.atomic_write_text(splits_path, json.dumps(
        {"validation": ids, "seed": seed, "fraction": fraction}, indent=1) + "\n")
  else:
    raise ConfigError(f"{splits_path}: missing; {workdir} holds no finished run")
  train, val = _split(train, ids)
  if os.path.exists(labels_path) or not write:
    seg = labels_lib.load_segment_labels(labels_path)
  else:
    seg = readers.segment_labels(config.labels, dataset, train)
    labels_lib.save_segment_labels(labels_path, seg)
  missing = [v.video_id for v in train.videos if v.video_id not in seg.labels]
  if missing:
    raise DataError(f"{labels_path}: no segment labels for training video(s) "
                    f"{missing[:3]}; delete the file to sample labels again")
  return RunData(dataset, train, val, test, seg, train_name, test_name, note)


CLASSES_FILE = "classes.json"


def save_run_classes(workdir: str, dataset: Dataset) -> None:
  """Writes ``workdir/classes.json``: the class list (label index order) and
  the feature dimension D the run's model takes, so that ``--mode predict``
  needs the run directory only, not the training data."""
  io.atomic_write_text(os.path.join(workdir, CLASSES_FILE), json.dumps(
      {"class_names": list(dataset.class_names), "feature_dim": dataset.feature_dim},
      indent=1) + "\n")


def load_run_classes(workdir: str) -> tuple[list[str], int] | None:
  """``(class_names, feature_dim)`` from ``workdir/classes.json``; None without it.

  Raises:
    DataError: the file is malformed.
  """
  path = os.path.join(workdir, CLASSES_FILE)
  if not os.path.exists(path):
    return None
  data = io.load_json(path, "class list")
  names = data.get("class_names") if isinstance(data, dict) else None
  dim = data.get("feature_dim") if isinstance(data, dict) else None
  if (not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names)
      or not isinstance(dim, int) or dim <= 0):
    raise DataError(f'{path}: expected {{"class_names": [str, ...], "feature_dim": int > 0}}')
  return names, dim


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


def describe_data(config, workdir: str) -> str:
  """``--mode data``: the summary of the data the config names (prepared in ``workdir``)."""
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  return data_summary(prepare_data(config, workdir))


# ------------------------------------------------------------------ checkpoints


def checkpoint_managers(workdir: str, config, *, read_only: bool = False):
  """The Orbax managers of ``workdir/checkpoints``: ``(latest, best)``.

  ``latest`` keeps the last ``train.keep_checkpoints`` steps; ``best`` keeps
  the step with the highest validation ``selection`` score. ``read_only``
  managers create nothing (for reading a run back).
  """
  root = os.path.abspath(os.path.join(workdir, "checkpoints"))

  def options(**kwargs):
    return ocp.CheckpointManagerOptions(create=not read_only, read_only=read_only,
                                        **kwargs)

  latest = ocp.CheckpointManager(
      os.path.join(root, "latest"),
      options=options(
          max_to_keep=config.train.keep_checkpoints,
          # Distinct barrier names: both managers save the last step.
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix="latest")))
  best = ocp.CheckpointManager(
      os.path.join(root, "best"),
      options=options(
          max_to_keep=1, best_fn=lambda m: m["selection"], best_mode="max",
          keep_checkpoints_without_metrics=False,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix="best")))
  return latest, best


def restore(manager, step: int, like: Any) -> Any:
  """The checkpoint of ``step`` in ``manager``, restored into the tree of ``like``."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


# --------------------------------------------------------------- reading back


@dataclasses.dataclass
class LoadedRun:
  """A trained run read back from its work directory."""
  config: ml_collections.ConfigDict
  data: RunData
  model: model_lib.SegmentModel
  state: state_lib.TrainState
  step: int


def load_run(config, workdir: str, *, which: str = "final") -> LoadedRun:
  """Reads a run back: its data, model and the ``"final"`` (latest) or ``"selected"`` state.

  Creates and modifies no file: the config must match ``workdir/config.json``
  and the data, splits, labels and checkpoints must be there.

  Raises:
    ConfigError: if ``workdir`` holds no run, a run of another config, or no
      such checkpoint.
  """
  if which not in ("final", "selected"):
    raise ValueError(f"load_run: which must be 'final' or 'selected', got {which!r}")
  config_lib.validate(config)
  diff = config_diff(config, workdir)
  if diff is None:
    raise ConfigError(f"{workdir} holds no run (no config.json); train first")
  if diff:
    _refuse_other_config(workdir, diff)
  data = read_data(config, workdir)
  model = state_lib.make_model(config, data.dataset.feature_dim, data.dataset.num_classes)
  state = state_lib.init_state(config, model, state_lib.make_optimizer(config),
                               data.dataset.feature_dim)
  latest_mngr, best_mngr = checkpoint_managers(workdir, config, read_only=True)
  mngr = latest_mngr if which == "final" else best_mngr
  step = mngr.latest_step() if which == "final" else mngr.best_step()
  if step is None and which == "selected":
    mngr, step = latest_mngr, latest_mngr.latest_step()  # no validation split
  if step is None:
    raise ConfigError(f"{workdir}/checkpoints holds no checkpoint; train first")
  return LoadedRun(config, data, model, restore(mngr, int(step), state), int(step))


def load_checkpoint(config, workdir: str, feature_dim: int, num_classes: int, *,
                    which: str) -> tuple[model_lib.SegmentModel, state_lib.TrainState, int]:
  """The model and the ``"final"`` or ``"selected"`` state of a run, without its data.

  What :func:`load_run` restores, for a caller that knows ``D`` and ``N``
  (``classes.json``); creates and modifies no file.

  Raises:
    ConfigError: no such checkpoint.
  """
  if which not in ("final", "selected"):
    raise ValueError(f"load_checkpoint: which must be 'final' or 'selected', got {which!r}")
  model = state_lib.make_model(config, feature_dim, num_classes)
  state = state_lib.init_state(config, model, state_lib.make_optimizer(config), feature_dim)
  latest_mngr, best_mngr = checkpoint_managers(workdir, config, read_only=True)
  mngr = latest_mngr if which == "final" else best_mngr
  step = mngr.latest_step() if which == "final" else mngr.best_step()
  if step is None and which == "selected":
    mngr, step = latest_mngr, latest_mngr.latest_step()  # no validation split
  if step is None:
    raise ConfigError(f"{workdir}/checkpoints holds no checkpoint; train first")
  return model, restore(mngr, int(step), state), int(step)


def restore_params(config, workdir: str, *, which: str = "final"):
  """The parameters of a run's ``"final"`` or ``"selected"`` checkpoint."""
  return load_run(config, workdir, which=which).state.params
