"""Re-scores finished robustness runs under the scorings of round 7 (docs/paper-notes.md).

The runs of ``benchmarks/robustness.py --out RUNS --arms CL,full,full-all
--seeds 3`` trained before ``inference.proposal_cas`` and
``inference.extent_fallback`` existed are loaded with the inference fields they
were trained under, and each variant's ``config.inference`` is applied for
scoring only (no retraining; validation split, final checkpoint):

  python benchmarks/results/robustness/cut-cls/cpu_rescore.py --runs RUNS/runs \\
      --data-root DATA > benchmarks/results/robustness/cut-cls/cpu-seeds0-2.csv
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))))))

from benchmarks import robustness  # noqa: E402
from jaxseg import evaluate, workdir  # noqa: E402
from jaxseg import config as config_lib  # noqa: E402

# The inference the runs were trained and stored under (their config.json).
STORED = {"extent": "proposal", "contrast_loc_weight": 0.5, "proposal_cas": "average",
          "extent_fallback": False}
# name -> config.inference overrides on top of today's defaults (the CL arm
# keeps its own extent: it trains no C_loc).
VARIANTS = {"defaults": {}, **{k: robustness.INFERENCE[k] for k in
                               ("cut-cls-nofallback", "extent-loc", "own-extent0.5")}}
METRICS = ("mAP@0.1", "mAP@0.3", "mAP@0.5", "mAP@0.7", "avg0.1:0.7")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--runs", required=True)
  p.add_argument("--data-root", required=True)
  p.add_argument("--worlds", default=",".join(robustness.WORLDS))
  p.add_argument("--seeds", type=int, default=3)
  a = p.parse_args()
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
          s = evaluate.evaluate_params(cv, run.model, run.state.params,
                                       run.data.validation)["summary"]
          print(f"{world},{arm},{seed},{name}," + ",".join(f"{s[m]:.4f}" for m in METRICS),
                flush=True)


if __name__ == "__main__":
  main()
