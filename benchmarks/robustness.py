"""The method across a family of synthetic worlds, scored on the validation hold-out.

Each *world* changes the synthetic generator (``config.data.synthetic``): the
noise's temporal correlation (white, the default [1, 2, 1] kernel, strong
AR(1)), softplus or ReLU features, hard to easy signal-to-noise, longer
instances covering more of the video, and 2048-d features (alone, and with
ReLU features and AR(0.9) noise). Other worlds move the class evidence or
what surrounds it: spread as a smooth bump over the whole instance instead of
a short core (``spread``), the same with the instance's class on the
background around it (``spread-context``), that context around the default
cores (``core-context``), three short cores per instance (``cores``), action-like
background runs of a class the video is not labeled with (``foreign-actions``),
and two classes in most videos (``co-occurring``). Each *arm* is a way
of training on it: ``CL`` (video-level labels, fixed ``r``), ``CL+PSL`` and
``full`` (one-segment labels), ``full-two`` (two-segment labels) and
``full-all`` (``labels.mode = full``). Every run scores on the validation
hold-out (``train.validation_fraction``) and never reads the test split; the
final checkpoint is reported (no selection: nothing is tuned per run).
``--split test`` is the once-only final report after the defaults are chosen.

  python benchmarks/robustness.py --out benchmarks/results/robustness       # the family
  python benchmarks/robustness.py --quick --out /tmp/rob                     # seconds, CI
  python benchmarks/robustness.py --set loss.topk_count=instances ...        # a candidate default
  python benchmarks/robustness.py --jobs 8 ...                               # 8 runs at once (GPU)

Writes ``robustness.csv`` (one row per world, arm, seed) and ``robustness.md``
(mean over seeds of mAP@0.1, mAP@0.5 and avg0.1:0.5 per world and arm, and
the full model's gains over CL).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pandas as pd  # noqa: E402

from configs import synthetic_small  # noqa: E402
from configs import test as test_config  # noqa: E402
from jaxseg import ablation, train  # noqa: E402
from jaxseg import config as config_lib  # noqa: E402
from jaxseg import presets  # noqa: E402
from jaxseg.data import io, synthetic  # noqa: E402

# name -> data.synthetic overrides (the default world is the generator's default).
WORLDS = {
    "default": {},
    "white-noise": {"noise_ar": 0.0},
    "ar0.9-noise": {"noise_ar": 0.9},
    "relu": {"activation": "relu"},
    "hard-snr": {"noise": 1.25},
    "easy-snr": {"noise": 0.45},
    "long-instances": {"instance_length_median": 16.0, "coverage_mean": 0.4},
    "d2048": {"feature_dim": 2048},  # the strengths are scaled below
    "d2048-relu-ar0.9": {"feature_dim": 2048, "activation": "relu", "noise_ar": 0.9},
    # Where the class evidence sits and what surrounds the instances
    # (docs/synthetic-data.md, "World structure").
    "spread": {"class_evidence": "spread"},
    "spread-context": {"class_evidence": "spread", "context_strength": 0.75},
    "core-context": {"context_strength": 0.75},
    "cores": {"class_evidence": "cores", "num_cores": 3},
    "foreign-actions": {"foreign_action_rate": 0.08},
    "co-occurring": {"two_class_fraction": 0.6},
}

# The generator's strengths are lengths along unit directions, so at a fixed
# strength a wider D spreads the same signal over more dimensions: at D = 2048
# each feature carries sqrt(2048 / 64) = 5.7x less of it than in the 64-d
# default world, and 60 training videos cannot find the direction. The 2048-d
# world keeps the default world's per-feature statistics instead (each
# feature's share of every signal as at D = 64), as real I3D features spread
# their class information over many of their 2048 channels
# (synthetic.SIGNAL_STRENGTHS are scaled; context_strength and
# foreign_action_strength are not: no 2048-d world sets them).


def world_overrides(base, world: str) -> dict:
  """``data.synthetic`` overrides of ``world`` on top of ``base``."""
  out = dict(WORLDS[world])
  d = out.get("feature_dim", base.data.synthetic.feature_dim)
  if d != base.data.synthetic.feature_dim:
    scale = (d / base.data.synthetic.feature_dim) ** 0.5
    for k in synthetic.SIGNAL_STRENGTHS:
      out.setdefault(k, float(base.data.synthetic[k]) * scale)
  return out

# CL alone trains no C_loc: its detections keep the extent of their proposal.
_CL = {"labels.mode": "video-level", "loss.topk_mode": "fixed", "loss.use_segment": False,
       "loss.use_sphere": False, "loss.use_propagation": False,
       "inference.extent": "proposal"}
ARMS = {
    "CL": _CL,
    "CL+PSL": {"labels.mode": "one-segment", "loss.use_sphere": False,
               "loss.use_propagation": False},
    "full": {"labels.mode": "one-segment"},
    "full-two": {"labels.mode": "two-segment"},
    "full-all": {"labels.mode": "full"},
    # Candidate defaults (docs/decisions.md): Q counting labeled instances,
    # S from pre-dropout f, labeled segments kept by the subsampling.
    "full-two-inst": {"labels.mode": "two-segment", "loss.topk_count": "instances"},
    "full-all-inst": {"labels.mode": "full", "loss.topk_count": "instances"},
    "full-clean": {"labels.mode": "one-segment", "loss.propagation_features": "clean"},
    "full-fixed": {"labels.mode": "one-segment", "loss.topk_mode": "fixed"},
    # The f of C_loc (model.localization_embedding): its losses train its head
    # only ("detached"), or its own embedding ("separate").
    "full-head": {"labels.mode": "one-segment", "model.localization_embedding": "detached"},
    "full-all-head": {"labels.mode": "full", "model.localization_embedding": "detached"},
    "full-sep": {"labels.mode": "one-segment", "model.localization_embedding": "separate"},
    "full-two-sep": {"labels.mode": "two-segment", "model.localization_embedding": "separate"},
    "full-all-sep": {"labels.mode": "full", "model.localization_embedding": "separate"},
    "full-shared": {"labels.mode": "one-segment", "model.localization_embedding": "shared"},
    "full-all-shared": {"labels.mode": "full", "model.localization_embedding": "shared"},
    # Eq. 2-4 on C_loc as well, weight 1 and 0.3 (loss.loc_classification_weight),
    # and weight 1 on the top half, quarter or whole of C_loc
    # (loss.loc_classification_topk_ratio 2, 4, 1).
    **{f"{arm}-clsloc{suffix}": {**over, "loss.loc_classification_weight": w,
                                 "loss.loc_classification_topk_ratio": r}
       for arm, over in (("CL", _CL), ("full", {"labels.mode": "one-segment"}),
                         ("full-all", {"labels.mode": "full"}))
       for suffix, w, r in (("", 1.0, 0.0), ("0.3", 0.3, 0.0), ("-r2", 1.0, 2.0),
                            ("-r4", 1.0, 4.0), ("-r1", 1.0, 1.0))},
    "CL+PSL+SL": {"labels.mode": "one-segment", "loss.use_propagation": False},
    "CL+PSL+PL": {"labels.mode": "one-segment", "loss.use_sphere": False},
    "CL+PSL+SL-all": {"labels.mode": "full", "loss.use_propagation": False},
    "CL+PSL+SL-fixed": {"labels.mode": "one-segment", "loss.use_propagation": False,
                        "loss.topk_mode": "fixed"},
    "full-two-keep": {"labels.mode": "two-segment", "train.subsample": "keep_labeled"},
    "CL+PSL-two": {"labels.mode": "two-segment", "loss.use_sphere": False,
                   "loss.use_propagation": False},
    "CL+PSL-two-fixed": {"labels.mode": "two-segment", "loss.topk_mode": "fixed",
                         "loss.use_sphere": False, "loss.use_propagation": False},
    "CL+PSL-fixed": {"labels.mode": "one-segment", "loss.topk_mode": "fixed",
                     "loss.use_sphere": False, "loss.use_propagation": False},
    # One printed choice at a time, on the full model with one-segment labels.
    "full-eq4": {"labels.mode": "one-segment", "loss.classification_normalization": "classes"},
    "full-eq10": {"labels.mode": "one-segment", "loss.sphere_classes": "all"},
    "full-eq13": {"labels.mode": "one-segment", "loss.propagation_similarity": "dot",
                  "loss.propagation_normalization": "none"},
    "full-gradS": {"labels.mode": "one-segment", "loss.propagation_grad_through_similarity": True},
    "full-gamma0.02": {"labels.mode": "one-segment", "loss.gamma": 0.02},
    # The presets: "paper" (presets.PAPER_PRESET, one-segment labels) and the
    # paper as printed (presets.paper_as_printed, two-segment labels, gamma 0.02).
    "paper": {**dict(presets.PAPER_PRESET), "labels.mode": "one-segment"},
    "printed": {**dict(presets.PAPER_AS_PRINTED), "inference.rules": "printed",
                "loss.gamma": 0.02},
}


# Inference variants re-scored on every trained run (no retraining): name ->
# config.inference overrides, scored as the "jaxseg" rules of the config so
# changed. "defaults" is the run's own rules (inference.rules as configured).
INFERENCE = {
    "defaults": {},
    "printed": {"score_source": "average", "contrast_on": "raw", "class_score": "s_a",
                "class_top_ratio": 0.0, "keep_top_class": False,
                "contrast_loc_weight": 0.5, "extent": "proposal", "proposal_cas": "average",
                "outer_outside": "ignored"},
    "raw-contrast": {"contrast_on": "raw"},
    "s_a": {"class_score": "s_a"},
    "raw-contrast+s_a": {"contrast_on": "raw", "class_score": "s_a"},
    "average": {"score_source": "average"},
    "p_a-w4": {"class_score_weight": 4.0},
    "raw+s_a-top0.5": {"contrast_on": "raw", "class_score": "s_a", "class_top_ratio": 0.5},
    "p_a": {"class_score": "p_a"},
    "p_a-nms0.4": {"class_score": "p_a", "nms_iou": 0.4},
    "p_a-nms0.6": {"class_score": "p_a", "nms_iou": 0.6},
    "nms0.6": {"nms_iou": 0.6},
    "nms0.5": {"nms_iou": 0.5},
    "nms0.4": {"nms_iou": 0.4},
    "nms0.3": {"nms_iou": 0.3},
    # The CAS of the proposals' contrast: (1 - w) C_cls + w C_loc (0.5: C_a).
    "loc0": {"contrast_loc_weight": 0.0},
    "loc0.8": {"contrast_loc_weight": 0.8},
    "loc1": {"contrast_loc_weight": 1.0},
    # Proposals cut from C_a, ranked by the contrast on C_cls (or C_a), extent
    # from C_loc (the scoring chosen in
    # docs/experiments/2026-11-27-proposal-score-cas-and-extent.md), and the
    # scoring before it.
    "extent-loc": {"extent": "localization", "contrast_loc_weight": 0.0,
                   "proposal_cas": "average", "extent_fallback": False,
                   "outer_outside": "ignored"},
    "extent-loc0.5": {"extent": "localization", "contrast_loc_weight": 0.5,
                      "proposal_cas": "average", "extent_fallback": False,
                      "outer_outside": "ignored"},
    "own-extent0.5": {"extent": "proposal", "contrast_loc_weight": 0.5,
                      "proposal_cas": "average", "outer_outside": "ignored"},
    # Cut from C_cls (docs/experiments/2026-11-27-proposal-cas.md), without the
    # fallback, and with each proposal's own segment (CL's scoring), all with the
    # outer region's part past the video's ends left out, as then.
    "cut-cls": {"proposal_cas": "classification", "outer_outside": "ignored"},
    "cut-cls-nofallback": {"proposal_cas": "classification", "extent_fallback": False,
                           "outer_outside": "ignored"},
    "cut-cls-own": {"proposal_cas": "classification", "extent": "proposal",
                    "outer_outside": "ignored"},
    # The default scoring (with the neutral outer region) and each proposal's own segment.
    "own-extent": {"extent": "proposal"},
}


def rescore(c, run_dir: str, variants) -> dict:
  """Validation summaries of a finished run's final state under inference ``variants``.

  Each is cached in ``run_dir/validation-<variant>.json`` with its overrides
  (recomputed when the variant's definition changed).
  """
  out, todo = {}, []
  for name in variants:
    path = os.path.join(run_dir, f"validation-{name}.json")
    if os.path.exists(path):
      with open(path) as f:
        cached = json.load(f)
      if cached.get("inference") == INFERENCE[name]:
        out[name] = cached["summary"]
        continue
    todo.append(name)
  if not todo:
    return out
  from jaxseg import evaluate, workdir  # noqa: PLC0415 (only when re-scoring)
  run = workdir.load_run(c, run_dir, which="final")
  for name in todo:
    cv = config_lib.with_overrides(c, **{f"inference.{k}": v
                                         for k, v in INFERENCE[name].items()},
                                   **{"inference.rules": "jaxseg"})
    # A variant's overrides are rules of their own ("jaxseg": the fields as set);
    # no overrides is the run's own rules, as its training chose them.
    _, res, _ = evaluate.choose_rules(
        cv if INFERENCE[name] else c, run.model, run.state.params, run.data.validation)
    out[name] = res["summary"]
    io.atomic_write_text(os.path.join(run_dir, f"validation-{name}.json"), json.dumps(
        {"inference": INFERENCE[name], "summary": out[name]}))
  return out


def base_config(quick: bool):
  """The small training setup every world shares."""
  if quick:
    c = test_config.get_config()
    c.train.num_steps = 6
    c.train.eval_every = 6
    return c
  return synthetic_small.get_config()


def world_config(base, world: str, arm: str, seed: int, overrides: dict,
                 quick: bool = False):
  c = config_lib.with_overrides(base, **{f"data.synthetic.{k}": v
                                          for k, v in world_overrides(base, world).items()})
  if c.data.synthetic.feature_dim != c.data.feature_dim:
    # The 2048-d world: the same videos and steps; f 256 wide, for the 2-core CPU.
    c.data.feature_dim = c.data.synthetic.feature_dim
    if quick:
      c.data.synthetic.num_train = min(c.data.synthetic.num_train, 40)
      c.data.synthetic.num_test = min(c.data.synthetic.num_test, 8)
    else:
      c.model.embed_dim = 256
  c = config_lib.with_overrides(c, **{**overrides, **ARMS[arm]})  # the arm wins
  c.seed = base.seed + seed
  c.labels.seed = base.labels.seed + seed
  c.train.progress = False
  return c


def run_path(out: str, world: str, arm: str, seed: int) -> str:
  """The run directory of one (world, arm, seed) under ``out``."""
  return os.path.join(out, "runs", world, arm, f"seed{seed}")


def job_config(base, out: str, data_root: str, world: str, arm: str, seed: int,
               overrides: dict, quick: bool):
  """The config of one run, its world generated under ``data_root`` (or ``out/data``)."""
  c = world_config(base, world, arm, seed, overrides, quick)
  c.data.synthetic.output_dir = os.path.join(data_root or os.path.join(out, "data"), world)
  if c.train.validation_fraction <= 0:
    raise ValueError("the robustness runs score on validation: "
                     "train.validation_fraction must be > 0")
  return c


def validation_run(c, run_dir: str) -> dict:
  """Trains ``c`` into ``run_dir`` unless done; its final validation summary."""
  done = os.path.join(run_dir, "validation.json")
  if not os.path.exists(done):
    train.train_and_evaluate(c, run_dir, evaluate=False)
    io.atomic_write_text(done, json.dumps(ablation.validation_result(run_dir)))
  with open(done) as f:
    return json.load(f)["final"]


def generate_world(c) -> str:
  """Generates (or finds) the synthetic world of ``c``; its folder."""
  from jaxseg.data import readers  # noqa: PLC0415 (in a worker process)
  readers.load_dataset(c.data)
  return c.data.synthetic.output_dir


def reported_run(c, run_dir: str) -> dict:
  """Trains and evaluates ``c`` into ``run_dir`` unless done: the run's
  ``results.json`` (test split, final checkpoint, under the rules chosen on
  validation) and ``rules.json`` (every candidate's validation summary)."""
  if not os.path.exists(os.path.join(run_dir, "results.json")):
    train.train_and_evaluate(c, run_dir)
  out = {}
  for name in ("results", "rules"):
    with open(os.path.join(run_dir, f"{name}.json")) as f:
      out[name] = json.load(f)
  return out


def _job(args) -> str:
  c, run_dir, variants, split = args
  if split == "test":
    reported_run(c, run_dir)
    return run_dir
  validation_run(c, run_dir)
  if variants:
    rescore(c, run_dir, variants)
  return run_dir


def _run_parallel(jobs: int, configs: dict, runs: list, variants: list, split: str) -> None:
  """Generates each world once, then trains ``runs`` in ``jobs`` processes at once.

  Each process is a fresh interpreter (``spawn``: JAX does not survive a fork)
  that allocates accelerator memory as it needs it, so several share one GPU.
  """
  import concurrent.futures as cf  # noqa: PLC0415
  import multiprocessing as mp  # noqa: PLC0415
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
    for path in pool.map(generate_world, configs.values()):
      print(f"data: {path}", flush=True)
    for run_dir in pool.map(_job, [(c, d, variants, split) for c, d in runs]):
      print(f"done: {run_dir}", flush=True)


def run(out: str, *, worlds, arms, seeds: int, quick: bool, split: str,
        overrides: dict, data_root: str = "", inference=("defaults",),
        first_seed: int = 0, jobs: int = 1) -> pd.DataFrame:
  for what, names, known in (("world", worlds, WORLDS), ("arm", arms, ARMS),
                             ("inference variant", inference, {"defaults", *INFERENCE})):
    unknown = [n for n in names if n not in known]
    if unknown:
      raise ValueError(f"robustness: unknown {what}(s) {unknown}; known: {sorted(known)}")
  base = base_config(quick)
  grid = [(w, a, s) for w in worlds for a in arms for s in range(first_seed, seeds)]
  configs = {key: job_config(base, out, data_root, *key, overrides, quick) for key in grid}
  if jobs > 1:
    first = {}
    for (w, _, _), c in configs.items():
      first.setdefault(w, c)
    _run_parallel(jobs, first, [(configs[k], run_path(out, *k)) for k in grid],
                  [v for v in inference if v != "defaults"], split)
  rows = []
  for (world, arm, seed), c in configs.items():
    run_dir = run_path(out, world, arm, seed)
    if split == "test":
      rows += report_rows(reported_run(c, run_dir), world=world, arm=arm, seed=seed,
                          overrides=overrides)
      continue
    summary = validation_run(c, run_dir)
    summaries = {"defaults": summary}
    if split == "validation" and set(inference) - {"defaults"}:
      summaries.update(rescore(c, run_dir, [v for v in inference if v != "defaults"]))
    for name in inference:
      s = summaries[name]
      rows.append({"world": world, "arm": arm, "seed": seed, "split": split,
                   "inference": name,
                   "overrides": json.dumps(overrides, sort_keys=True), **s})
      print(f"{world:15s} {arm:8s} seed {seed} {name:16s}: "
            f"mAP@0.1 {s.get('mAP@0.1', 0):.1f} mAP@0.5 {s.get('mAP@0.5', 0):.1f}",
            flush=True)
  df = pd.DataFrame(rows)
  os.makedirs(out, exist_ok=True)
  io.atomic_write_text(os.path.join(out, "robustness.csv"), df.round(4).to_csv(index=False))
  io.atomic_write_text(os.path.join(out, "robustness.md"), markdown(df, split, overrides))
  return df


def report_rows(record: dict, *, world: str, arm: str, seed: int, overrides: dict) -> list:
  """Rows of one reported run: each rule candidate's validation score (final
  checkpoint), the chosen one's as ``auto``, and the test score under the
  chosen rules as ``auto`` on split ``test``."""
  base = {"world": world, "arm": arm, "seed": seed,
          "overrides": json.dumps(overrides, sort_keys=True)}
  choice = record["rules"]["final"]
  rows = [{**base, "split": "validation", "inference": name, **summary}
          for name, summary in choice["candidates"].items()]
  if choice["candidates"]:
    rows.append({**base, "split": "validation", "inference": "auto", "chosen": choice["chosen"],
                 **choice["candidates"][choice["chosen"]]})
  test = {k: v for k, v in record["results"]["final"].items() if k != "step"}
  rows.append({**base, "split": "test", "inference": "auto", "chosen": choice["chosen"], **test})
  for r in rows:
    print(f"{world:15s} {arm:8s} seed {seed} {r['split']:10s} {r['inference']:8s}: "
          f"mAP@0.1 {r.get('mAP@0.1', 0):.1f} mAP@0.5 {r.get('mAP@0.5', 0):.1f}", flush=True)
  return rows


def markdown(df: pd.DataFrame, split: str, overrides: dict) -> str:
  metrics = [m for m in ("mAP@0.1", "mAP@0.5", "avg0.1:0.5") if m in df.columns]
  keys = ["world", "arm", "inference"]
  if "split" in df.columns and df.split.nunique() > 1:
    keys = ["split", *keys]
  mean = df.groupby(keys, sort=False)[metrics].mean().round(1)
  lines = [f"# Robustness: {split} split, final checkpoint, mean over "
           f"{df.seed.nunique()} seed(s); overrides {overrides or 'none'}", ""]
  lines += [mean.reset_index().to_markdown(index=False), ""]
  index = [k for k in keys if k != "arm"]
  for arm in [a for a in df.arm.unique() if a != "CL"]:
    if "CL" not in set(df.arm):
      break
    per_world = mean.reset_index().set_index(index)
    gain = (per_world[per_world.arm == arm][metrics]
            - per_world[per_world.arm == "CL"][metrics]).dropna().round(1)
    lines += [f"{arm} minus CL, same inference (points):", "", gain.to_markdown(), ""]
  if "CL" in set(df.arm) and "split" in df.columns and "test" in set(df.split):
    lines += paired_markdown(df)
  return "\n".join(lines)


def paired_markdown(df: pd.DataFrame) -> list:
  """Each arm minus CL on the same world and seed (test split, rules as chosen on
  validation): mean ± standard error over seeds, at tIoU 0.1 and 0.5."""
  test = df[(df.split == "test") & (df.inference == "auto")]
  cl = test[test.arm == "CL"].set_index(["world", "seed"])
  rows = []
  for (world, arm), g in test[test.arm != "CL"].groupby(["world", "arm"], sort=False):
    g = g.set_index(["world", "seed"])
    row = {"world": world, "arm": arm, "seeds": len(g)}
    for m in ("mAP@0.1", "mAP@0.5"):
      d = (g[m] - cl[m]).dropna()
      se = d.std(ddof=1) / len(d) ** 0.5 if len(d) > 1 else float("nan")
      row[f"{m} - CL"] = f"{d.mean():+.1f} ± {se:.1f}"
    if "chosen" in g.columns:
      row["chosen"] = ", ".join(f"{k} {v}" for k, v in g.chosen.value_counts().items())
    rows.append(row)
  return ["Paired with CL (same world and seed), test split under the rules chosen on "
          "validation; mean ± standard error over seeds:", "",
          pd.DataFrame(rows).to_markdown(index=False), ""]


def _value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="benchmarks/out/robustness")
  p.add_argument("--worlds", default=",".join(WORLDS))
  p.add_argument("--arms", default="CL,CL+PSL,full")
  p.add_argument("--seeds", type=int, default=2)
  p.add_argument("--first-seed", type=int, default=0,
                 help="run seeds first-seed .. seeds-1 only (add a seed to a finished family)")
  p.add_argument("--data-root", default="", help="where the worlds are generated "
                 "(default: OUT/data); share it between invocations")
  p.add_argument("--jobs", type=int, default=1,
                 help="train this many runs at once, each in its own process (a GPU "
                 "or many cores; validation only)")
  p.add_argument("--quick", action="store_true", help="1 world, tiny runs (the test suite)")
  p.add_argument("--split", choices=config_lib.ABLATION_SPLITS, default="validation")
  p.add_argument("--inference", default="defaults",
                 help=f"inference variants re-scored on validation, of {','.join(INFERENCE)}")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="config override for every run, e.g. loss.topk_count=instances")
  a = p.parse_args(argv)
  worlds = a.worlds.split(",")
  arms = a.arms.split(",")
  seeds = a.seeds
  if a.quick:
    worlds, arms, seeds = ["relu"], ["CL", "full"], 1
  overrides = dict((kv.split("=", 1)[0], _value(kv.split("=", 1)[1])) for kv in a.set)
  df = run(a.out, worlds=worlds, arms=arms, seeds=seeds, quick=a.quick, split=a.split,
           overrides=overrides, data_root=a.data_root,
           inference=tuple(a.inference.split(",")), first_seed=a.first_seed,
           jobs=a.jobs)
  print(markdown(df, a.split, overrides))
  return df


if __name__ == "__main__":
  main()
