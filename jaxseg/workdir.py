"""The run directory: what a run writes, and reading a run back without writing.

``workdir`` holds ``config.json`` (the resolved config; a rerun must match
it), ``data.json`` (the dataset fingerprint and the hashes of the labels the
run trained on; a rerun must match it too), ``metrics.jsonl``, ``splits.json``
(the validation hold-out), ``segment_labels.npz`` (the labels the run trained
on), ``classes.json`` (the class list and D, for ``--mode predict``),
``checkpoints/`` (Orbax: ``latest`` and ``best``; :mod:`jaxseg.checkpoints`), ``tensorboard/`` (event
files), the reports of :mod:`jaxseg.evaluate` and ``.lock`` (held by the run
writing to it: :func:`locked`).

:func:`claim_workdir` and :func:`jaxseg.run_data.prepare_data` create what
is missing (a training run); :func:`load_run` reads a finished run back and
never creates or modifies a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import shutil
from typing import Iterator

import ml_collections

from jaxseg import checkpoints as checkpoints_lib
from jaxseg import config as config_lib
from jaxseg import config_checks
from jaxseg import model as model_lib
from jaxseg import parallel
from jaxseg import run_data
from jaxseg import state as state_lib
from jaxseg.data import io
from jaxseg.data.video import DataError

ConfigError = config_lib.ConfigError

# Fields that may differ between the config that made a workdir and a rerun:
# they do not change a run's results (train.device_data: the same batches,
# gathered on the device instead of stacked on the host).
RERUN_FREE_FIELDS = ("train.progress", "train.num_steps", "train.device_data",
                     "eval.num_plot_videos", "train.log_to", "train.log_project",
                     "train.log_images",
                     "parallel.num_devices",
                     "distributed.coordinator_address", "distributed.num_processes",
                     "distributed.process_id", "distributed.auto")

# What a run writes besides config.json (removed by claim_workdir(overwrite=True)).
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "segment_labels.npz", "splits.json",
               "classes.json",
               "detections.json", "detections_selected.json", "results.csv",
               "results.md", "results.json", "rules.json", "data.json", "plots",
               "tensorboard")
LOCK_FILE = ".lock"
# Fields a cosine schedule depends on: with it, changing one is a new run.
SCHEDULE_FIELDS = ("train.num_steps",)


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def config_diff(config, workdir: str) -> list[str] | None:
  """The fields (other than ``RERUN_FREE_FIELDS``) where ``config`` differs from
  ``workdir/config.json``, each as ``"field: old -> new"``; None without one.

  Raises:
    ConfigError: ``config.json`` is unreadable.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.lexists(path):
    return None
  try:
    old = io.load_json(path, "run config")
  except DataError as e:
    raise ConfigError(f"{e}; move it away or pass --overwrite") from None
  if not isinstance(old, dict):
    raise ConfigError(f"{path}: not a run's config (a JSON object of config sections); "
                      "move it away or pass --overwrite")
  a = config_lib.flatten(config_lib.with_added_fields(old))
  b = config_lib.flatten(config_to_dict(config))
  free = set(RERUN_FREE_FIELDS)
  if "cosine" in (a.get("train.schedule"), b.get("train.schedule")):
    free -= set(SCHEDULE_FIELDS)  # the learning rate of every step depends on them
  # The ablation.* fields describe a sweep of runs (which cells, seeds, split,
  # Fig. 5's times), not a run: a cell is the same run under any of them.
  keys = sorted(k for k in set(a) | set(b)
                if k not in free and not k.startswith("ablation.") and a.get(k) != b.get(k))
  return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys]


def check_same_config(config, workdir: str) -> None:
  """Refuses ``workdir`` if it holds a run of another config; reads only.

  Raises:
    ConfigError: as :func:`claim_workdir` without ``overwrite``.
  """
  diff = config_diff(config, workdir)
  if diff:
    _refuse_other_config(workdir, diff)


def _refuse_other_config(workdir: str, diff: list[str]) -> None:
  shown = ", ".join(diff[:5])
  raise ConfigError(
      f"{workdir} holds a run of another config ({shown}"
      f"{', ...' if len(diff) > 5 else ''}); use another --workdir or pass --overwrite")


