"""The benchmark scripts run (``--quick``) and write their reports. Not timed."""

import os

import numpy as np
import pandas as pd
import pytest

from benchmarks import loss_throughput
from benchmarks import train_step

# End-to-end: trains, runs subprocesses or full-size networks (pytest -m "not slow"
# skips the module).
pytestmark = pytest.mark.slow


def test_fc_flops_counts_the_three_layers():
  # Embedding: forward and weight gradient (the data needs no gradient); each
  # head: forward, weight and input gradients.
  expected = 2 * (2 * 2 * 64 * 32 * 32) + 2 * 3 * (2 * 2 * 64 * 32 * 20)
  assert train_step.fc_flops(2, 64, 32, 32, 20) == expected
  assert round(train_step.fc_flops(16, 750, 2048, 2048, 20) / 1e9) == 207


def test_reports_without_tabulate_or_matplotlib(tmp_path, monkeypatch):
  """A bare GPU image may lack both: the tables are still written, the plot skipped."""
  import builtins
  from benchmarks import common
  df = pd.DataFrame({"loss": ["fused", "naive"], "T": [64, 64],
                     "median_ms": [1.23456, np.nan], "temp_mib": [0.5, 2.0]})
  real_import = builtins.__import__

  def no_matplotlib(name, *args, **kwargs):
    if name.split(".")[0] == "matplotlib":
      raise ImportError(f"No module named {name!r}")
    return real_import(name, *args, **kwargs)

  def no_tabulate(*args, **kwargs):  # what pandas raises without tabulate
    raise ImportError("Missing optional dependency 'tabulate'.")

  monkeypatch.setattr(builtins, "__import__", no_matplotlib)
  monkeypatch.setattr(pd.DataFrame, "to_markdown", no_tabulate)
  assert common.plot_scaling(df, str(tmp_path / "x.png"), x="T", series="loss",
                             title="t") is None
  csv_path, md_path = common.write_reports(df, str(tmp_path), "r", "Title")
  text = open(md_path).read()
  assert "| loss | T | median_ms | temp_mib |" in text
  assert "| fused | 64 | 1.235 | 0.5 |" in text and "| naive | 64 | nan | 2 |" in text
  assert pd.read_csv(csv_path).shape == (2, 4)
  assert not os.path.exists(tmp_path / "x.png")


def test_loss_throughput_records_a_failed_case_and_goes_on(tmp_path, monkeypatch):
  from benchmarks import common
  real = common.compile_fn

  def oom_for_naive(fn, *args):
    if args[0].shape[1] == 32 and fn.__qualname__.startswith("propagation_fn"):
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
    return real(fn, *args)

  monkeypatch.setattr(common, "compile_fn", oom_for_naive)
  df = loss_throughput.run(1, [32, 48], 8, 3, 2, ["naive", "fused"], include_total=False,
                           partial_csv=str(tmp_path / "p.csv"))
  notes = df.set_index(["loss", "T"])["note"]
  assert notes["naive", 32] == "skipped: out of memory"
  assert notes["fused", 32] == "skipped: out of memory"
  assert notes["naive", 48] == "" and notes["fused", 48] == ""
  assert len(pd.read_csv(tmp_path / "p.csv")) == 4


