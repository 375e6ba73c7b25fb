"""``--mode train --seeds N``: one config trained with N seeds, and the spread.

Seed ``i`` sets ``config.seed`` (initialization, dropout, data order) and
``config.labels.seed`` (which segments are labeled) to base + i, as the
ablation does. Each run has its own work directory ``workdir/seed_<i>`` (a
full run directory: rerunning resumes it, refuses it when the config or the
data changed, and evaluates it again); ``workdir/seeds.csv``
holds one row per run and ``workdir/seeds.md`` the mean ± sample standard
deviation of every metric, final and selected checkpoint.

  python -m jaxseg.main --config configs/synthetic.py --workdir runs/s3 --seeds 3
"""

from __future__ import annotations

import os

import ml_collections
import pandas as pd
from absl import logging

from jaxseg import config as config_lib
from jaxseg import config_checks
from jaxseg import report
from jaxseg import train
from jaxseg.data import io


def seed_config(config: ml_collections.ConfigDict, index: int) -> ml_collections.ConfigDict:
  """``config`` with seed ``index``: ``seed`` and ``labels.seed`` offset by it."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.seed = config.seed + index
  c.labels.seed = config.labels.seed + index
  return c


def run_seeds(config: ml_collections.ConfigDict, workdir: str, num_seeds: int, *,
              overwrite: bool = False) -> pd.DataFrame:
  """Trains and evaluates ``num_seeds`` runs; returns the mean ± std table."""
  config_checks.validate(config)
  if num_seeds < 1:
    raise config_lib.ConfigError(f"--seeds: expected at least 1, got {num_seeds}")
  runs = []
  for i in range(num_seeds):
    run_dir = os.path.join(workdir, f"seed_{i}")
    # Never reused on the strength of an earlier report: training resumes the
    # run (nothing left to do once finished), refuses a changed config or data,
    # and the run is evaluated again.
    logging.info("seed %d of %d: %s", i + 1, num_seeds, run_dir)
    train.train_and_evaluate(seed_config(config, i), run_dir, overwrite=overwrite)
    runs.append(run_dir)
  per_run = pd.concat({which: report.run_table(runs, which)
                       for which in ("final", "selected")}, names=["checkpoint"])
  summary = spread(per_run)
  if "rules" in per_run.columns:  # the inference rules each run's checkpoints used
    summary.attrs["rules"] = {
        which: ", ".join(f"{name} {count}" for name, count in
                         per_run.loc[which, "rules"].value_counts().items())
        for which in ("final", "selected")}
  io.atomic_write_text(os.path.join(workdir, "seeds.csv"), per_run.round(4).to_csv())
  io.atomic_write_text(os.path.join(workdir, "seeds.md"), seeds_markdown(summary, config,
                                                                         num_seeds))
  return summary


def spread(per_run: pd.DataFrame) -> pd.DataFrame:
  """Mean and sample std (ddof 1) of each metric column, per checkpoint."""
  metrics = ([c for c in per_run.columns if c.startswith("mAP@")]
             + [c for c in per_run.columns if c.startswith("avg")]
             + [c for c in per_run.columns if c == "cls_mAP"])
  grouped = per_run[metrics].astype(float).groupby(level="checkpoint", sort=False)
  return pd.concat({"mean": grouped.mean(), "std": grouped.std(ddof=1)}, axis=1)


def seeds_markdown(summary: pd.DataFrame, config: ml_collections.ConfigDict,
                   num_seeds: int) -> str:
  cells = pd.DataFrame(index=summary.index)
  for metric in summary["mean"].columns:
    mean, std = summary["mean"][metric], summary["std"][metric]
    cells[metric] = [f"{m:.1f} ± {s:.1f}" if pd.notna(s) else f"{m:.1f}"
                     for m, s in zip(mean, std)]
  return "\n".join([
      f"# {num_seeds} seeds", "",
      f"Test split `{config.data.test_subset}`, detection mAP (%), mean ± sample "
      "standard deviation over the seeds (seed i: `seed` and `labels.seed` + i); "
      "one row per run in seeds.csv.", "",
      report.markdown(cells), "",
      *([f"Inference rules used (runs per preset): final {rules['final']}; selected "
         f"{rules['selected']}.", ""] if (rules := summary.attrs.get("rules")) else [])])
