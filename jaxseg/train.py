"""Training: the jitted step and the loop ``train_and_evaluate(config, workdir)``.

``train_and_evaluate`` is the whole run:

1. validate the config and claim ``workdir`` (``config.json``);
2. load the data, hold out a validation split, sample the segment labels
   (saved under ``workdir`` so a rerun uses the same ones; :mod:`jaxseg.workdir`);
3. train, resuming from ``workdir/checkpoints/latest`` when present, logging to
   ``metrics.jsonl``, selecting the best checkpoint on the validation split;
4. evaluate the final and the selected checkpoint on the test split and write
   the reports (:mod:`jaxseg.evaluate`).

The model, optimizer and train state come from :mod:`jaxseg.state`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from jaxseg import checkpoints as checkpoints_lib
from jaxseg import config as config_lib
from jaxseg import config_checks
from jaxseg import evaluate as evaluate_lib
from jaxseg import losses
from jaxseg import metric_writers
from jaxseg import parallel
from jaxseg import run_data
from jaxseg import state as state_lib
from jaxseg import workdir as workdir_lib
from jaxseg.data import batching
from jaxseg.data import device_data as device_data_lib

class NonFiniteError(FloatingPointError):
  """A loss or gradient became NaN or inf; the message names step and term."""


def make_train_step(config, model, optimizer, *,
                    on_device: bool = False) -> Callable[..., tuple]:
  """The jitted train step ``(state, batch) -> (state, metrics)``; state is donated.

  With ``on_device=True`` (``train.device_data`` resolved to on) the step is
  ``(state, plan, bank) -> (state, metrics)``: it builds the batch inside the compiled program from the
  device-resident training features (``device_data.gather_batch``), so the
  host sends only the plan's indices.

  Metrics (all scalars): each loss term (weighted terms are reported unweighted),
  ``total``, ``grad_norm``, ``finite`` (1.0 if every value was finite).
  A step with a non-finite value leaves the parameters unchanged and records
  the step and the offending terms in the state; the host decides to stop or
  to go on (``config.train.skip_nonfinite``).
  """
  loss_config = config.loss.to_dict()
  base_key = jax.random.key(config.seed + 1, impl=config.model.dropout_rng)

  def loss_fn(params, batch, dropout_key):
    out = model.apply({"params": params}, batch["features"], batch["mask"],
                      deterministic=False, rngs={"dropout": dropout_key})
    return losses.total_loss(out, batch, weight=params["sphere_weight"], **loss_config)

  def step_fn(state: state_lib.TrainState, batch: dict):
    dropout_key = jax.random.fold_in(base_key, state.step)
    (total, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, dropout_key)
    grad_norm = optax.tree.norm(grads)
    values = [terms.get(n, jnp.zeros(())) for n in state_lib.TERM_NAMES[:4]]
    values += [total, grad_norm]
    finite_each = jnp.stack([jnp.isfinite(v) for v in values])
    finite = jnp.all(finite_each)
    # Zero the gradient of a bad step so the optimizer state stays finite too.
    safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
    updates, new_opt = optimizer.update(safe_grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    bits = jnp.sum(jnp.where(finite_each, 0, 2 ** jnp.arange(len(state_lib.TERM_NAMES))))
    new_state = state_lib.TrainState(
        step=state.step + 1,
        params=keep(new_params, state.params),
        opt_state=keep(new_opt, state.opt_state),
        num_skipped=state.num_skipped + jnp.where(finite, 0, 1),
        first_bad_step=jnp.where((state.first_bad_step < 0) & ~finite, state.step,
                                 state.first_bad_step),
        bad_terms=jnp.where((state.first_bad_step < 0) & ~finite, bits, state.bad_terms),
    )
    metrics = dict(terms)
    metrics.update(total=total, grad_norm=grad_norm, finite=finite.astype(jnp.float32))
    return new_state, metrics

  if on_device:
    def step_from_plan(state: state_lib.TrainState, plan: dict, bank: dict):
      return step_fn(state, device_data_lib.gather_batch(bank, plan))
    return jax.jit(step_from_plan, donate_argnums=0)
  return jax.jit(step_fn, donate_argnums=0)


def bad_term_names(bits: int) -> str:
  """The names of the terms whose bit is set in ``TrainState.bad_terms``."""
  names = [n for i, n in enumerate(state_lib.TERM_NAMES) if bits & (1 << i)]
  return ", ".join(names) or "unknown"


def check_finite(state: state_lib.TrainState, config, workdir: str,
                 last_good: int | None = None) -> None:
  """Raises :class:`NonFiniteError` after a non-finite step, unless ``train.skip_nonfinite``.

  ``last_good``: the step of the newest checkpoint saved (None: none yet).
  """
  bad = int(state.first_bad_step)
  if bad < 0 or config.train.skip_nonfinite:
    return
  kept = (f"the last good checkpoint, step {last_good}, is kept in "
          f"{workdir}/checkpoints/latest" if last_good is not None else
          "no checkpoint was saved before it (a rerun starts from step 0)")
  raise NonFiniteError(
      f"non-finite {bad_term_names(int(state.bad_terms))} at step {bad}; training "
      f"stopped, {kept}. "
      "Lower train.learning_rate, set train.grad_clip_norm, or set "
      "train.skip_nonfinite=True to skip such batches.")


class _Progress:
  """A tqdm bar on stderr when ``train.progress`` (nothing otherwise)."""

  def __init__(self, config, start: int, total: int):
    self.bar = None
    if config.train.progress and start < total:
      from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
      self.bar = tqdm.tqdm(total=total, initial=start, desc="train", unit="step",
                           dynamic_ncols=True, file=sys.stderr)

  def update(self, loss: float | None = None) -> None:
    if self.bar is not None:
      self.bar.update(1)
      if loss is not None:
        self.bar.set_postfix(loss=f"{loss:.4f}")

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


class _Feeder:
  """Each step's input: the host batch, or the plan over the device-resident bank."""

  def __init__(self, config, data: run_data.RunData, mesh):
    self.config, self.mesh = config, mesh
    self.loader = batching.TrainLoader(
        data.train, data.segment_labels.labels, batch_size=config.train.batch_size,
        max_length=config.train.max_length, buckets=config.train.length_buckets,
        seed=config.seed, crop_mode=config.train.crop_mode,
        subsample=config.train.subsample)
    self.on_device, why = device_data_lib.use_device_data(config.train.device_data,
                                                          data.train)
    if parallel.is_main_process():
      logging.info("training data on the device: %s", why)
    self.bank = self.offsets = None
    if self.on_device:
      host_bank = device_data_lib.build_bank(data.train, data.segment_labels.labels)
      self.bank = parallel.replicate(host_bank.arrays(), mesh)
      self.offsets = host_bank.offsets
    self.rows = parallel.process_rows(config.train.batch_size, mesh)

  def step(self, train_step, state, step: int):
    batch_size = self.config.train.batch_size
    if self.on_device:
      local = {k: v[self.rows] for k, v in self.loader.plan(step, self.offsets).items()}
      return train_step(state, parallel.shard_batch(local, self.mesh, batch_size), self.bank)
    local = {k: v[self.rows] for k, v in self.loader.batch(step).items()
             if isinstance(v, np.ndarray)}
    return train_step(state, parallel.shard_batch(local, self.mesh, batch_size))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       overwrite: bool = False, evaluate: bool = True) -> dict:
  """Trains (resuming from the latest checkpoint), then evaluates on test.

  Args:
    config: a config from ``configs/*.py``.
    workdir: where checkpoints, logs and results go.
    overwrite: allow ``workdir`` to hold a run of a different config.
    evaluate: evaluate the final and the selected checkpoint on the test split.

  Returns:
    ``{"final": summary, "selected": summary, "selected_step": int}``; each
    summary maps ``"mAP@0.5"`` etc. to percent (empty when ``evaluate=False``).
  """
  config_checks.validate(config)
  parallel.initialize_distributed(config)
  mesh = parallel.make_mesh(config.parallel.num_devices)
  config_checks.validate(config, num_devices=mesh.devices.size)
  metric_writers.check_backends(config.train.log_to)
  workdir_lib.check_inputs_outside(config, workdir)
  if not overwrite and os.path.isdir(workdir):  # refused before even the lock file
    workdir_lib.check_same_config(config, workdir)
  workdir_lib.make_workdir(workdir)
  with workdir_lib.locked(workdir):  # one run writes to a workdir at a time
    return _train_and_evaluate(config, workdir, mesh, overwrite=overwrite,
                               evaluate=evaluate)