# The config fields that name input files or folders.
INPUT_FIELDS = ("data.annotation_path", "data.features_dir", "data.train_split_file",
                "data.test_split_file", "data.wtalc_dir", "data.ambiguous_path",
                "labels.points_csv", "labels.fps_json")


def check_inputs_outside(config, workdir: str) -> None:
  """No input lies in ``workdir``, nor ``workdir`` in an input folder: a run
  writes there (``classes.json``, ``splits.json``, ...) and ``--overwrite``
  removes what it wrote.

  Raises:
    ConfigError: naming the field, its path and the workdir.
  """
  root = os.path.realpath(workdir)
  for field in INPUT_FIELDS:
    section, name = field.split(".")
    path = config[section][name]
    if not path:
      continue
    real = os.path.realpath(path)
    if io.within(real, root):
      raise ConfigError(f"config.{field}: {path} lies in --workdir {workdir}, where a run "
                        "writes its files; keep the inputs outside the run's folder")
    if io.within(root, real):
      raise ConfigError(f"--workdir {workdir} lies in config.{field} ({path}); keep the "
                        "run's folder outside its inputs")


def claim_workdir(config, workdir: str, *, overwrite: bool = False) -> None:
  """Writes ``workdir/config.json``, refusing a workdir made by another config.

  With ``overwrite`` the old run's outputs are removed first, whatever its
  config (:func:`remove_run_outputs`: only what jaxseg writes). Stale
  temporary files of a killed write are removed in any case.

  Raises:
    ConfigError: if ``workdir`` holds a run of a different config and
      ``overwrite`` is False; the message lists the differing fields. Also
      if ``workdir`` is a file or under one.
  """
  check_inputs_outside(config, workdir)
  make_workdir(workdir)
  diff = config_diff(config, workdir)
  if diff and not overwrite:
    _refuse_other_config(workdir, diff)
  if not parallel.is_main_process():
    return
  if overwrite:
    remove_run_outputs(workdir)
  remove_stale_temporaries(workdir)
  io.atomic_write_text(os.path.join(workdir, "config.json"),
                       json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n")


def make_workdir(workdir: str) -> None:
  """Creates ``workdir`` (and its parents).

  Raises:
    ConfigError: ``workdir`` is a file, or a parent of it is.
    OSError: it cannot be created (read-only file system, no space, ...).
  """
  try:
    os.makedirs(workdir, exist_ok=True)
  except (FileExistsError, NotADirectoryError):
    what = "is a file" if os.path.lexists(workdir) else "is under a file"
    raise ConfigError(f"{workdir}: --workdir {what}, not a folder") from None


def remove_run_outputs(workdir: str) -> None:
  """Removes what a run wrote in ``workdir`` (``RUN_OUTPUTS``): only jaxseg's files.

  ``checkpoints/latest`` and ``checkpoints/best`` (and checkpoints set aside
  as unreadable) go whole; in ``plots/`` only the ``.png`` timelines go; any
  other file a user put in the workdir, or in those folders, stays.
  """
  for name in RUN_OUTPUTS:
    p = os.path.join(workdir, name)
    if name == "checkpoints" and os.path.isdir(p):
      for sub in ("latest", "best", checkpoints_lib.UNREADABLE_CHECKPOINTS):
        if os.path.isdir(os.path.join(p, sub)):
          shutil.rmtree(os.path.join(p, sub))
      _rmdir_if_empty(p)
    elif name == "plots" and os.path.isdir(p):
      for f in os.listdir(p):
        if f.endswith(".png") and os.path.isfile(os.path.join(p, f)):
          os.remove(os.path.join(p, f))
      _rmdir_if_empty(p)
    elif os.path.isfile(p) or os.path.islink(p):
      os.remove(p)


def _rmdir_if_empty(path: str) -> None:
  if not os.listdir(path):
    os.rmdir(path)


def remove_stale_temporaries(workdir: str) -> int:
  """Removes the temporary files a killed write of a run output left in ``workdir``.

  :func:`jaxseg.data.io.atomic_open` writes ``.<name>.<random>.tmp`` (older
  releases ``<name>.tmp-<pid>``); only those of ``config.json`` and the
  ``RUN_OUTPUTS`` are removed. Call it while holding the lock (no other run
  can be writing them). Returns how many were removed.
  """
  names = ("config.json",) + RUN_OUTPUTS
  removed = 0
  for f in os.listdir(workdir):
    stale = any((f.startswith(f".{n}.") and f.endswith(".tmp")) or f.startswith(f"{n}.tmp-")
                for n in names)
    if stale and os.path.isfile(os.path.join(workdir, f)):
      os.remove(os.path.join(workdir, f))
      removed += 1
  return removed


# --------------------------------------------------------------------- lock

_HELD_LOCKS: dict[str, int] = {}  # realpath(workdir) -> fd of its lock file


class WorkdirBusyError(ConfigError):
  """Another process holds the workdir's lock; the message names its pid."""


@contextlib.contextmanager
def locked(workdir: str) -> Iterator[None]:
  """Holds the exclusive lock of ``workdir`` (``<workdir>/.lock``) while the block runs.

  The lock is an ``fcntl.flock`` on ``.lock``, which holds the holder's pid.
  The kernel releases it when the holder exits, even on ``SIGKILL``, so a
  stale ``.lock`` file never blocks a later run. Re-entrant in one process;
  only the main process of a multi-process run takes it.

  Raises:
    WorkdirBusyError: another process holds it.
  """
  key = os.path.realpath(workdir)
  if not parallel.is_main_process() or key in _HELD_LOCKS:
    yield
    return
  _HELD_LOCKS[key] = acquire_lock(workdir)
  try:
    yield
  finally:
    os.close(_HELD_LOCKS.pop(key))  # closing the file releases the flock


def acquire_lock(workdir: str) -> int:
  """Takes the lock of ``workdir`` without waiting; returns the lock file's fd.

  Raises:
    WorkdirBusyError: another process holds it (naming its pid).
  """
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
    os.close(fd)
    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      raise
    raise WorkdirBusyError(
        f"{workdir} is in use by another run (pid {holder}, lock {path}); wait for "
        "it to finish or use another --workdir") from None
  os.ftruncate(fd, 0)
  os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
  return fd


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
          if not isinstance(rec, dict) or not isinstance(rec.get("step", 0), (int, float)):
            continue  # not a record of this log (the file was edited)
          if rec.get("step", 0) <= resume_step:
            kept.append(json.dumps(rec))
    if parallel.is_main_process():
      io.atomic_write_text(path, "".join(k + "\n" for k in kept))

  def write(self, record: dict) -> None:
    if not parallel.is_main_process():
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())


def describe_data(config, workdir: str) -> str:
  """``--mode data``: the summary of the data the config names (prepared in ``workdir``)."""
  config_checks.validate(config)
  check_inputs_outside(config, workdir)
  check_same_config(config, workdir)  # a run's data under another config: refused
  make_workdir(workdir)
  with locked(workdir):
    return run_data.data_summary(run_data.prepare_data(config, workdir))


# --------------------------------------------------------------- reading back


@dataclasses.dataclass
class LoadedRun:
  """A trained run read back from its work directory."""
  config: ml_collections.ConfigDict
  data: run_data.RunData
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
  config_checks.validate(config)
  diff = config_diff(config, workdir)
  if diff is None:
    raise ConfigError(f"{workdir} holds no run (no config.json); train first")
  if diff:
    _refuse_other_config(workdir, diff)
  data = run_data.read_data(config, workdir)
  model, state, step = checkpoints_lib.load_checkpoint(
      config, workdir, data.dataset.feature_dim, data.dataset.num_classes, which=which)
  return LoadedRun(config, data, model, state, step)


def restore_params(config, workdir: str, *, which: str = "final"):
  """The parameters of a run's ``"final"`` or ``"selected"`` checkpoint."""
  return load_run(config, workdir, which=which).state.params
