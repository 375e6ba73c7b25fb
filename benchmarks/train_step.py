"""Milliseconds per jitted train step (model, four losses, Adam update).

At the paper's shapes (``B=16, D=2048, N=20``, float32) for ``T`` in
{256, 750, 2048} by default (750 is the paper's ``max_length``).
Reports milliseconds per step, segments per second, and the ratio to the floor
set by the FC layers' FLOPs over the device's measured matmul rate
(``4 B T D E + 12 B T E N``, see :func:`fc_flops`; 207 GFLOP at the paper's
shapes).

  python benchmarks/train_step.py                # paper shapes, T = 256, 750, 2048
  python benchmarks/train_step.py --quick        # small CPU smoke run
  python benchmarks/train_step.py --lengths 256 750 2048
  python benchmarks/train_step.py --feed host device   # + the loop with data feeding
  python benchmarks/train_step.py --compute-dtypes float32 bfloat16   # mixed precision
  python benchmarks/train_step.py --breakdown 750      # + where the step's time goes

Writes ``train_step.csv``, ``train_step.md`` and ``train_step.png`` (time and
memory against ``T``; with several lengths) to ``--out`` (default
``benchmarks/out/``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import loss_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxseg import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxseg import state as state_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxseg import train  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxseg.data import batching  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxseg.data import device_data  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxseg.data.labels import sample_segment_labels  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxseg.data.video import Dataset, Instance, Video  # pylint: disable=g-import-not-at-top,wrong-import-position


def fc_flops(b: int, t: int, d: int, e: int, n: int) -> float:
  """Forward+backward FLOPs of the three FC layers (embedding, two heads).

  Each product costs ``2 B T (in x out)`` forward; its backward costs the same
  again for the weight gradient and again for the input gradient, except the
  embedding's: its input is the data, which needs no gradient. So
  ``4 B T D E`` for the embedding and ``3 x 2 B T E 2N`` for the two heads.
  """
  embedding = 2.0 * 2.0 * b * t * d * e
  heads = 3.0 * 2.0 * b * t * e * 2 * n
  return embedding + heads


def _setup(batch: int, length: int, dim: int, classes: int, method: str,
           compute_dtype: str, dropout_rng: str):
  """The base config with these choices, its model, optimizer, state and a device batch."""
  c = config_lib.base_config()
  c.model.localization_embedding = "shared"  # the paper's network (Fig. 3), as fc_flops counts
  c.loss.loc_classification_weight = 0.0  # and its loss: eq. 2-4 on C_cls only
  c.loss.propagation_method = method
  c.model.compute_dtype = compute_dtype
  c.model.dropout_rng = dropout_rng
  model = state_lib.make_model(c, dim, classes)
  optimizer = state_lib.make_optimizer(c)
  state = state_lib.init_state(c, model, optimizer, dim)
  x = loss_throughput.make_inputs(batch, length, dim, classes)
  b = {k: jax.device_put(x[k]) for k in ("features", "mask", "lengths", "video_labels",
                                         "segment_labels", "num_labeled")}
  return c, model, optimizer, state, b


def measure(batch: int, length: int, dim: int, classes: int, repeats: int,
            method: str = "fused", compute_dtype: str = "float32",
            dropout_rng: str = "threefry2x32") -> dict:
  """One step's latency (``median_ms``: called and waited for, one at a time)
  and throughput (``pipelined_ms``: steps dispatched back to back, as the
  training loop runs them)."""
  c, model, optimizer, state, b = _setup(batch, length, dim, classes, method, compute_dtype,
                                         dropout_rng)
  step = train.make_train_step(c, model, optimizer)
  lowered = step.lower(state, b)
  compiled = lowered.compile()
  mem = compiled.memory_analysis()
  # The step donates its state: thread it through the timed calls.
  holder = {"state": state}

  def call(batch_):
    holder["state"], metrics = compiled(holder["state"], batch_)
    return metrics

  timing = common.time_compiled(call, b, repeats=repeats)
  timing["pipelined_ms"] = common.time_pipelined(lambda: call(b), 5 * repeats)
  return {"method": method, "compute_dtype": compute_dtype, "dropout_rng": dropout_rng,
          "B": batch, "T": length, "D": dim, "N": classes, **timing,
          "temp_mib": (mem.temp_size_in_bytes / 2 ** 20) if mem is not None else np.nan,
          "segments_per_s": batch * length / (timing["median_ms"] * 1e-3)}


def breakdown(batch: int, length: int, dim: int, classes: int, repeats: int,
              compute_dtype: str = "float32", method: str = "fused",
              dropout_rng: str = "threefry2x32") -> list[dict]:
  """Where the step's time goes: its parts compiled and timed on their own.

  ``forward``: the network in training mode; ``network fwd+bwd``: the gradient
  of a trivial function of its outputs (the FC layers' work alone);
  ``losses fwd+bwd``: the four loss terms and their gradient with respect to
  the network's outputs; ``loss_fn fwd+bwd``: both together, as in the step;
  ``step``: that plus the gradient norm, the finiteness checks and the Adam
  update; ``dropout mask``: the ``(B, T, E)`` random bits alone; one row per
  loss term (its value and gradient with respect to the network's outputs).
  Differences between rows bound what each part costs.
  """
  from jaxseg import losses  # pylint: disable=g-import-not-at-top
  c, model, _, state, b = _setup(batch, length, dim, classes, method, compute_dtype,
                                 dropout_rng)
  kwargs = c.loss.to_dict()
  key = jax.random.key(0, impl=dropout_rng)
  apply = lambda p: model.apply({"params": p}, b["features"], b["mask"], deterministic=False,
                                rngs={"dropout": key})
  loss_of = lambda out, w: losses.total_loss(out, b, weight=w, **kwargs)[0]
  outs = jax.jit(apply)(state.params)
  parts = {
      "forward": (apply, state.params),
      "network fwd+bwd": (jax.grad(lambda p: sum(jnp.sum(v) for v in apply(p).values())),
                          state.params),
      "losses fwd+bwd": (jax.grad(loss_of, argnums=(0, 1)), outs,
                         state.params["sphere_weight"]),
      "loss_fn fwd+bwd": (jax.grad(lambda p: loss_of(apply(p), p["sphere_weight"])),
                          state.params),
      "dropout mask": (lambda k: jax.random.bernoulli(k, 0.3, (batch, length, dim)), key),
  }
  for term in ("classification", "segment", "sphere", "propagation"):
    only = dict(kwargs, **{f"use_{t}": t == term for t in
                           ("classification", "segment", "sphere", "propagation")})
    parts[f"{term} fwd+bwd"] = (
        jax.grad(lambda out, w, only=only: losses.total_loss(out, b, weight=w, **only)[0],
                 argnums=(0, 1)), outs, state.params["sphere_weight"])
  rows = []
  for name, (fn, *args) in parts.items():
    compiled, temp, _ = common.compile_fn(fn, *args)
    t = common.time_compiled(compiled, *args, repeats=repeats)
    t["pipelined_ms"] = common.time_pipelined(lambda: compiled(*args), 5 * repeats)
    rows.append({"part": name, "compute_dtype": compute_dtype, "dropout_rng": dropout_rng,
                 "method": method, "T": length, **t, "temp_mib": temp / 2 ** 20})
  full = measure(batch, length, dim, classes, repeats, method, compute_dtype, dropout_rng)
  rows.append({"part": "step", "compute_dtype": compute_dtype, "dropout_rng": dropout_rng,
               "method": method, "T": length,
               **{k: full[k] for k in ("median_ms", "p10_ms", "p90_ms", "repeats",
                                       "pipelined_ms", "temp_mib")}})
  return rows


def synthetic_train_set(num_videos: int, dim: int, classes: int, seed: int = 0):
  """THUMOS14-like lengths (200 to 2500 segments), random features, one-segment labels."""
  rng = np.random.default_rng(seed)
  videos = []
  for k in range(num_videos):
    t = int(rng.integers(200, 2501))
    start = float(rng.uniform(0, t * 0.5))
    inst = [Instance(start, start + t * 0.2, int(rng.integers(classes)))]
    feats = rng.standard_normal((t, dim), dtype=np.float32)
    videos.append(Video(f"v{k}", "validation", feats, 1.0, float(t), inst))
  ds = Dataset([f"class{i}" for i in range(classes)], videos)
  return ds, sample_segment_labels(ds, "one-segment", seed=0).labels


def measure_loop(feed: str, batch: int, dim: int, classes: int, steps: int,
                 num_videos: int, compute_dtype: str = "float32") -> dict:
  """Milliseconds per step of the training loop, batch making and feeding included.

  ``feed="host"``: ``TrainLoader.batch`` stacks each batch on the host and it
  is copied to the device; ``"device"``: the features live on the device
  (``train.device_data``) and each step sends ``TrainLoader.plan``'s indices.
  Dispatch is asynchronous in both, so the host prepares step ``s + 1`` while
  the device runs step ``s``; the loop is as slow as the slower of the two.
  ``prepare_and_copy_ms``: the host's part alone (make one batch or plan and
  copy it to the device; mean of 5 after one untimed call), timed before the loop.
  """
  c = config_lib.base_config()
  c.model.localization_embedding = "shared"  # the paper's network (Fig. 3)
  c.loss.loc_classification_weight = 0.0  # and its loss: eq. 2-4 on C_cls only
  c.model.compute_dtype = compute_dtype
  ds, labels = synthetic_train_set(num_videos, dim, classes)
  loader = batching.TrainLoader(ds, labels, batch_size=batch, max_length=c.train.max_length,
                                buckets=c.train.length_buckets, seed=0, crop_mode="uniform",
                                subsample="uniform")
  model = state_lib.make_model(c, dim, classes)
  optimizer = state_lib.make_optimizer(c)
  state = state_lib.init_state(c, model, optimizer, dim)
  on_device = feed == "device"
  step_fn = train.make_train_step(c, model, optimizer, on_device=on_device)
  if on_device:
    host_bank = device_data.build_bank(ds, labels)
    bank, offsets = (jax.device_put(host_bank.arrays()),), host_bank.offsets
    del host_bank
    prepare = lambda s: loader.plan(s, offsets)
  else:
    bank, prepare = (), loader.batch
  run_step = lambda st, s: step_fn(st, jax.device_put(prepare(s)), *bank)
  jax.block_until_ready(jax.device_put(prepare(0)))  # untimed: first allocations
  t0 = time.perf_counter()
  for s in range(1, 6):
    jax.block_until_ready(jax.device_put(prepare(s)))
  host_ms = (time.perf_counter() - t0) / 5 * 1e3
  # Compile every padded length the timed steps use before timing them: one
  # untimed step per distinct bucket (a compile inside the loop would cost more
  # than the whole loop on a GPU).
  timed = range(1, 1 + steps)
  starts = device_data.video_offsets(ds)
  first_of_length = {}
  for s in timed:
    first_of_length.setdefault(loader.plan(s, starts)["mask"].shape[1], s)
  for s in [0, *first_of_length.values()]:
    state, _ = run_step(state, s)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for s in timed:
    state, metrics = run_step(state, s)
  jax.block_until_ready((state, metrics))
  ms = (time.perf_counter() - t0) / steps * 1e3
  return {"feed": feed, "compute_dtype": compute_dtype, "B": batch, "D": dim, "N": classes,
          "videos": num_videos,
          "steps": steps, "ms_per_step": ms, "prepare_and_copy_ms": host_ms}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--lengths", type=int, nargs="+", default=None,
                 help="T values (default 256 750 2048; with --quick 64 128)")
  p.add_argument("--dim", type=int, default=2048)
  p.add_argument("--classes", type=int, default=20)
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--methods", nargs="+", default=["fused"],
                 choices=loss_throughput.METHODS)
  p.add_argument("--compute-dtypes", nargs="+", default=["float32"],
                 choices=list(config_lib.COMPUTE_DTYPES),
                 help="model.compute_dtype values to time (bfloat16: mixed precision)")
  p.add_argument("--feed", nargs="*", default=[], choices=["host", "device"],
                 help="also time the training loop with batches made on the host and "
                      "copied, or gathered from device-resident features (train.device_data)")
  p.add_argument("--dropout-rngs", nargs="+", default=["threefry2x32"],
                 choices=list(config_lib.DROPOUT_RNGS),
                 help="model.dropout_rng values to time")
  p.add_argument("--breakdown", type=int, default=0, metavar="T",
                 help="also time the step's parts (network, losses, update) at this T")
  p.add_argument("--loop-steps", type=int, default=30)
  p.add_argument("--loop-videos", type=int, default=100,
                 help="videos of the synthetic training set of the --feed loop")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
  args = p.parse_args(argv)
  if args.quick:
    args.batch, args.dim, args.repeats = 2, 32, 3
    args.lengths = args.lengths or [64, 128]
    args.loop_steps, args.loop_videos = 4, 6
    args.breakdown = 64 if args.breakdown else 0
  args.lengths = args.lengths or [256, 750, 2048]
  on_cpu = jax.default_backend() == "cpu"
  matmul_n = 512 if args.quick else (4096 if on_cpu else 8192)
  rates = {d: common.matmul_rate(matmul_n, dtype=jnp.dtype(d))
           for d in args.compute_dtypes}
  rows = []
  partial = os.path.join(args.out, "train_step.partial.csv")
  for dtype in args.compute_dtypes:
    for rng in args.dropout_rngs:
      for method in args.methods:
        for t in args.lengths:
          r = measure(args.batch, t, args.dim, args.classes, args.repeats, method, dtype, rng)
          floor_ms = (fc_flops(args.batch, t, args.dim, args.dim, args.classes)
                      / rates[dtype] * 1e3)
          r.update(fc_floor_ms=floor_ms, ratio_to_floor=r["median_ms"] / floor_ms,
                   pipelined_ratio_to_floor=r["pipelined_ms"] / floor_ms,
                   case=f"{method}, {dtype}, {rng}")
          rows.append(r)
          # Kept if a time limit stops the run; removed once the reports are written.
          os.makedirs(args.out, exist_ok=True)
          pd.DataFrame(rows).to_csv(partial, index=False)
          print(f"{method:>10} {dtype:>8} {rng:>12} T={t:5d}: {r['median_ms']:8.3f} ms/step "
                f"({r['pipelined_ms']:.3f} pipelined), {r['segments_per_s']:.3g} segments/s, "
                f"{r['ratio_to_floor']:.2f}x ({r['pipelined_ratio_to_floor']:.2f}x) the FC floor",
                flush=True)
  df = pd.DataFrame(rows)
  if args.breakdown:
    parts = pd.DataFrame([r for dtype in args.compute_dtypes for rng in args.dropout_rngs
                          for r in breakdown(args.batch, args.breakdown, args.dim,
                                             args.classes, args.repeats, dtype,
                                             args.methods[0], rng)])
    for r in parts.itertuples():
      print(f"{r.compute_dtype:>8} {r.dropout_rng:>12} {r.part:>22}: {r.median_ms:8.3f} ms "
            f"({r.pipelined_ms:.3f} pipelined)", flush=True)
    common.write_reports(parts, args.out, "train_step_breakdown",
                         f"Train step, part by part (B={args.batch}, T={args.breakdown})")
  notes = [f"- measured {d} matmul rate ({matmul_n}^3, back to back): "
           f"{r / 1e12:.3f} TFLOP/s" for d, r in rates.items()]
  if args.feed:
    loop_dtype = args.compute_dtypes[-1]
    loop = pd.DataFrame([measure_loop(f, args.batch, args.dim, args.classes, args.loop_steps,
                                      args.loop_videos, loop_dtype) for f in args.feed])
    for r in loop.itertuples():
      print(f"training loop, {r.feed} feed: {r.ms_per_step:9.3f} ms/step", flush=True)
    notes.append(f"- training loop ({loop_dtype} compute, batch making and feeding included, "
                 f"synthetic set of {args.loop_videos} videos of 200-2500 segments, "
                 "max_length 750):")
    notes.extend(f"  - {r.feed} feed: {r.ms_per_step:.4g} ms/step (making and copying one "
                 f"batch or plan alone: {r.prepare_and_copy_ms:.3g} ms)"
                 for r in loop.itertuples())
    if {"host", "device"} <= set(args.feed):
      by = loop.set_index("feed")["ms_per_step"]
      notes.append(f"  - host / device feed: {by['host'] / by['device']:.2f}x")
    common.write_reports(loop, args.out, "train_loop", "Training loop with feeding", notes)
  paths = common.write_reports(df, args.out, "train_step", "Jitted train step", notes)
  os.remove(partial)
  if len(args.lengths) > 1:
    paths.append(common.plot_scaling(df, os.path.join(args.out, "train_step.png"), x="T",
                                     series="case", title="train step"))
  print("wrote", ", ".join(path for path in paths if path))
  return df


if __name__ == "__main__":
  main()
