"""Train-step throughput against the number of data-parallel devices.

The same global batch (``--batch`` videos of ``T`` segments) is split over
``n`` devices for each ``n`` in ``--devices`` (default 1, 2, 4, 8, ... up to
the devices present, keeping those that divide the batch): the state is
replicated, the batch sharded along ``data`` (:mod:`jaxseg.parallel`), and the
jitted train step of :mod:`jaxseg.train` (model, four losses, Adam update) is
timed on device-resident inputs. The first step from the same initial state
must give the same losses and gradient norm for every ``n`` (up to the order
of float32 sums); the script fails otherwise.

Reports milliseconds per step, segments per second, the speed-up and parallel
efficiency against ``n = 1``, XLA's temporary memory per device, and the time
to shard a host batch onto the devices (``shard_ms``, host to device copy).

  python benchmarks/scaling.py                               # all local devices
  python benchmarks/scaling.py --quick --fake-cpu-devices 8  # correctness on a CPU

``--fake-cpu-devices n`` makes JAX's CPU backend expose ``n`` devices (it
sets ``XLA_FLAGS=--xla_force_host_platform_device_count=n`` and
``JAX_PLATFORMS=cpu`` before JAX starts). They share the machine's cores, so
their timings test the code path, not the speed-up. Writes ``scaling.csv`` and
``scaling.md`` to ``--out`` (default ``benchmarks/out/``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

# No JAX import at module level: --fake-cpu-devices must act before JAX starts.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TERMS = ("classification", "segment", "sphere", "propagation", "total", "grad_norm")


def use_fake_cpu_devices(n: int) -> None:
  """Asks JAX's CPU backend for ``n`` devices; must run before JAX starts.

  Raises:
    SystemExit: if JAX already started with fewer devices.
  """
  if "jax" not in sys.modules:
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "",
                   os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    return
  import jax  # pylint: disable=g-import-not-at-top
  try:
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:
    pass  # the backend is up already; checked below
  if jax.devices()[0].platform != "cpu" or jax.device_count() < n:
    raise SystemExit(f"--fake-cpu-devices {n}: JAX already started with "
                     f"{jax.device_count()} {jax.devices()[0].platform} device(s); "
                     "run this script in a fresh process")


def default_device_counts(available: int, batch: int) -> list[int]:
  """1, 2, 4, ... up to ``available``, plus ``available``; those dividing ``batch``."""
  counts, n = [], 1
  while n <= available:
    counts.append(n)
    n *= 2
  if available not in counts:
    counts.append(available)
  return [n for n in counts if batch % n == 0]


def measure(num_devices: int, batch: int, length: int, dim: int, classes: int,
            repeats: int) -> dict:
  """One row: first-step metrics and the timing of the train step on ``num_devices``."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  from benchmarks import loss_throughput  # pylint: disable=g-import-not-at-top
  from jaxseg import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxseg import config_checks  # pylint: disable=g-import-not-at-top
  from jaxseg import parallel  # pylint: disable=g-import-not-at-top
  from jaxseg import state as state_lib  # pylint: disable=g-import-not-at-top
  from jaxseg import train  # pylint: disable=g-import-not-at-top

  c = config_lib.base_config()
  c.model.localization_embedding = "shared"  # the paper's network (Fig. 3)
  c.loss.loc_classification_weight = 0.0  # and its loss: eq. 2-4 on C_cls only
  c.train.batch_size = batch
  c.parallel.num_devices = num_devices
  config_checks.validate(c, num_devices=num_devices)
  mesh = parallel.make_mesh(num_devices)
  model = state_lib.make_model(c, dim, classes)
  optimizer = state_lib.make_optimizer(c)
  state = parallel.replicate(state_lib.init_state(c, model, optimizer, dim), mesh)
  step = train.make_train_step(c, model, optimizer)
  x = loss_throughput.make_inputs(batch, length, dim, classes)
  host = {k: x[k] for k in ("features", "mask", "lengths", "video_labels",
                            "segment_labels", "num_labeled")}
  rows = parallel.process_rows(batch, mesh)
  local = {k: v[rows] for k, v in host.items()}
  shard = lambda b: parallel.shard_batch(b, mesh, batch)
  sharded = shard(local)
  compiled = step.lower(state, sharded).compile()
  mem = compiled.memory_analysis()
  # The step donates its state: thread it through the calls.
  holder = {"state": state}

  def call(b):
    holder["state"], metrics = compiled(holder["state"], b)
    return metrics

  first = {k: float(v) for k, v in jax.device_get(call(sharded)).items()}
  timing = common.time_compiled(call, sharded, repeats=repeats)
  shard_timing = common.time_compiled(shard, local, warmup=1, repeats=repeats)
  return {"devices": num_devices, "B": batch, "B_per_device": batch // num_devices,
          "T": length, "D": dim, "N": classes, **timing,
          "segments_per_s": batch * length / (timing["median_ms"] * 1e-3),
          "temp_mib_per_device": (mem.temp_size_in_bytes / 2 ** 20) if mem else float("nan"),
          "shard_ms": shard_timing["median_ms"],
          **{f"loss_{k}": first[k] for k in TERMS}}


