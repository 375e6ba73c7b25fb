"""``--mode ablate``: the paper's Table 1, every loss combination per label mode.

Trains the 8 combinations of {CL, +PSL, +SL, +PL} (CL always on) for each of
``config.ablation.label_modes``, over ``num_seeds`` seeds (seed ``i`` sets both
``config.seed`` and ``config.labels.seed`` to base + i, the same for every
cell), and writes ``ablation.csv`` (one row per run and checkpoint, with its
``label_mode``), ``ablation_summary.csv`` (mean and std per cell) and
``ablation.md`` (Table 1's layout: mAP at tIoU 0.5 and the average, mean ± std
over seeds). As in the paper, the cells without PSL never see a segment label
(``ablation.non_psl_cells = "video_level"``): they are trained once per seed on
video-level labels with a fixed ``r`` and shown in every label row.
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
from jaxseg import config_checks
from jaxseg import provenance
from jaxseg import train
from jaxseg.data import io

# (name, use_segment, use_sphere, use_propagation) in the column order of Table 1.
COMBINATIONS = tuple((name,) + tuple(part in name.split("+") for part in ("PSL", "SL", "PL"))
                     for name in config_lib.ABLATION_LOSSES)
FULL_MODEL = config_lib.ABLATION_LOSSES[-1]


VIDEO_LEVEL = "video-level"


def has_psl(combo: tuple) -> bool:
  return bool(combo[1])


def trained_on(config: ml_collections.ConfigDict, label_mode: str, combo: tuple) -> str:
  """The label mode a cell is trained with.

  With ``ablation.non_psl_cells = "video_level"`` (the paper's Table 1) a cell
  without the partial segment loss never sees a segment label: it is trained
  on video-level labels with the fixed ``r`` of eq. 2, once per seed, and the
  same run fills that column in every label row. A ``"video-level"`` row has
  no segment label to add, so its PSL cells are its non-PSL runs too.
  """
  if label_mode == VIDEO_LEVEL:
    return VIDEO_LEVEL
  if config.ablation.non_psl_cells == "video_level" and not has_psl(combo):
    return VIDEO_LEVEL
  return label_mode


def run_config(base: ml_collections.ConfigDict, label_mode: str, combo: tuple,
               seed_index: int) -> ml_collections.ConfigDict:
  """The config of one cell and seed of the ablation (``label_mode``: what it trains on)."""
  c = ml_collections.ConfigDict(base.to_dict())
  _, psl, sl, pl = combo
  if label_mode == VIDEO_LEVEL:
    psl = False  # eq. 6 is 0 without segment labels; the run is its CL+... twin
  c.loss.use_classification = True
  c.loss.use_segment, c.loss.use_sphere, c.loss.use_propagation = psl, sl, pl
  if not config_lib.trains_localization(c.loss):
    c.inference.extent = "proposal"  # CL alone: no C_loc to choose an extent on
  c.labels.mode = label_mode
  if label_mode == VIDEO_LEVEL:
    c.loss.topk_mode = "fixed"  # no Q: r = loss.topk_ratio, as W-TALC
  c.seed = base.seed + seed_index
  c.labels.seed = base.labels.seed + seed_index
  c.train.progress = False
  return c


def validation_result(run_dir: str) -> dict:
  """``final`` / ``selected`` validation summaries of a finished run (``metrics.jsonl``)."""
  recs = []
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    for line in f:
      rec = json.loads(line)
      if rec.get("kind") == "validation":
        recs.append(rec)
  if not recs:
    raise RuntimeError(f"{run_dir}/metrics.jsonl: no validation record "
                       "(ablation.split='validation' needs train.validation_fraction > 0)")
  drop = ("step", "kind", "selection", "candidates")
  summary = lambda r: {k: v for k, v in r.items() if k not in drop}  # noqa: E731
  best = max(recs, key=lambda r: r["selection"])  # first of equal scores
  return {"final": summary(recs[-1]), "selected": summary(best),
          "selected_step": best["step"],
          # Every candidate's validation summary under inference.rules = "auto".
          "candidates": {"final": recs[-1].get("candidates", {}),
                         "selected": best.get("candidates", {})},
          "provenance": {"git_commit": provenance.git_commit()}}


def _train_cell(c: ml_collections.ConfigDict, run_dir: str, split: str, *,
                overwrite: bool) -> dict:
  """Trains one run and returns its scores on ``split``.

  A cell already there is not taken on trust: training resumes it (a finished
  run has no step left, an interrupted one finishes) and refuses it when its
  config or data changed (naming what changed; ``overwrite`` starts it over),
  and its scores are computed again, never read from an earlier report.
  """
  if split == "test":
    train.train_and_evaluate(c, run_dir, overwrite=overwrite)
    with open(os.path.join(run_dir, "results.json")) as f:  # written by that call
      return json.load(f)
  train.train_and_evaluate(c, run_dir, overwrite=overwrite, evaluate=False)
  res = validation_result(run_dir)
  io.atomic_write_text(os.path.join(run_dir, "validation.json"),
                       json.dumps(res, indent=1) + "\n")
  return res


def run_ablation(config: ml_collections.ConfigDict, workdir: str, *,
                 num_seeds: int | None = None, overwrite: bool = False) -> pd.DataFrame:
  """Runs every cell and writes ``ablation.csv``, ``ablation_summary.csv`` and ``ablation.md``.

  Scores are on ``config.ablation.split``: ``"test"`` (Table 1) or
  ``"validation"`` (the hold-out of ``train.validation_fraction``; the test
  split is then never evaluated, for tuning).

  Returns:
    One row per (label mode, combination, seed, checkpoint) with the mAP
    (percent) of the final and of the selected checkpoint; ``trained_on``
    says which labels the run saw (``video-level`` for the non-PSL cells by
    default: the same run in every label row).
  """
  config_checks.validate(config)  # before the workdir exists, naming ablation.* fields
  num_seeds = config.ablation.num_seeds if num_seeds is None else num_seeds
  if num_seeds < 1:
    raise config_lib.ConfigError(f"--seeds: expected at least 1, got {num_seeds}")
  split = config.ablation.split
  os.makedirs(workdir, exist_ok=True)
  rows = []
  combos = [c for c in COMBINATIONS if c[0] in set(config.ablation.losses)]
  cells = list(itertools.product(config.ablation.label_modes, combos, range(num_seeds)))
  for i, (mode, combo, seed_index) in enumerate(cells):
    on = trained_on(config, mode, combo)
    name = combo[0]
    if on == VIDEO_LEVEL and has_psl(combo):
      name = "+".join(p for p in combo[0].split("+") if p != "PSL")
    run_dir = os.path.join(workdir, "runs", on, name, f"seed{seed_index}")
    c = run_config(config, on, combo, seed_index)
    logging.info("[%d/%d] %s %s seed %d (trained on %s)", i + 1, len(cells), mode, combo[0],
                 seed_index, on)
    res = _train_cell(c, run_dir, split, overwrite=overwrite)
    prov = provenance.flat_columns(res["provenance"]) if split == "test" else {
        "git_commit": res["provenance"].get("git_commit")}
    for which in ("final", "selected"):
      # The row's label mode wins over the run's own (provenance: what it trained on).
      # "rules": the inference rules the checkpoint was scored under (validation
      # records carry it; results.json its choice).
      chosen = res.get("rules", {}).get(which, {}).get("chosen") if split == "test" else None
      rows.append({**prov, "label_mode": mode, "losses": combo[0], "seed": seed_index,
                   "trained_on": on, "split": split, "checkpoint": which, **res[which],
                   **({"rules": chosen} if chosen else {})})
  df = pd.DataFrame(rows)
  io.atomic_write_text(os.path.join(workdir, "ablation.csv"), df.round(4).to_csv(index=False))
  io.atomic_write_text(os.path.join(workdir, "ablation_summary.csv"),
                       ablation_summary(df).round(4).to_csv(index=False))
  io.atomic_write_text(os.path.join(workdir, "ablation.md"), ablation_markdown(df, config))
  write_annotation_time(df, config, workdir)
  return df


def write_annotation_time(df: pd.DataFrame, config: ml_collections.ConfigDict,
                          workdir: str, metric: str = "mAP@0.5") -> list[str]:
  """Paper Fig. 5 (``fig5.*``): the full model's ``metric`` per label mode against
  ``ablation.annotation_time``, when two or more of the rows have a time."""
  from jaxseg import report  # pylint: disable=g-import-not-at-top
  combo = FULL_MODEL if FULL_MODEL in set(df.losses) else df.losses.iloc[-1]
  sub = df[(df.losses == combo) & (df.checkpoint == "final")]
  points = report.annotation_time_points(sub.label_mode, sub[metric].to_numpy(float),
                                         config.ablation.annotation_time)
  if len(points) < 2:
    return []
  split = config.ablation.split
  caption = (f"{metric} (%) of {combo} on the {split} split, final checkpoint, mean ± "
             f"sample std over {sub.seed.nunique()} seed(s) per label mode; annotation "
             "time as a fraction of the video's duration (ablation.annotation_time).")
  return report.write_annotation_time(points, workdir, metric, caption)


def ablation_summary(df: pd.DataFrame) -> pd.DataFrame:
  """Per cell (label mode, losses, checkpoint): mean and sample std of every mAP column."""
  metrics = [m for m in df.columns if m.startswith("mAP@") or m.startswith("avg")]
  keys = ["label_mode", "losses", "trained_on", "split", "checkpoint"]
  g = df.groupby(keys, sort=False)[metrics]
  mean = g.mean().add_suffix("_mean")
  std = g.std(ddof=1).fillna(0.0).add_suffix("_std")
  out = pd.concat([mean, std], axis=1).reset_index()
  out.insert(len(keys), "seeds", g.size().to_numpy())
  return out


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
  split = config.ablation.split
  if config.ablation.non_psl_cells == "video_level":
    caption = ("Columns without PSL (CL, CL+SL, CL+PL, CL+SL+PL) are trained without any "
               "segment label (video-level labels, fixed r = loss.topk_ratio), once per "
               "seed, and the same runs are shown in every row, as in the paper's Table 1.")
  else:
    caption = ("Every cell is trained with its row's segment labels: the columns without "
               "PSL take r = 2Q from them (ablation.non_psl_cells = 'label_informed'; "
               "not the paper's Table 1).")
  out = ["# Loss ablation (paper Table 1)", "",
         f"{split.capitalize()}-split detection mAP (%), {seeds} seed(s) per cell"
         + (" (mean ± sample std)" if seeds > 1 else "") + f", protocol {config.eval.protocol}. "
         + caption, ""]
  for checkpoint in ("final", "selected"):
    for metric in metrics:
      out += [f"## {metric}, {checkpoint} checkpoint", "",
              ablation_table(df, metric, checkpoint).to_markdown(), ""]
  return "\n".join(out)