def _train_and_evaluate(config, workdir: str, mesh, *, overwrite: bool,
                        evaluate: bool) -> dict:
  """:func:`train_and_evaluate` once the config is valid and the workdir locked."""
  workdir_lib.claim_workdir(config, workdir, overwrite=overwrite)
  data = run_data.prepare_data(config, workdir)
  if parallel.is_main_process():
    logging.info("data:\n%s", run_data.data_summary(data))
  feature_dim = data.dataset.feature_dim
  model = state_lib.make_model(config, feature_dim, data.dataset.num_classes)
  optimizer = state_lib.make_optimizer(config)
  state = parallel.replicate(state_lib.init_state(config, model, optimizer, feature_dim),
                             mesh)
  latest_mngr, best_mngr = checkpoints_lib.checkpoint_managers(workdir, config)
  start = 0
  if latest_mngr.latest_step() is not None:
    latest_mngr, best_mngr, start, state = _resume(config, workdir, latest_mngr,
                                                   best_mngr, state)
  log = workdir_lib.MetricsLog(os.path.join(workdir, "metrics.jsonl"), resume_step=start)
  main = parallel.is_main_process()
  writer = metric_writers.create(config.train.log_to if main else (), workdir,
                                 start_step=start, project=config.train.log_project)
  writer.write_hparams(config_lib.flatten(config.to_dict()))
  feeder = _Feeder(config, data, mesh)
  train_step = make_train_step(config, model, optimizer, on_device=feeder.on_device)
  apply_fn = evaluate_lib.make_apply_fn(model)
  validate = None
  if data.validation is not None:
    def validate(st):
      # Scored under the rules that would be chosen now (every candidate under
      # inference.rules = "auto"): a checkpoint is selected with its best rules.
      rules, res, scores = evaluate_lib.choose_rules(config, model, st.params,
                                                     data.validation, apply_fn=apply_fn)
      res = {**res, "rules": rules.name, "candidates": scores}
      if main and config.train.log_images > 0:
        res["images"] = evaluate_lib.timeline_images(
            config, model, st.params, data.validation, config.train.log_images,
            rules=rules, apply_fn=apply_fn)
      return res
  try:
    with checkpoint_errors(os.path.join(workdir, "checkpoints")):
      state = run_steps(config, workdir, state, start, feeder, train_step, (log, writer),
                    validate, latest_mngr, best_mngr)
      latest_mngr.wait_until_finished()
      best_mngr.wait_until_finished()
  finally:
    writer.close()
  if not evaluate:
    return {"final": {}, "selected": {}, "selected_step": int(state.step)}
  return evaluate_lib.evaluate_and_report(config, workdir, model, data, state, best_mngr,
                                          apply_fn=apply_fn)


