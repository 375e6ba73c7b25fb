"""The outer region's part past a video's end: train, dump the validation CAS, re-score.

The experiment docs/experiments/2026-11-27-outer-region-past-video-end.md
(``inference.outer_outside``). Three steps; the first needs the trained runs,
the others only its dumps. It ran as::

  # 1. train robustness runs and dump each one's validation CAS (the kept
  #    classes' C_cls and C_loc as float16, s_a, p_a, ground truth):
  python benchmarks/experiments/outer_region_rescore.py train --out /tmp/runs \
      --dump /tmp/dumps --jobs 15 --spec long-instances:full,full-all:0:20 \
      --spec default:CL,full,full-all:0:10 ...
  # 2. score every dump with jaxseg.proposals.generate_proposals under each
  #    value of inference.outer_outside (the run's own config otherwise):
  python benchmarks/experiments/outer_region_rescore.py score --dump /tmp/dumps \
      --csv benchmarks/results/robustness/outer/scores.csv
  # 3. the tables of the experiment (paired by seed, ± standard error):
  python benchmarks/experiments/outer_region_rescore.py summary \
      --csv benchmarks/results/robustness/outer/scores.csv > benchmarks/results/robustness/outer/summary.md

A dump holds only the classes that class selection keeps (they are the same
under either value: the field changes no class score), so a re-score runs the
same proposals code on the same numbers; float16 moves a run's mAP by 0.05
on average (at most 1.1 on one run of 164) against the float32 scores of the
run itself, and both values are scored from the same dump. Every run is
scored under the inference fields of its config as they are (the "jaxseg"
rules), whatever ``inference.rules`` says.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks import robustness  # noqa: E402
from jaxseg import config as config_lib  # noqa: E402
from jaxseg import map_summary, metrics, proposals  # noqa: E402
from jaxseg import rules as rules_lib  # noqa: E402

VALUES = ("neutral", "ignored")
METRICS = ("mAP@0.1", "mAP@0.3", "mAP@0.5", "mAP@0.7", "avg0.1:0.7")


def _name(world: str, arm: str, seed: int) -> str:
  return f"{world}__{arm}__{seed}"


def dump_run(c, run_dir: str, path: str) -> None:
  """The validation CAS of the final checkpoint of ``run_dir``: ``path.npz``, ``path.json``."""
  from jaxseg import evaluate, workdir  # noqa: PLC0415
  run = workdir.load_run(c, run_dir, which="final")
  split = run.data.validation
  rules = rules_lib.from_config(c.inference, "jaxseg")
  pred = evaluate.evaluate_params(c, run.model, run.state.params, split, rules=rules,
                                  with_cas=True)["predictions"]
  arrays, meta = {}, {"class_names": list(split.class_names), "videos": {},
                      "ground_truth": split.ground_truth(),
                      "ambiguous": split.ambiguous_of_videos()}
  for v in split.videos:
    vid = v.video_id
    s_a, p_a = np.asarray(pred["s_a"][vid]), np.asarray(pred["p_a"][vid])
    keep = proposals.select_classes(s_a, p_a, class_threshold=rules.class_threshold,
                                    class_top_ratio=rules.class_top_ratio,
                                    keep_top_class=rules.keep_top_class)
    cas = pred["cas"][vid]
    arrays[f"{vid}|cls"] = cas["cas_cls"][:, keep].astype(np.float16)
    arrays[f"{vid}|loc"] = cas["cas_loc"][:, keep].astype(np.float16)
    arrays[f"{vid}|s"], arrays[f"{vid}|p"] = s_a[keep], p_a[keep]
    meta["videos"][vid] = {"classes": [int(k) for k in keep],
                           "rate": float(v.feature_rate), "duration": float(v.duration)}
  np.savez_compressed(path + ".npz", **arrays)
  with open(path + ".json", "w") as f:
    json.dump(meta, f)


def _train_job(args) -> str:
  c, run_dir, path = args
  robustness.validation_run(c, run_dir)
  dump_run(c, run_dir, path)
  return path


def train(out: str, dump: str, specs, jobs: int) -> None:
  import concurrent.futures as cf  # noqa: PLC0415
  import multiprocessing as mp  # noqa: PLC0415
  base = robustness.base_config(False)
  grid = []
  for spec in specs:  # world:arm,arm:first_seed:end_seed
    world, arms, first, end = spec.split(":")
    grid += [(world, arm, s) for arm in arms.split(",") for s in range(int(first), int(end))]
  configs = {k: robustness.job_config(base, out, "", *k, {}, False) for k in grid}
  first_of = {}
  for (w, _, _), c in configs.items():
    first_of.setdefault(w, c)
  os.makedirs(dump, exist_ok=True)
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
    list(pool.map(robustness.generate_world, first_of.values()))
    todo = [(configs[k], robustness.run_path(out, *k),
             os.path.join(dump, _name(*k))) for k in grid]
    for path in pool.map(_train_job, todo):
      print(path, flush=True)


def score_dump(path: str, c) -> dict:
  """mAP of one dump with ``generate_proposals`` under the run config ``c``.

  ``C_a`` and the contrast CAS are formed as :func:`jaxseg.inference.video_scores`
  forms them (host-side here: each video has its own length); ``s_a`` and
  ``p_a`` are the dumped ones, taken over all classes.
  """
  with open(path + ".json") as f:
    meta = json.load(f)
  arrays = np.load(path + ".npz")
  names = meta["class_names"]
  rules = rules_lib.from_config(c.inference, "jaxseg")
  w = rules.contrast_loc_weight
  results = {}
  for vid, v in meta["videos"].items():
    cas_cls = arrays[f"{vid}|cls"].astype(np.float32)
    cas_loc = arrays[f"{vid}|loc"].astype(np.float32)
    if cas_cls.shape[1] == 0:
      results[vid] = []
      continue
    dets = proposals.generate_proposals(
        (cas_cls + cas_loc) / 2, arrays[f"{vid}|s"], arrays[f"{vid}|p"],
        feature_rate=v["rate"], duration=v["duration"], rules=rules,
        cas_cls=cas_cls, cas_contrast=(1 - w) * cas_cls + w * cas_loc,
        cas_extent=cas_loc, video_id=vid)
    results[vid] = [{"label": names[v["classes"][d["label"]]], "score": d["score"],
                     "segment": d["segment"]} for d in dets]
  table = metrics.detection_map(meta["ground_truth"], {"results": results},
                                tuple(c.eval.tiou_thresholds), protocol=c.eval.protocol,
                                class_names=names, feature_rate=c.data.feature_rate,
                                ambiguous=meta["ambiguous"])
  return map_summary.summarize(table, c.eval.averages, lenient=True).iloc[0].to_dict()


def _score_job(path: str) -> list[dict]:
  world, arm, seed = os.path.basename(path).split("__")
  c = robustness.world_config(robustness.base_config(False), world, arm, int(seed), {})
  rows = []
  for value in VALUES:
    s = score_dump(path, config_lib.with_overrides(c, **{"inference.outer_outside": value}))
    rows.append({"world": world, "arm": arm, "seed": int(seed), "outer_outside": value,
                 **{m: round(s[m], 4) for m in METRICS}})
  return rows


def score(dump: str, csv: str, jobs: int) -> None:
  from multiprocessing import Pool  # noqa: PLC0415
  paths = sorted(p[:-4] for p in glob.glob(os.path.join(dump, "*.npz")))
  with Pool(jobs) as pool:
    rows = [r for rs in pool.map(_score_job, paths) for r in rs]
  pd.DataFrame(rows).to_csv(csv, index=False)


def _paired(a: pd.Series, b: pd.Series) -> str:
  d = (b - a).dropna()
  if len(d) < 2:
    return ""
  return f"{d.mean():+.1f} ± {d.std(ddof=1) / np.sqrt(len(d)):.1f} ({len(d)})"


def summary(csv: str) -> None:
  df = pd.read_csv(csv)
  worlds = [w for w in robustness.WORLDS if w in set(df.world)]

  def col(arm, value, metric, world):
    """Per-seed ``metric`` of one arm on one world under one value."""
    x = df[(df.arm == arm) & (df.outer_outside == value) & (df.world == world)]
    return x.set_index("seed")[metric]

  print("# Validation, final checkpoint: mean over seeds, and paired differences "
        "± their standard error (number of seeds)\n")
  for metric in ("mAP@0.1", "mAP@0.5", "avg0.1:0.7"):
    print(f"## {metric}\n")
    print("| world | CL, ignored | CL, neutral | one-segment, ignored | one-segment, neutral "
          "| full labels, ignored | full labels, neutral | full − one-segment, ignored "
          "| full − one-segment, neutral | one-segment − CL, neutral "
          "| full labels − CL, neutral |")
    print("|" + " --- |" + " ---: |" * 10)
    for w in worlds:
      cells = [w]
      for arm in ("CL", "full", "full-all"):
        for value in VALUES[::-1]:
          s = col(arm, value, metric, w)
          cells.append(f"{s.mean():.1f}" if len(s) else "")
      for value in VALUES[::-1]:
        cells.append(_paired(col("full", value, metric, w), col("full-all", value, metric, w)))
      for arm in ("full", "full-all"):
        cells.append(_paired(col("CL", "neutral", metric, w), col(arm, "neutral", metric, w)))
      print("| " + " | ".join(cells) + " |")
    print()
  print("## Neutral minus ignored on the same runs (mAP@0.1 / mAP@0.5)\n")
  arms = [a for a in ("CL", "full", "full-all") if a in set(df.arm)]
  print("| world | " + " | ".join(arms) + " |")
  print("|" + " --- |" + " ---: |" * len(arms))
  for w in worlds:
    cells = [w]
    for arm in arms:
      pair = [_paired(col(arm, "ignored", m, w), col(arm, "neutral", m, w))
              for m in ("mAP@0.1", "mAP@0.5")]
      cells.append(" / ".join(pair) if all(pair) else "")
    print("| " + " | ".join(cells) + " |")
  print()


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="cmd", required=True)
  t = sub.add_parser("train")
  t.add_argument("--out", required=True)
  t.add_argument("--dump", required=True)
  t.add_argument("--spec", action="append", required=True,
                 help="world:arm[,arm...]:first_seed:end_seed")
  t.add_argument("--jobs", type=int, default=2)
  s = sub.add_parser("score")
  s.add_argument("--dump", required=True)
  s.add_argument("--csv", required=True)
  s.add_argument("--jobs", type=int, default=2)
  m = sub.add_parser("summary")
  m.add_argument("--csv", required=True)
  a = p.parse_args(argv)
  if a.cmd == "train":
    train(a.out, a.dump, a.spec, a.jobs)
  elif a.cmd == "score":
    score(a.dump, a.csv, a.jobs)
  else:
    summary(a.csv)
  return 0


if __name__ == "__main__":
  sys.exit(main())
