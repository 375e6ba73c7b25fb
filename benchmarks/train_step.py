"""Milliseconds per jitted train step (model, four losses, Adam update).

At the paper's shapes (``B=16, T=750, D=2048, N=20``, float32) by default.
Reports milliseconds per step, segments per second, and the ratio to the floor
set by the FC layers' FLOPs over the device's measured matmul rate (forward
``2 B T (D E + 2 E N)`` FLOPs, backward twice that).

  python benchmarks/train_step.py                # paper shapes
  python benchmarks/train_step.py --quick        # small CPU smoke run
  python benchmarks/train_step.py --lengths 256 750 2048

Writes ``train_step.csv`` and ``train_step.md`` (and ``train_step.png`` for
several lengths) to ``--out`` (default ``benchmarks/out/``).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import loss_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxseg import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxseg import train  # pylint: disable=g-import-not-at-top,wrong-import-position


def fc_flops(b: int, t: int, d: int, e: int, n: int) -> float:
  """Forward+backward FLOPs of the three FC layers (embedding, two heads)."""
  forward = 2.0 * b * t * (d * e + 2 * e * n)
  return 3.0 * forward


def measure(batch: int, length: int, dim: int, classes: int, repeats: int,
            method: str = "fused") -> dict:
  c = config_lib.base_config()
  c.loss.propagation_method = method
  model = train.make_model(c, dim, classes)
  optimizer = train.make_optimizer(c)
  state = train.init_state(c, model, optimizer, dim)
  step = train.make_train_step(c, model, optimizer)
  x = loss_throughput.make_inputs(batch, length, dim, classes)
  b = {k: jax.device_put(x[k]) for k in ("features", "mask", "lengths", "video_labels",
                                         "segment_labels", "num_labeled")}
  lowered = step.lower(state, b)
  compiled = lowered.compile()
  mem = compiled.memory_analysis()
  # The step donates its state: thread it through the timed calls.
  holder = {"state": state}

  def call(batch_):
    holder["state"], metrics = compiled(holder["state"], batch_)
    return metrics

  timing = common.time_compiled(call, b, repeats=repeats)
  return {"method": method, "B": batch, "T": length, "D": dim, "N": classes, **timing,
          "temp_mib": (mem.temp_size_in_bytes / 2 ** 20) if mem is not None else np.nan,
          "segments_per_s": batch * length / (timing["median_ms"] * 1e-3)}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--lengths", type=int, nargs="+", default=[750])
  p.add_argument("--dim", type=int, default=2048)
  p.add_argument("--classes", type=int, default=20)
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--methods", nargs="+", default=["fused"],
                 choices=loss_throughput.METHODS)
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
  args = p.parse_args(argv)
  if args.quick:
    args.batch, args.lengths, args.dim, args.repeats = 2, [64, 128], 32, 3
  rate = common.matmul_rate(512 if args.quick else 4096)
  rows = []
  for method in args.methods:
    for t in args.lengths:
      r = measure(args.batch, t, args.dim, args.classes, args.repeats, method)
      floor_ms = fc_flops(args.batch, t, args.dim, args.dim, args.classes) / rate * 1e3
      r.update(fc_floor_ms=floor_ms, ratio_to_floor=r["median_ms"] / floor_ms)
      rows.append(r)
      print(f"{method:>10} T={t:5d}: {r['median_ms']:9.3f} ms/step, "
            f"{r['segments_per_s']:.3g} segments/s, {r['ratio_to_floor']:.1f}x the FC floor",
            flush=True)
  df = pd.DataFrame(rows)
  notes = [f"- measured float32 matmul rate: {rate / 1e12:.3f} TFLOP/s"]
  paths = common.write_reports(df, args.out, "train_step", "Jitted train step", notes)
  if len(args.lengths) > 1:
    paths.append(common.plot_scaling(df, os.path.join(args.out, "train_step.png"), x="T",
                                     series="method", title="train step"))
  print("wrote", ", ".join(path for path in paths if path))
  return df


if __name__ == "__main__":
  main()