@contextlib.contextmanager
def checkpoint_errors(path: str) -> Iterator[None]:
  """Turns Orbax's report of a full or read-only disk into one ``OSError`` naming ``path``.

  Orbax (through TensorStore) raises a ``ValueError`` whose text buries
  ``RESOURCE_EXHAUSTED`` / ``No space left on device``; the command line then
  prints ``error: <path>: no space left on device``. The checkpoints already
  complete are untouched (a step is written to a temporary folder and renamed
  when complete), so a rerun after freeing space resumes from the newest.
  """
  try:
    yield
  except OSError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    text = str(e)
    for marker, code in (("No space left", errno.ENOSPC), ("RESOURCE_EXHAUSTED", errno.ENOSPC),
                         ("Read-only file system", errno.EROFS)):
      if marker in text:
        raise OSError(code, os.strerror(code) + " (while saving a checkpoint)", path) from e
    raise


def _resume(config, workdir: str, latest_mngr, best_mngr, state):
  """Restores the newest intact latest checkpoint: ``(latest, best, step, state)``.

  Unreadable newer checkpoints (and best checkpoints past the step resumed,
  which the run redoes) are set aside under ``checkpoints/unreadable`` and the
  managers reopened, so the run can write those steps again.
  """
  start, state, bad = checkpoints_lib.restore_newest_intact(
      latest_mngr, state, where=f"{workdir}/checkpoints/latest")
  start = start or 0
  if bad:
    later_best = [int(s) for s in best_mngr.all_steps() if int(s) > start]
    latest_mngr.close()
    best_mngr.close()
    if parallel.is_main_process():
      checkpoints_lib.set_aside_checkpoints(workdir, "latest", [s for s, _ in bad])
      checkpoints_lib.set_aside_checkpoints(workdir, "best", later_best)
    latest_mngr, best_mngr = checkpoints_lib.checkpoint_managers(workdir, config)
  if start:
    logging.info("Resumed from %s/checkpoints/latest at step %d.", workdir, start)
  return latest_mngr, best_mngr, start, state