def test_device_check_script_quick(tmp_path):
  """The one-call GPU script runs end to end (small shapes, on the CPU here)."""
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "QUICK": "1", "OUT": str(tmp_path), "PYTHON": sys.executable,
         # Its timings are not looked at: XLA compiles without optimizing (about half
         # the compile time, which is most of the run), and a program compiled twice
         # (the breakdown's whole step) comes from a compilation cache.
         "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "")
                       + " --xla_backend_optimization_level=0").strip(),
         "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla-cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
  proc = subprocess.run(["bash", os.path.join(root, "benchmarks", "device_check.sh")],
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  for part in ("train_step", "loss_throughput", "loss_throughput (dot)"):
    assert f"{part} exit: 0" in proc.stdout, part
  # loss_throughput.py --quick: every form of eq. 13 and the four-term loss, reports written.
  for name in ("loss_throughput.csv", "loss_throughput.md", "loss_throughput.png",
               "train_step.csv", "train_step.md"):
    assert os.path.getsize(tmp_path / name) > 0, name
  saved = pd.read_csv(tmp_path / "loss_throughput.csv")
  assert set(saved["loss"]) == {"naive", "dense", "factorized", "fused",
                                "total (4 terms, fused)"}
  assert np.all(saved["median_ms"] > 0)
  assert np.all(saved["xla_bytes_gib"] > 0)
  # Memory: the naive form's temporaries grow with T^2, the factorized forms' do not.
  mem = saved.pivot(index="T", columns="loss", values="temp_mib")
  assert mem.loc[256, "naive"] / mem.loc[64, "naive"] > 8
  for method in ("factorized", "fused"):
    assert mem.loc[256, method] < mem.loc[256, "naive"] / 50
  dot = pd.read_csv(tmp_path / "dot" / "loss_throughput.csv")
  assert set(dot["loss"]) == {"factorized", "fused"} and set(dot["similarity"]) == {"dot"}
  env_txt = (tmp_path / "env.txt").read_text()
  assert "jax " + __import__("jax").__version__ in env_txt
  steps = pd.read_csv(tmp_path / "train_step.csv")
  assert set(zip(steps["method"], steps["compute_dtype"])) == {
      (m, d) for m in ("fused", "factorized") for d in ("float32", "bfloat16")}
  assert np.all(steps["median_ms"] > 0) and np.all(steps["pipelined_ms"] > 0)
  assert np.all(steps["ratio_to_floor"] > 0)
  assert not (tmp_path / "train_step.partial.csv").exists()
  parts = pd.read_csv(tmp_path / "train_step_breakdown.csv")
  assert {"forward", "network fwd+bwd", "sphere fwd+bwd", "step"} <= set(parts["part"])
  assert "torch_reference" in proc.stdout or "PyTorch is not installed" in proc.stdout
  loop = pd.read_csv(tmp_path / "train_loop.csv")
  assert list(loop["feed"]) == ["host", "device"] and np.all(loop["ms_per_step"] > 0)
  assert np.all(loop["prepare_and_copy_ms"] > 0)
  loss = pd.read_csv(tmp_path / "loss_throughput.csv")
  assert np.all(loss["median_ms"] > 0)
  assert not (tmp_path / "loss_throughput.partial.csv").exists()


def test_end_to_end_quick_times_every_phase(tmp_path):
  """The whole run, phase by phase: every phase timed, the phases partition the total."""
  from benchmarks import end_to_end
  out, data = tmp_path / "out", tmp_path / "data"
  df = end_to_end.main(["--quick", "--out", str(out), "--data", str(data)])
  saved = pd.read_csv(out / "end_to_end.csv")
  assert (out / "end_to_end.md").stat().st_size > 0
  phases = saved[saved["kind"] == "phase"]
  assert list(phases["phase"]) == list(end_to_end.ROW_ORDER)
  assert np.all(saved["seconds"] >= 0) and np.all(saved["count"] >= 0)
  total = saved.loc[saved["kind"] == "total", "seconds"].item()
  assert total > 0
  assert abs(phases["share"].sum() - 1.0) < 1e-6
  assert abs(phases["seconds"].sum() - total) < 1e-6 * total
  counts = phases.set_index("phase")["count"]
  assert counts["compilation + first step"] >= 1
  assert counts["training"] + counts["compilation + first step"] == end_to_end.QUICK_STEPS
  assert counts["validation during training"] == 2  # eval_every: half the steps
  assert counts["test mAP"] >= 1 and counts["writing results"] == 1
  assert len(df) == len(saved)
  assert (out / "run" / "results.json").exists()
