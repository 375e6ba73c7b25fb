"""``--mode ablate``: the paper's Table 1, every loss combination per label mode.

Trains the 8 combinations of {CL, +PSL, +SL, +PL} (CL always on) for each of
``config.ablation.label_modes``, over ``num_seeds`` seeds (seed ``i`` sets both
``config.seed`` and ``config.labels.seed`` to base + i, the same for every
cell), and writes ``ablation.csv`` (one row per run) and ``ablation.md``
(Table 1's layout: mAP at tIoU 0.5 and the average, mean ± std over seeds).
Each run has its own work directory under ``workdir/runs/``; a rerun skips
finished runs and resumes an interrupted one.
"""

from __future__ import annotations

import itertools
import json
import os

import ml_collections
import numpy as np
import pandas as pd
from absl import logging

from jaxseg import config as config_lib
from jaxseg import provenance
from jaxseg import train
from jaxseg.data import io

# (name, use_segment, use_sphere, use_propagation) in the column order of Table 1.
COMBINATIONS = tuple(
    ("+".join(["CL"] + [n for n, on in zip(("PSL", "SL", "PL"), flags) if on]),) + flags
    for flags in [(False, False, False), (True, False, False), (False, True, False),
                  (False, False, True), (True, True, False), (True, False, True),
                  (False, True, True), (True, True, True)])


def run_config(base: ml_collections.ConfigDict, label_mode: str, combo: tuple,
               seed_index: int) -> ml_collections.ConfigDict:
  """The config of one cell and seed of the ablation."""
  c = ml_collections.ConfigDict(base.to_dict())
  _, psl, sl, pl = combo
  c.loss.use_classification = True
  c.loss.use_segment, c.loss.use_sphere, c.loss.use_propagation = psl, sl, pl
  c.labels.mode = label_mode
  c.seed = base.seed + seed_index
  c.labels.seed = base.labels.seed + seed_index
  c.train.progress = False
  return c


def run_ablation(config: ml_collections.ConfigDict, workdir: str, *,
                 num_seeds: int | None = None, overwrite: bool = False) -> pd.DataFrame:
  """Runs every cell and writes ``ablation.csv`` and ``ablation.md``.

  Returns:
    One row per (label mode, combination, seed) with the test mAP (percent)
    of the final and of the selected checkpoint.
  """
  config_lib.validate(config)  # before the workdir exists, naming ablation.* fields
  num_seeds = num_seeds or config.ablation.num_seeds
  os.makedirs(workdir, exist_ok=True)
  rows = []
  cells = list(itertools.product(config.ablation.label_modes, COMBINATIONS, range(num_seeds)))
  for i, (mode, combo, seed_index) in enumerate(cells):
    run_dir = os.path.join(workdir, "runs", mode, combo[0], f"seed{seed_index}")
    c = run_config(config, mode, combo, seed_index)
    done = os.path.join(run_dir, "results.json")
    if not os.path.exists(done) or overwrite:
      logging.info("[%d/%d] %s %s seed %d", i + 1, len(cells), mode, combo[0], seed_index)
      train.train_and_evaluate(c, run_dir, overwrite=overwrite)
    with open(done) as f:
      res = json.load(f)
    prov = provenance.flat_columns(res["provenance"])
    for which in ("final", "selected"):
      rows.append({"label_mode": mode, "losses": combo[0], "seed": seed_index,
                   "checkpoint": which, **res[which], **prov})
  df = pd.DataFrame(rows)
  io.atomic_write_text(os.path.join(workdir, "ablation.csv"), df.round(4).to_csv(index=False))
  io.atomic_write_text(os.path.join(workdir, "ablation.md"), ablation_markdown(df, config))
  return df


def _cell(values: np.ndarray) -> str:
  if len(values) == 1:
    return f"{values[0]:.1f}"
  return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"


def ablation_table(df: pd.DataFrame, metric: str, checkpoint: str = "final") -> pd.DataFrame:
  """Table 1's layout: rows are label modes, columns the loss combinations."""
  sub = df[df.checkpoint == checkpoint]
  modes = list(dict.fromkeys(sub.label_mode))
  combos = [c[0] for c in COMBINATIONS if c[0] in set(sub.losses)]
  table = pd.DataFrame(index=modes, columns=combos, dtype=object)
  for mode in modes:
    for combo in combos:
      vals = sub[(sub.label_mode == mode) & (sub.losses == combo)][metric].to_numpy(float)
      table.loc[mode, combo] = _cell(vals) if len(vals) else "-"
  return table


def ablation_markdown(df: pd.DataFrame, config: ml_collections.ConfigDict) -> str:
  """The markdown report: mAP@0.5 and the first configured average, final and selected."""
  seeds = df.seed.nunique()
  avg = config.eval.averages[0][0] if config.eval.averages else None
  metrics = [m for m in ("mAP@0.5", avg) if m and m in df.columns]
  out = ["# Loss ablation (paper Table 1)", "",
         f"Test-split detection mAP (%), {seeds} seed(s) per cell"
         + (" (mean ± sample std)" if seeds > 1 else "") + f", protocol {config.eval.protocol}.",
         ""]
  for checkpoint in ("final", "selected"):
    for metric in metrics:
      out += [f"## {metric}, {checkpoint} checkpoint", "",
              ablation_table(df, metric, checkpoint).to_markdown(), ""]
  return "\n".join(out)
