"""Training loop: one jitted step, Optax optimizer, Orbax checkpoints.

``train_and_evaluate(config, workdir)`` is the whole run:

1. validate the config and claim ``workdir`` (``config.json``);
2. load the data, hold out a validation split, sample the segment labels
   (saved under ``workdir`` so a rerun uses the same ones);
3. train, resuming from ``workdir/checkpoints/latest`` when present, logging to
   ``metrics.jsonl``, selecting the best checkpoint on the validation split;
4. evaluate the final and the selected checkpoint on the test split and write
   ``detections.json``, ``results.csv``, ``results.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pandas as pd

from jaxseg import config as config_lib
from jaxseg import evaluation
from jaxseg import inference
from jaxseg import losses
from jaxseg import model as model_lib
from jaxseg import parallel
from jaxseg import provenance
from jaxseg.data import batching
from jaxseg.data import device_data as device_data_lib
from jaxseg.data import labels as labels_lib
from jaxseg.data import readers
from jaxseg.data.video import DataError, Dataset

ConfigError = config_lib.ConfigError

# Fields that may differ between the config that made a workdir and a rerun:
# they do not change a run's results (train.device_data: the same batches,
# gathered on the device instead of stacked on the host).
_RERUN_FREE_FIELDS = ("train.progress", "train.num_steps", "train.device_data",
                      "eval.num_plot_videos",
                      "ablation.num_seeds", "parallel.num_devices",
                      "distributed.coordinator_address", "distributed.num_processes",
                      "distributed.process_id", "distributed.auto")


class NonFiniteError(FloatingPointError):
  """A loss or gradient became NaN or inf; the message names step and term."""


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training. One pytree, donated to the step.

  Attributes:
    step: () int32, number of optimizer steps taken (batches consumed).
    params: model parameters.
    opt_state: Optax state.
    num_skipped: () int32, batches skipped for non-finite values.
    first_bad_step: () int32, first step with a non-finite value, -1 if none.
    bad_terms: () int32, bit i set when term ``TERM_NAMES[i]`` was non-finite.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  num_skipped: jax.Array
  first_bad_step: jax.Array
  bad_terms: jax.Array


TERM_NAMES = ("classification", "segment", "sphere", "propagation", "total", "grad_norm")


# --------------------------------------------------------------------------- setup


def make_model(config: ml_collections.ConfigDict, feature_dim: int,
               num_classes: int) -> model_lib.SegmentModel:
  embed = feature_dim if config.model.embed_dim == -1 else config.model.embed_dim
  return model_lib.SegmentModel(num_classes=num_classes, embed_dim=embed,
                                dropout_rate=config.model.dropout_rate,
                                compute_dtype=config.model.compute_dtype)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with L2 weight decay added to the gradient, as PyTorch's ``Adam``.

  W-TALC and BaSNet use ``torch.optim.Adam(lr, weight_decay=5e-4)``, which adds
  ``wd * w`` to the gradient before the Adam moments (not AdamW).
  """
  t = config.train
  if t.schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(
        0.0, t.learning_rate, max(t.warmup_steps, 1), t.num_steps)
  elif t.warmup_steps > 0:
    lr = optax.linear_schedule(0.0, t.learning_rate, t.warmup_steps)
  else:
    lr = t.learning_rate
  parts = []
  if t.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(t.grad_clip_norm))
  if t.weight_decay > 0:
    parts.append(optax.add_decayed_weights(t.weight_decay))
  parts.append(optax.adam(lr))
  return optax.chain(*parts)


def init_state(config, model, optimizer, feature_dim: int) -> TrainState:
  variables = model_lib.init_params(model, jax.random.key(config.seed), feature_dim)
  params = variables["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
      num_skipped=jnp.zeros((), jnp.int32), first_bad_step=-jnp.ones((), jnp.int32),
      bad_terms=jnp.zeros((), jnp.int32))