def run_steps(config, workdir, state, start, feeder, train_step, logs, validate,
              latest_mngr, best_mngr):
  """Steps ``start .. train.num_steps``: logs, validates and checkpoints on the boundaries.

  ``logs`` is ``(metrics.jsonl log, metric writer)``: every record goes to both.
  """
  t = config.train
  log, writer = logs
  lr = state_lib.learning_rate(config)
  lr_at = lr if callable(lr) else (lambda _: lr)
  num_steps = t.num_steps
  bar = _Progress(config, start, num_steps)
  pending: list[dict] = []
  t0 = time.time()
  for step in range(start, num_steps):
    state, metrics = feeder.step(train_step, state, step)
    pending.append(metrics)
    done = step + 1
    log_now = done % t.log_every == 0 or done == num_steps
    validate_now = done % t.eval_every == 0 or done == num_steps
    save_now = done % t.checkpoint_every == 0 or done == num_steps
    if not (log_now or validate_now or save_now):
      bar.update()
      continue
    check_finite(state, config, workdir, last_good=latest_mngr.latest_step())
    loss = None
    if log_now:
      host = jax.device_get(pending)
      rec = {"step": done, "kind": "train",
             **{k: float(np.mean([m[k] for m in host])) for k in host[0]},
             "skipped": int(state.num_skipped),
             "steps_per_s": len(pending) / max(time.time() - t0, 1e-9)}
      log.write(rec)
      writer.write_scalars(done, metric_writers.train_scalars(rec, config.loss, lr_at(done)))
      pending, t0, loss = [], time.time(), rec["total"]
    bar.update(loss)
    if validate is not None and validate_now:
      res = validate(state)
      score = evaluate_lib.selection_score(res["summary"])
      log.write({"step": done, "kind": "validation", "selection": score, "rules": res["rules"],
                 "candidates": res["candidates"], **res["summary"]})
      writer.write_scalars(done, metric_writers.validation_scalars(res["summary"], score))
      if res.get("images"):
        writer.write_images(done, res["images"])
      writer.flush()
      best_mngr.save(done, args=ocp.args.StandardSave(state), metrics={"selection": score})
    if save_now:
      # A resume from `done` never redoes this step's validation: the best
      # checkpoint of `done` must be on disk before the latest one can be.
      best_mngr.wait_until_finished()
      latest_mngr.save(done, args=ocp.args.StandardSave(state))
  bar.close()
  return state
