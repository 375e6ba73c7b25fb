"""Re-scores finished robustness runs under the scorings of the proposal-CAS experiment.

The scorings compared when the proposals were first cut from ``C_cls``.

The experiment docs/experiments/2026-11-27-proposal-cas.md: the runs of
``benchmarks/robustness.py --out RUNS --arms CL,full,full-all --seeds 3``
trained before ``inference.proposal_cas`` and ``inference.extent_fallback``
existed (the ``defaults/`` runs of the embedding and NMS experiment) are
loaded with the inference fields they were trained under, and each variant's
``config.inference`` is applied for scoring only (no retraining; validation
split, final checkpoint). It ran as::

  python benchmarks/experiments/proposal_cas_rescore.py --runs RUNS/runs \\
      --data-root DATA > benchmarks/results/robustness/cut-cls/cpu-seeds0-2.csv

The rows named ``defaults`` are the scoring chosen by that experiment
(proposals cut from ``C_cls``, the fallback, the outer region's part past a
video's end left out: today's ``cut-cls`` variant of ``benchmarks/robustness.py``).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from benchmarks import robustness  # noqa: E402
from jaxseg import config as config_lib  # noqa: E402
from jaxseg import evaluate, workdir  # noqa: E402
from jaxseg import rules as rules_lib  # noqa: E402

# The inference the runs were trained and stored under (their config.json; the
# last two fields did not exist then and read as these values).
STORED = {"extent": "proposal", "contrast_loc_weight": 0.5, "proposal_cas": "average",
          "extent_fallback": False, "outer_outside": "ignored", "rules": "jaxseg"}
# name -> config.inference overrides on top of today's defaults, scored as the
# "jaxseg" rules (the CL arm keeps its own extent: it trains no C_loc).
VARIANTS = {"defaults": robustness.INFERENCE["cut-cls"],
            **{k: robustness.INFERENCE[k] for k in
               ("cut-cls-nofallback", "extent-loc", "own-extent0.5")}}
# The worlds of the family then (robustness.WORLDS has more today).
NINE_WORLDS = ["default", "white-noise", "ar0.9-noise", "relu", "hard-snr", "easy-snr",
               "long-instances", "d2048", "d2048-relu-ar0.9"]
METRICS = ("mAP@0.1", "mAP@0.3", "mAP@0.5", "mAP@0.7", "avg0.1:0.7")


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--runs", required=True, help="robustness.py's OUT/runs")
  p.add_argument("--data-root", required=True, help="the worlds' data root (OUT/data)")
  p.add_argument("--worlds", default=",".join(NINE_WORLDS))
  p.add_argument("--seeds", type=int, default=3)
  a = p.parse_args(argv)
  base = robustness.base_config(False)
  print("world,arm,seed,inference," + ",".join(METRICS), flush=True)
  for world in a.worlds.split(","):
    for arm in ("CL", "full", "full-all"):
      for seed in range(a.seeds):
        c = robustness.world_config(base, world, arm, seed,
                                    {"train.log_to": (), "train.log_images": 0})
        c.data.synthetic.output_dir = os.path.join(a.data_root, world)
        stored = config_lib.with_overrides(c, **{f"inference.{k}": v
                                                  for k, v in STORED.items()})
        run = workdir.load_run(stored, os.path.join(a.runs, world, arm, f"seed{seed}"))
        for name, over in VARIANTS.items():
          if arm == "CL" and name != "defaults":
            continue
          cv = config_lib.with_overrides(c, **{f"inference.{k}": v for k, v in over.items()})
          s = evaluate.evaluate_params(cv, run.model, run.state.params, run.data.validation,
                                       rules=rules_lib.from_config(cv.inference, "jaxseg"))
          s = s["summary"]
          print(f"{world},{arm},{seed},{name}," + ",".join(f"{s[m]:.4f}" for m in METRICS),
                flush=True)


if __name__ == "__main__":
  main()