def make_train_step(config, model, optimizer, *,
                    device_data: bool = False) -> Callable[..., tuple]:
  """The jitted train step ``(state, batch) -> (state, metrics)``; state is donated.

  With ``device_data=True`` the step is ``(state, plan, bank) -> (state,
  metrics)``: it builds the batch inside the compiled program from the
  device-resident training features (``device_data.gather_batch``), so the
  host sends only the plan's indices.

  Metrics (all scalars): each loss term (weighted terms are reported unweighted),
  ``total``, ``grad_norm``, ``finite`` (1.0 if every value was finite).
  A step with a non-finite value leaves the parameters unchanged and records
  the step and the offending terms in the state; the host decides to stop or
  to go on (``config.train.skip_nonfinite``).
  """
  loss_kwargs = losses.loss_config_kwargs(config.loss)
  base_key = jax.random.key(config.seed + 1, impl=config.model.dropout_rng)

  def loss_fn(params, batch, dropout_key):
    out = model.apply({"params": params}, batch["features"], batch["mask"],
                      deterministic=False, rngs={"dropout": dropout_key})
    total, terms = losses.total_loss(out, batch, weight=params["sphere_weight"],
                                     **loss_kwargs)
    return total, terms

  def step_fn(state: TrainState, batch: dict):
    dropout_key = jax.random.fold_in(base_key, state.step)
    (total, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, dropout_key)
    grad_norm = optax.tree.norm(grads)
    values = [terms.get(n, jnp.zeros(())) for n in TERM_NAMES[:4]] + [total, grad_norm]
    finite_each = jnp.stack([jnp.isfinite(v) for v in values])
    finite = jnp.all(finite_each)
    # Zero the gradient of a bad step so the optimizer state stays finite too.
    safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
    updates, new_opt = optimizer.update(safe_grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    bits = jnp.sum(jnp.where(finite_each, 0, 2 ** jnp.arange(len(TERM_NAMES))))
    new_state = TrainState(
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

  if device_data:
    def step_from_plan(state: TrainState, plan: dict, bank: dict):
      return step_fn(state, device_data_lib.gather_batch(bank, plan))
    return jax.jit(step_from_plan, donate_argnums=0)
  return jax.jit(step_fn, donate_argnums=0)


def make_apply_fn(model) -> Callable:
  """Jitted deterministic forward pass ``(variables, features, mask) -> outputs``."""
  return jax.jit(functools.partial(model.apply, deterministic=True))


# ----------------------------------------------------------------------- workdir


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def is_main_process() -> bool:
  """Only process 0 writes logs and results in a multi-process run."""
  return jax.process_index() == 0


def atomic_write_text(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` so that a crash never leaves a truncated file."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def claim_workdir(config, workdir: str, *, overwrite: bool = False) -> None:
  """Writes ``workdir/config.json``, refusing a workdir made by another config.

  Raises:
    ConfigError: if ``workdir`` holds a run of a different config and
      ``overwrite`` is False; the message lists the differing fields.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  new = config_to_dict(config)
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = json.load(f)
    except json.JSONDecodeError as e:
      raise ConfigError(f"{path}: unreadable ({e}); move it away or pass --overwrite") from e
    a, b = _flatten(old), _flatten(new)
    diff = sorted(k for k in set(a) | set(b)
                  if k not in _RERUN_FREE_FIELDS and a.get(k) != b.get(k))
    if diff and not overwrite:
      shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:5])
      raise ConfigError(
          f"{workdir} holds a run of another config ({shown}"
          f"{', ...' if len(diff) > 5 else ''}); use another --workdir or pass --overwrite")
    if not is_main_process():
      return
    if diff and overwrite:
      import shutil  # pylint: disable=g-import-not-at-top
      for name in ("checkpoints", "metrics.jsonl", "segment_labels.npz", "splits.json",
                   "detections.json", "detections_selected.json", "results.csv",
                   "results.md", "results.json"):
        p = os.path.join(workdir, name)
        if os.path.isdir(p):
          shutil.rmtree(p)
        elif os.path.exists(p):
          os.remove(p)
  if is_main_process():
    atomic_write_text(path, json.dumps(new, indent=2, sort_keys=True) + "\n")


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
      atomic_write_text(path, "".join(k + "\n" for k in kept))

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


def _split_validation(train: Dataset, fraction: float, seed: int, path: str):
  """Seeded hold-out of ``fraction`` of the training videos, saved to ``path``."""
  if os.path.exists(path):
    with open(path) as f:
      ids = json.load(f)["validation"]
  else:
    ids = []
    if fraction > 0:
      rng = np.random.default_rng(seed)
      order = rng.permutation(len(train.videos))
      n_val = max(1, int(round(fraction * len(train.videos))))
      ids = sorted(train.videos[i].video_id for i in order[:n_val])
    atomic_write_text(path, json.dumps({"validation": ids, "seed": seed,
                                        "fraction": fraction}, indent=1) + "\n")
  held = set(ids)
  rest = [v for v in train.videos if v.video_id not in held]
  if not rest:
    raise ConfigError("train.validation_fraction leaves no training video")
  val = Dataset(train.class_names, [v for v in train.videos if v.video_id in held])
  return Dataset(train.class_names, rest), (val if val.videos else None)


def prepare_data(config, workdir: str) -> RunData:
  """Loads the dataset, splits it and samples (or reloads) the segment labels."""
  dataset = readers.load_dataset(config.data, workdir=workdir)
  train = dataset.subset(config.data.train_subset, source="data.train_subset")
  test = dataset.subset(config.data.test_subset, source="data.test_subset")
  train, val = _split_validation(train, config.train.validation_fraction, config.seed,
                                 os.path.join(workdir, "splits.json"))
  labels_path = os.path.join(workdir, "segment_labels.npz")
  if os.path.exists(labels_path):
    seg = labels_lib.load_segment_labels(labels_path)
  elif config.labels.mode == "points":
    # Read against the whole dataset: the CSV also names held-out videos.
    seg = readers.read_point_segment_labels(config.labels.points_csv,
                                            config.labels.fps_json, dataset)
    labels_lib.save_segment_labels(labels_path, seg)
  else:
    seg = labels_lib.sample_segment_labels(train, config.labels.mode, config.labels.seed)
    labels_lib.save_segment_labels(labels_path, seg)
  missing = [v.video_id for v in train.videos if v.video_id not in seg.labels]
  if missing:
    raise DataError(f"{labels_path}: no segment labels for training video(s) "
                    f"{missing[:3]}; delete the file to sample labels again")
  return RunData(dataset, train, val, test, seg)


def describe_data(config, workdir: str) -> None:
  """``--mode data``: load the data named by the config and print a summary."""
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  print_data_summary(prepare_data(config, workdir))


def print_data_summary(data: RunData) -> None:
  """Prints the dataset, the splits and the segment labels a run uses."""
  print(data.dataset.summary())
  print(f"train {len(data.train.videos)} | validation "
        f"{len(data.validation.videos) if data.validation else 0} | test {len(data.test.videos)}")
  seg = data.segment_labels
  n_lab = sum(int(u.any(axis=1).sum()) for u in seg.labels.values())
  print(f"segment labels: mode {seg.mode}, seed {seg.seed}, {n_lab} labeled segments, "
        f"{seg.num_clipped} instances clipped at the end of their features, "
        f"{seg.num_dropped} wholly past it")


# ------------------------------------------------------------------- evaluation


def evaluate_params(config, model, params, split: Dataset, *, apply_fn=None,
                    with_cas: bool = False) -> dict:
  """Detections and metrics of ``params`` on ``split``.

  Returns:
    dict with ``predictions`` (ActivityNet results dict), ``table`` (per-class
    detection AP DataFrame), ``summary`` (dict of mAP per threshold and the
    averages, in percent), ``classification_map`` (percent).
  """
  apply_fn = apply_fn or make_apply_fn(model)
  batches = batching.eval_batches(split, batch_size=config.inference.batch_size,
                                  buckets=config.train.length_buckets)
  pred = inference.predict(
      apply_fn, {"params": params}, batches,
      videos={v.video_id: v for v in split.videos}, class_names=split.class_names,
      config_inference=config.inference, topk_ratio=config.loss.topk_ratio,
      return_cas=with_cas)
  gt = split.ground_truth()
  table = evaluation.detection_map(gt, pred, tuple(config.eval.tiou_thresholds),
                                   protocol=config.eval.protocol,
                                   class_names=split.class_names,
                                   feature_rate=config.data.feature_rate)
  summary = summarize(table, config)
  ids = [v.video_id for v in split.videos]
  y = np.stack([v.video_labels(split.num_classes) for v in split.videos])
  scores = np.stack([np.asarray(pred["p_a"][i]) for i in ids])
  summary["cls_mAP"] = 100.0 * evaluation.classification_map(y, scores)
  return {"predictions": pred, "table": table, "summary": summary}


def summarize(table: pd.DataFrame, config) -> dict:
  """mAP (percent) per threshold and the configured averages from a detection table."""
  mean = table.loc["mean"]
  out = {f"mAP@{float(t):g}": 100.0 * float(mean[t]) for t in table.columns}
  for name, lo, hi in config.eval.averages:
    cols = [t for t in table.columns if lo - 1e-9 <= float(t) <= hi + 1e-9]
    if cols:
      out[name] = 100.0 * float(np.mean([mean[t] for t in cols]))
  return out


def selection_score(summary: dict) -> float:
  """The validation number checkpoints are selected by: the mean mAP over thresholds."""
  vals = [v for k, v in summary.items() if k.startswith("mAP@")]
  return float(np.mean(vals))


# ------------------------------------------------------------------ checkpoints


def _managers(workdir: str, config):
  root = os.path.abspath(os.path.join(workdir, "checkpoints"))
  latest = ocp.CheckpointManager(
      os.path.join(root, "latest"),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=config.train.keep_checkpoints, create=True,
          # Distinct barrier names: both managers save the last step.
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix="latest")))
  best = ocp.CheckpointManager(
      os.path.join(root, "best"),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=1, create=True, best_fn=lambda m: m["selection"], best_mode="max",
          keep_checkpoints_without_metrics=False,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix="best")))
  return latest, best


def _restore(manager, step: int, like: Any) -> Any:
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def _bad_terms(bits: int) -> str:
  return ", ".join(n for i, n in enumerate(TERM_NAMES) if bits & (1 << i)) or "unknown"


# ------------------------------------------------------------------- main loop


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
  config_lib.validate(config)
  parallel.initialize_distributed(config)
  mesh = parallel.make_mesh(config.parallel.num_devices)
  config_lib.validate(config, num_devices=mesh.devices.size)
  claim_workdir(config, workdir, overwrite=overwrite)
  data = prepare_data(config, workdir)
  if is_main_process():
    print_data_summary(data)
  num_classes = data.dataset.num_classes
  feature_dim = data.dataset.feature_dim
  model = make_model(config, feature_dim, num_classes)
  optimizer = make_optimizer(config)
  state = parallel.replicate(init_state(config, model, optimizer, feature_dim), mesh)
  latest_mngr, best_mngr = _managers(workdir, config)

  start = 0
  if latest_mngr.latest_step() is not None:
    start = int(latest_mngr.latest_step())
    state = _restore(latest_mngr, start, state)
    print(f"Resumed from {workdir}/checkpoints/latest at step {start}.")
  log = MetricsLog(os.path.join(workdir, "metrics.jsonl"), resume_step=start)

  loader = batching.TrainLoader(
      data.train, data.segment_labels.labels, batch_size=config.train.batch_size,
      max_length=config.train.max_length, buckets=config.train.length_buckets,
      seed=config.seed, crop_mode=config.train.crop_mode)
  on_device, why = device_data_lib.use_device_data(config.train.device_data, data.train)
  if is_main_process():
    print(f"training data on the device: {why}")
  bank = offsets = None
  if on_device:
    host_bank = device_data_lib.build_bank(data.train, data.segment_labels.labels)
    bank, offsets = parallel.replicate(host_bank.arrays(), mesh), host_bank.offsets
    del host_bank
  train_step = make_train_step(config, model, optimizer, device_data=on_device)
  apply_fn = make_apply_fn(model)

  num_steps = config.train.num_steps
  bar = _progress(config, start, num_steps)
  pending: list[dict] = []
  t0 = time.time()
  rows = parallel.process_rows(config.train.batch_size, mesh)
  for step in range(start, num_steps):
    if on_device:
      local = {k: v[rows] for k, v in loader.plan(step, offsets).items()}
      plan = parallel.shard_batch(local, mesh, config.train.batch_size)
      state, metrics = train_step(state, plan, bank)
    else:
      local = {k: v[rows] for k, v in loader.batch(step).items()
               if isinstance(v, np.ndarray)}
      batch = parallel.shard_batch(local, mesh, config.train.batch_size)
      state, metrics = train_step(state, batch)
    pending.append(metrics)
    done = step + 1
    if bar is not None:
      bar.update(1)
    boundary = (done % config.train.log_every == 0 or done == num_steps
                or done % config.train.checkpoint_every == 0
                or done % config.train.eval_every == 0)
    if not boundary:
      continue
    _check_finite(state, config, workdir)
    if done % config.train.log_every == 0 or done == num_steps:
      host = jax.device_get(pending)
      rec = {"step": done, "kind": "train",
             **{k: float(np.mean([m[k] for m in host])) for k in host[0]},
             "skipped": int(state.num_skipped),
             "steps_per_s": len(pending) / max(time.time() - t0, 1e-9)}
      log.write(rec)
      pending, t0 = [], time.time()
      if bar is not None:
        bar.set_postfix(loss=f"{rec['total']:.4f}")
    if data.validation is not None and (done % config.train.eval_every == 0
                                        or done == num_steps):
      res = evaluate_params(config, model, state.params, data.validation, apply_fn=apply_fn)
      score = selection_score(res["summary"])
      log.write({"step": done, "kind": "validation", "selection": score, **res["summary"]})
      best_mngr.save(done, args=ocp.args.StandardSave(state),
                     metrics={"selection": score})
    if done % config.train.checkpoint_every == 0 or done == num_steps:
      # A resume from `done` never redoes this step's validation: the best
      # checkpoint of `done` must be on disk before the latest one can be.
      best_mngr.wait_until_finished()
      latest_mngr.save(done, args=ocp.args.StandardSave(state))
  if bar is not None:
    bar.close()
  latest_mngr.wait_until_finished()
  best_mngr.wait_until_finished()
  if not evaluate:
    return {"final": {}, "selected": {}, "selected_step": int(state.step)}
  return _evaluate_and_report(config, workdir, model, data, state, best_mngr,
                              apply_fn=apply_fn)


def _progress(config, start: int, total: int):
  if not config.train.progress or start >= total:
    return None
  from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, initial=start, desc="train", unit="step",
                   dynamic_ncols=True, file=sys.stderr)


def _check_finite(state: TrainState, config, workdir: str) -> None:
  bad = int(state.first_bad_step)
  if bad < 0:
    return
  if config.train.skip_nonfinite:
    return
  raise NonFiniteError(
      f"non-finite {_bad_terms(int(state.bad_terms))} at step {bad}; training stopped, "
      f"the last good checkpoint is kept in {workdir}/checkpoints/latest. "
      "Lower train.learning_rate, set train.grad_clip_norm, or set "
      "train.skip_nonfinite=True to skip such batches.")


def _evaluate_and_report(config, workdir, model, data: RunData, state: TrainState,
                         best_mngr, *, apply_fn=None) -> dict:
  """Evaluates the final and the selected checkpoint on test and writes results."""
  apply_fn = apply_fn or make_apply_fn(model)  # one compile per bucket for both
  final = evaluate_params(config, model, state.params, data.test, apply_fn=apply_fn)
  selected_step = int(state.step)
  selected = final
  best_step = best_mngr.best_step()
  if best_step is not None and int(best_step) != selected_step:
    best_state = _restore(best_mngr, int(best_step), state)
    selected = evaluate_params(config, model, best_state.params, data.test,
                               apply_fn=apply_fn)
    selected_step = int(best_step)
  write_results(config, workdir, data, final, selected, int(state.step), selected_step)
  return {"final": final["summary"], "selected": selected["summary"],
          "selected_step": selected_step}


def write_results(config, workdir: str, data: RunData, final: dict, selected: dict,
                  final_step: int, selected_step: int) -> None:
  """Writes detections, ``results.csv``, ``results.md`` and ``results.json``."""
  if not is_main_process():
    return
  prov = provenance.collect(config, data.dataset, data.segment_labels, workdir)
  inference.write_detections(os.path.join(workdir, "detections.json"), final["predictions"],
                             provenance={**prov, "checkpoint": "final", "step": final_step})
  inference.write_detections(os.path.join(workdir, "detections_selected.json"),
                             selected["predictions"],
                             provenance={**prov, "checkpoint": "selected",
                                         "step": selected_step})
  rows = pd.DataFrame(
      [{"checkpoint": "final", "step": final_step, **final["summary"]},
       {"checkpoint": "selected", "step": selected_step, **selected["summary"]}]
  ).set_index("checkpoint")
  table = rows.copy()  # the metrics alone, for the markdown and the console
  for key, value in provenance.flat_columns(prov).items():
    rows[key] = value
  protocol = ("ActivityNet protocol (interpolated AP)" if config.eval.protocol == "activitynet"
              else "W-TALC protocol (non-interpolated AP, first match)")
  atomic_write_text(os.path.join(workdir, "results.csv"), rows.round(4).to_csv())
  md = [f"# Results on `{config.data.test_subset}` ({len(data.test.videos)} videos)", "",
        f"Detection mAP (%) at temporal IoU, {protocol}; classification mAP (%) "
        "from the video-level scores. `selected` is the checkpoint with the best mean "
        "mAP on the validation split held out of the training videos "
        "(the test split is never looked at for selection).", "",
        table.round(2).to_markdown(), "",
        "## Provenance", "", "```json", json.dumps(prov, indent=2, sort_keys=True), "```", ""]
  atomic_write_text(os.path.join(workdir, "results.md"), "\n".join(md))
  atomic_write_text(os.path.join(workdir, "results.json"), json.dumps(
      {"final": {"step": final_step, **final["summary"]},
       "selected": {"step": selected_step, **selected["summary"]},
       "per_class_ap_final": final["table"].rename(columns=lambda c: f"{float(c):g}")
       .to_dict(orient="index"),
       "provenance": prov}, indent=2, sort_keys=True) + "\n")
  print(f"\nResults on {config.data.test_subset} ({protocol}), written to {workdir}/results.md")
  print(table.round(2).to_string())


@dataclasses.dataclass
class LoadedRun:
  """A trained run read back from its work directory."""
  config: ml_collections.ConfigDict
  data: RunData
  model: model_lib.SegmentModel
  state: TrainState
  step: int


def load_run(config, workdir: str, *, which: str = "final") -> LoadedRun:
  """Reads a run back: its data, model and the ``"final"`` (latest) or ``"selected"`` state.

  Raises:
    ConfigError: if ``workdir`` holds no run or no such checkpoint.
  """
  if which not in ("final", "selected"):
    raise ValueError(f"load_run: which must be 'final' or 'selected', got {which!r}")
  config_lib.validate(config)
  if not os.path.exists(os.path.join(workdir, "config.json")):
    raise ConfigError(f"{workdir} holds no run (no config.json); train first")
  claim_workdir(config, workdir)
  data = prepare_data(config, workdir)
  model = make_model(config, data.dataset.feature_dim, data.dataset.num_classes)
  state = init_state(config, model, make_optimizer(config), data.dataset.feature_dim)
  latest_mngr, best_mngr = _managers(workdir, config)
  mngr = latest_mngr if which == "final" else best_mngr
  step = mngr.latest_step() if which == "final" else mngr.best_step()
  if step is None and which == "selected":
    mngr, step = latest_mngr, latest_mngr.latest_step()  # no validation split
  if step is None:
    raise ConfigError(f"{workdir}/checkpoints holds no checkpoint; train first")
  return LoadedRun(config, data, model, _restore(mngr, int(step), state), int(step))


def restore_params(config, workdir: str, *, which: str = "final"):
  """The parameters of a run's ``"final"`` or ``"selected"`` checkpoint."""
  return load_run(config, workdir, which=which).state.params


def evaluate_workdir(config, workdir: str) -> dict:
  """``--mode eval``: re-evaluates the final and selected checkpoints of a run.

  Also writes CAS timelines of the first ``config.eval.num_plot_videos`` test
  videos to ``workdir/plots/``.
  """
  run = load_run(config, workdir, which="final")
  _, best_mngr = _managers(workdir, config)
  apply_fn = make_apply_fn(run.model)
  out = _evaluate_and_report(config, workdir, run.model, run.data, run.state, best_mngr,
                             apply_fn=apply_fn)
  if config.eval.num_plot_videos > 0 and is_main_process():
    write_timelines(run, os.path.join(workdir, "plots"), config.eval.num_plot_videos,
                    apply_fn=apply_fn)
  return out


def write_timelines(run: LoadedRun, out_dir: str, num_videos: int, *,
                    apply_fn=None) -> list[str]:
  """CAS timelines (paper Fig. 4/6) of the first ``num_videos`` test videos."""
  from jaxseg import plots  # pylint: disable=g-import-not-at-top
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  videos = run.data.test.videos[:num_videos]
  sub = Dataset(run.data.test.class_names, videos)
  res = evaluate_params(run.config, run.model, run.state.params, sub, with_cas=True,
                        apply_fn=apply_fn)
  paths = []
  for v in videos:
    cas = res["predictions"]["cas"][v.video_id]
    path = os.path.join(out_dir, f"{v.video_id}.png")
    fig = plots.plot_cas_timeline(v, sub.class_names, cas_cls=cas["cas_cls"],
                                  cas_loc=cas["cas_loc"], path=path)
    plt.close(fig)
    paths.append(path)
  return paths
