"""The benchmark scripts run (``--quick``) and write their reports. Not timed."""

import os

import numpy as np
import pandas as pd

from benchmarks import loss_throughput
from benchmarks import train_step


def test_loss_throughput_quick(tmp_path):
  df = loss_throughput.main(["--quick", "--out", str(tmp_path)])
  for name in ("loss_throughput.csv", "loss_throughput.md", "loss_throughput.png"):
    assert os.path.getsize(tmp_path / name) > 0
  saved = pd.read_csv(tmp_path / "loss_throughput.csv")
  assert set(saved["loss"]) == {"naive", "dense", "factorized", "total (4 terms, factorized)"}
  assert np.all(saved["median_ms"] > 0)
  # Memory: the naive form's temporaries grow with T^2, the factorized form's do not.
  mem = df.pivot(index="T", columns="loss", values="temp_mib")
  assert mem.loc[256, "naive"] / mem.loc[64, "naive"] > 8
  assert mem.loc[256, "factorized"] < mem.loc[256, "naive"] / 50


def test_train_step_quick(tmp_path):
  df = train_step.main(["--quick", "--out", str(tmp_path)])
  assert os.path.getsize(tmp_path / "train_step.md") > 0
  assert np.all(df["median_ms"] > 0)
  assert np.all(df["ratio_to_floor"] > 0)
  expected = 3 * 2 * 2 * 64 * (32 * 32 + 2 * 32 * 20)
  assert train_step.fc_flops(2, 64, 32, 32, 20) == expected