def check_losses_match(rows: list[dict], rtol: float) -> float:
  """The largest relative difference of the first-step terms to the first row's.

  Raises:
    SystemExit: if it exceeds ``rtol``.
  """
  ref = rows[0]
  worst = 0.0
  for r in rows:
    for k in TERMS:
      a, b = ref[f"loss_{k}"], r[f"loss_{k}"]
      diff = abs(a - b) / max(abs(a), 1e-30)
      r.setdefault("max_rel_diff", 0.0)
      r["max_rel_diff"] = max(r["max_rel_diff"], diff)
      worst = max(worst, diff)
  if worst > rtol:
    bad = [(r["devices"], r["max_rel_diff"]) for r in rows if r["max_rel_diff"] > rtol]
    raise SystemExit(f"first-step losses differ across device counts beyond rtol={rtol}: "
                     f"(devices, max relative difference) {bad}")
  return worst


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="small shapes, few repeats")
  p.add_argument("--fake-cpu-devices", type=int, default=0,
                 help="expose this many CPU devices (before JAX starts)")
  p.add_argument("--devices", type=int, nargs="+", default=None,
                 help="device counts to measure (default: 1, 2, 4, ... available)")
  p.add_argument("--batch", type=int, default=16, help="global batch B (same for every n)")
  p.add_argument("--length", type=int, default=750)
  p.add_argument("--dim", type=int, default=2048)
  p.add_argument("--classes", type=int, default=20)
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--rtol", type=float, default=1e-4,
                 help="largest relative difference of the first-step losses allowed")
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "out"))
  args = p.parse_args(argv)
  if args.quick:
    args.batch, args.length, args.dim, args.classes, args.repeats = 8, 64, 32, 4, 3
  if args.fake_cpu_devices:
    use_fake_cpu_devices(args.fake_cpu_devices)

  import jax  # pylint: disable=g-import-not-at-top
  import pandas as pd  # pylint: disable=g-import-not-at-top
  from benchmarks import common  # pylint: disable=g-import-not-at-top

  available = jax.device_count()
  counts = args.devices or default_device_counts(available, args.batch)
  for n in counts:
    if n > available or args.batch % n:
      raise SystemExit(f"--devices {n}: {available} device(s) available, batch {args.batch}")
  rows = []
  for n in counts:
    r = measure(n, args.batch, args.length, args.dim, args.classes, args.repeats)
    rows.append(r)
    print(f"{n} device(s): {r['median_ms']:9.3f} ms/step, {r['segments_per_s']:.3g} "
          f"segments/s, loss {r['loss_total']:.6f}", flush=True)
  worst = check_losses_match(rows, args.rtol)
  for r in rows:  # against the first (smallest) device count
    r["speedup"] = rows[0]["median_ms"] / r["median_ms"]
    r["efficiency"] = r["speedup"] * rows[0]["devices"] / r["devices"]
  df = pd.DataFrame(rows)
  dev = jax.devices()[0]
  notes = [f"- global batch B={args.batch}, T={args.length}, D={args.dim}, N={args.classes}; "
           "state replicated, batch sharded over the `data` axis; timed on "
           "device-resident batches (`shard_ms`: host batch to devices, separately)",
           f"- speedup and efficiency against {rows[0]['devices']} device(s); first-step "
           f"losses agree across device counts within {worst:.2e} (relative)"]
  if args.fake_cpu_devices:
    notes.append(f"- {args.fake_cpu_devices} fake CPU devices sharing {os.cpu_count()} "
                 "core(s): a correctness run, the timings do not measure a speed-up")
  elif dev.platform == "cpu":
    notes.append("- CPU devices: timings do not measure a multi-accelerator speed-up")
  cols = ["devices", "B", "B_per_device", "T", "D", "N", "median_ms", "p10_ms", "p90_ms",
          "segments_per_s", "speedup", "efficiency", "temp_mib_per_device", "shard_ms",
          "loss_total", "loss_grad_norm", "max_rel_diff", "repeats"]
  paths = common.write_reports(df[cols], args.out, "scaling",
                               "Train-step throughput against data-parallel devices", notes)
  print("wrote", ", ".join(paths))
  return df


if __name__ == "__main__":
  main()
