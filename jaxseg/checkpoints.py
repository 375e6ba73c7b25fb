"""Orbax checkpoints of a run: ``workdir/checkpoints/{latest,best}``.

:func:`checkpoint_managers` opens the two managers, :func:`restore` and
:func:`restore_newest_intact` read a state back (skipping unreadable
checkpoints), :func:`set_aside_checkpoints` moves unreadable ones to
``checkpoints/unreadable/`` and :func:`load_checkpoint` restores the model and
state of a finished run without its data.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from jaxseg import config as config_lib
from jaxseg import model as model_lib
from jaxseg import state as state_lib

ConfigError = config_lib.ConfigError


def checkpoint_managers(workdir: str, config, *, read_only: bool = False):
  """The Orbax managers of ``workdir/checkpoints``: ``(latest, best)``.

  ``latest`` keeps the last ``train.keep_checkpoints`` steps; ``best`` keeps
  the step with the highest validation ``selection`` score. ``read_only``
  managers create nothing (for reading a run back).

  Raises:
    ConfigError: a checkpoint whose metadata Orbax cannot read, naming the folder.
  """
  root = os.path.abspath(os.path.join(workdir, "checkpoints"))

  def options(**kwargs):
    return ocp.CheckpointManagerOptions(create=not read_only, read_only=read_only,
                                        **kwargs)

  def manager(name, opts):
    try:
      return ocp.CheckpointManager(os.path.join(root, name), options=opts)
    except Exception as e:  # pylint: disable=broad-except  # Orbax reading a damaged step
      reason = " ".join(str(e).split())[:200] or type(e).__name__
      raise ConfigError(f"{os.path.join(root, name)}: a checkpoint there is unreadable "
                        f"({type(e).__name__}: {reason}); move it away, or train again "
                        "with --overwrite") from None

  latest = manager(
      "latest",
      options(
          max_to_keep=config.train.keep_checkpoints,
          # Distinct barrier names: both managers save the last step.
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix="latest")))
  best = manager(
      "best",
      options(
          max_to_keep=1, best_fn=lambda m: m["selection"], best_mode="max",
          keep_checkpoints_without_metrics=False,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix="best")))
  return latest, best


def check_finished(config, workdir: str, *, action: str) -> int:
  """The step of a finished run's last checkpoint; refuses a run that has not finished.

  A run has finished when its newest ``latest`` checkpoint is at
  ``train.num_steps``: training saves one at its last step, and nothing else
  writes there. So an interrupted run (or one still training) is never taken
  for a finished one, whatever reports it holds.

  Raises:
    ConfigError: naming the step reached and the command that finishes it.
  """
  folder = os.path.join(workdir, "checkpoints")
  if os.path.islink(folder) and not os.path.exists(folder):
    raise ConfigError(f"{folder}: dangling symbolic link to {os.readlink(folder)!r}; the "
                      f"run's checkpoints are not there ({action} needs them)")
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise ConfigError(f"{folder}: not a folder; the run's checkpoints are not there")
  latest, _ = checkpoint_managers(workdir, config, read_only=True)
  step = latest.latest_step()
  # The steps the run was last started for: a rerun asking for more steps
  # (train.num_steps may change between reruns) writes them to config.json.
  num_steps = config.train.num_steps
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      recorded = json.load(f)["train"]["num_steps"]
    if type(recorded) is int:
      num_steps = max(num_steps, recorded)
  except (OSError, ValueError, KeyError, TypeError):
    pass  # an unreadable config.json is refused by the config check, not here
  if step is None or int(step) < num_steps:
    reached = "no checkpoint" if step is None else f"step {int(step)}"
    raise ConfigError(
        f"{workdir} holds an unfinished run ({reached} of train.num_steps = "
        f"{num_steps}); rerun its training command to finish it before {action}")
  return int(step)


def restore(manager, step: int, like: Any) -> Any:
  """The checkpoint of ``step`` in ``manager``, restored into the tree of ``like``."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


# Where checkpoints that cannot be restored are moved (checkpoints/unreadable/<which>-<step>).
UNREADABLE_CHECKPOINTS = "unreadable"


def restore_newest_intact(manager, like: Any, *, where: str) -> tuple[int | None, Any, list]:
  """The newest checkpoint of ``manager`` that restores, newest first.

  A checkpoint that fails to restore (a file truncated or deleted inside it)
  is skipped with a one-line warning naming it, instead of ending the run.

  Returns:
    ``(step, state, bad)``: the step restored (None if there is no readable
    checkpoint; ``state`` is then ``like``) and the ``[(step, reason)]`` of
    the newer checkpoints that failed.
  """
  bad = []
  for step in sorted((int(s) for s in manager.all_steps()), reverse=True):
    try:
      state = restore(manager, step, like)
    except Exception as e:  # pylint: disable=broad-except  # any way Orbax fails to read it
      reason = " ".join(str(e).split())[:200] or type(e).__name__
      logging.warning("%s/%d: checkpoint unreadable (%s); trying the previous one",
                      where, step, reason)
      bad.append((step, reason))
      continue
    if bad:
      logging.warning("%s: resuming from step %d, the newest intact checkpoint", where, step)
    return step, state, bad
  return None, like, bad


def set_aside_checkpoints(workdir: str, which: str, steps) -> None:
  """Moves steps of ``checkpoints/<which>`` to ``checkpoints/unreadable/<which>-<step>``
  (kept for inspection; the run writes those steps again)."""
  root = os.path.join(workdir, "checkpoints")
  os.makedirs(os.path.join(root, UNREADABLE_CHECKPOINTS), exist_ok=True)
  for step in steps:
    dst = os.path.join(root, UNREADABLE_CHECKPOINTS, f"{which}-{step}")
    if os.path.exists(dst):
      shutil.rmtree(dst)
    os.replace(os.path.join(root, which, str(step)), dst)


def load_checkpoint(config, workdir: str, feature_dim: int, num_classes: int, *,
                    which: str) -> tuple[model_lib.SegmentModel, state_lib.TrainState, int]:
  """The model and the ``"final"`` or ``"selected"`` state of a run, without its data.

  What :func:`load_run` restores, for a caller that knows ``D`` and ``N``
  (``classes.json``); an unreadable newest ``latest`` checkpoint falls back to
  the newest intact one. Creates and modifies no file.

  Raises:
    ConfigError: no such checkpoint, or the selected one is unreadable.
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
  if mngr is latest_mngr:  # an unreadable newest checkpoint: the newest intact one
    step, state, _ = restore_newest_intact(latest_mngr, state,
                                           where=f"{workdir}/checkpoints/latest")
    if step is None:
      raise ConfigError(f"{workdir}/checkpoints/latest: no readable checkpoint")
    return model, state, int(step)
  return model, restore_selected(mngr, int(step), state, workdir=workdir), int(step)


def restore_selected(manager, step: int, like: Any, *, workdir: str) -> Any:
  """The selected (``best``) checkpoint of ``step``, restored into the tree of ``like``.

  Raises:
    ConfigError: it cannot be restored (a file of it truncated or missing),
      naming it; the final checkpoint is still there to use.
  """
  try:
    return restore(manager, step, like)
  except Exception as e:  # pylint: disable=broad-except  # any way Orbax fails to read it
    reason = " ".join(str(e).split())[:200] or type(e).__name__
    raise ConfigError(f"{workdir}/checkpoints/best/{step}: selected checkpoint unreadable "
                      f"({reason}); move it away (the final checkpoint remains) or "
                      "train again with --overwrite") from None
