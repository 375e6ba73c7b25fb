"""Timing, memory and reporting helpers shared by the benchmark scripts."""

from __future__ import annotations

import datetime
import os
import platform
import time
from typing import Callable, Sequence

import jax
import numpy as np
import pandas as pd


def environment() -> dict:
  """The device and versions every result row carries."""
  import flax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  return {"device": f"{dev.platform}:{dev.device_kind}", "num_devices": jax.device_count(),
          "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
          "cpu_count": os.cpu_count(), "python": platform.python_version(),
          "date": datetime.date.today().isoformat()}


def compile_fn(fn: Callable, *args):
  """AOT-compiles ``jax.jit(fn)`` for ``args``; returns (compiled, temp bytes, compile s)."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  seconds = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  temp = int(mem.temp_size_in_bytes) if mem is not None else -1
  return compiled, temp, seconds


def bytes_accessed(compiled) -> float:
  """XLA's estimate of the bytes a compiled program reads and writes (NaN if unknown).

  A device-independent proxy for a memory-bound program's time: divided by a
  GPU's memory bandwidth it gives that program's floor there.
  """
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return float("nan")
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("bytes accessed", float("nan")))


def time_compiled(compiled, *args, warmup: int = 2, repeats: int = 10,
                  min_seconds: float = 0.0) -> dict:
  """Median and spread of wall time (ms) of ``compiled(*args)``, blocking on the result.

  Runs ``warmup`` untimed calls, then at least ``repeats`` timed calls (more
  while their total is under ``min_seconds``).
  """
  for _ in range(warmup):
    jax.block_until_ready(compiled(*args))
  times = []
  start = time.perf_counter()
  while len(times) < repeats or (time.perf_counter() - start) < min_seconds:
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
    if len(times) >= 10 * max(repeats, 1):
      break
  ms = np.asarray(times) * 1e3
  return {"median_ms": float(np.median(ms)), "p10_ms": float(np.percentile(ms, 10)),
          "p90_ms": float(np.percentile(ms, 90)), "repeats": len(ms)}


def matmul_rate(n: int = 4096, dtype=np.float32, repeats: int = 5) -> float:
  """Measured dense matmul throughput (FLOP/s) of the default device at ``n x n``.

  The ``repeats`` products run back to back and are waited for once, so the
  figure is the device's rate, not the per-call dispatch latency.
  """
  a = jax.device_put(np.random.default_rng(0).standard_normal((n, n)).astype(dtype))
  compiled, _, _ = compile_fn(lambda x: x @ x, a)
  jax.block_until_ready(compiled(a))
  t0 = time.perf_counter()
  out = [compiled(a) for _ in range(repeats)]
  jax.block_until_ready(out)
  return 2.0 * n ** 3 * repeats / (time.perf_counter() - t0)


def time_pipelined(step: Callable, steps: int) -> float:
  """Milliseconds per call of ``step()`` dispatched ``steps`` times, waited for once.

  What a training loop sees: the host enqueues the next call while the device
  runs the current one, so per-call dispatch latency is hidden.
  """
  jax.block_until_ready(step())
  t0 = time.perf_counter()
  out = None
  for _ in range(steps):
    out = step()
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / steps * 1e3


def markdown_table(df: pd.DataFrame) -> str:
  """``df`` as a markdown table; without ``tabulate`` (e.g. on a bare GPU image)
  a plain pipe table with the same ``.4g`` numbers."""
  try:
    return df.to_markdown(index=False, floatfmt=".4g")
  except ImportError:
    pass
  def cell(v):
    if isinstance(v, (float, np.floating)):
      return "nan" if np.isnan(v) else f"{v:.4g}"
    return str(v)
  head = "| " + " | ".join(map(str, df.columns)) + " |"
  rule = "|" + "|".join(" --- " for _ in df.columns) + "|"
  body = ["| " + " | ".join(cell(v) for v in row) + " |"
          for row in df.itertuples(index=False)]
  return "\n".join([head, rule, *body])


def write_reports(df: pd.DataFrame, out_dir: str, name: str, title: str,
                  notes: Sequence[str] = ()) -> list[str]:
  """Writes ``<name>.csv`` and ``<name>.md`` under ``out_dir``; returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  csv_path = os.path.join(out_dir, f"{name}.csv")
  md_path = os.path.join(out_dir, f"{name}.md")
  df.to_csv(csv_path, index=False)
  env = environment()
  lines = [f"# {title}", "",
           ", ".join(f"{k}: {v}" for k, v in env.items()), "", *notes, "",
           markdown_table(df), ""]
  with open(md_path, "w") as f:
    f.write("\n".join(lines))
  return [csv_path, md_path]


def plot_scaling(df: pd.DataFrame, out_path: str, *, x: str, series: str,
                 title: str) -> str | None:
  """Time and temporary memory against ``x`` on log-log axes, one line per series.

  Returns the path, or None (with a message) where matplotlib is not installed.
  """
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    print(f"matplotlib is not installed: {out_path} not drawn (the CSV has the data)")
    return None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for key, group in df.groupby(series, sort=False):
    g = group.sort_values(x)
    axes[0].plot(g[x], g["median_ms"], marker="o", label=str(key))
    mem = g["temp_mib"].clip(lower=1e-3)
    axes[1].plot(g[x], mem, marker="o", label=str(key))
  axes[0].set(xscale="log", yscale="log", xlabel=x, ylabel="forward+backward (ms)",
              title="time")
  axes[1].set(xscale="log", yscale="log", xlabel=x, ylabel="XLA temp memory (MiB)",
              title="memory")
  for ax in axes:
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(out_path, dpi=120)
  plt.close(fig)
  return out_path
