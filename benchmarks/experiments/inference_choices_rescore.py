"""Inference choices re-scored on the validation hold-out, on trained runs.

The experiment docs/experiments/2026-11-26-inference-choices-on-the-default-world.md:
each trained run (``RUNS/<arm>/seed<i>``, as ``benchmarks/robustness.py``
lays them out) is loaded with its own ``config.json`` and its validation
videos are scored under section 4.7's inference fields, one at a time and all
five together, on top of the run's own inference fields (no retraining;
final checkpoint; the test split is not read). It ran as::

  python benchmarks/experiments/inference_choices_rescore.py \\
      --runs benchmarks/results/robustness/labels/runs/default \\
      > benchmarks/results/robustness/choices/inference.md

on the ``full`` and ``CL+PSL`` runs of ``benchmarks/results/robustness/labels/``
(seeds 0-1), whose inference fields were then the normalized contrast plus
``p_a``. A run written before a field existed is read with that field's
earlier behaviour (``config.ADDED_FIELDS``), so it is scored as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from jaxseg import config as config_lib  # noqa: E402
from jaxseg import evaluate, workdir  # noqa: E402
from jaxseg import rules as rules_lib  # noqa: E402

# name -> config.inference overrides on top of the run's own fields.
VARIANTS = {
    "jaxseg defaults": {},
    "score_source=average (4.7)": {"score_source": "average"},
    "contrast_on=raw": {"contrast_on": "raw"},
    "class_score=s_a": {"class_score": "s_a"},
    "class_top_ratio=0": {"class_top_ratio": 0.0},
    "keep_top_class=False": {"keep_top_class": False},
    "all five as printed": {"score_source": "average", "contrast_on": "raw", "class_score": "s_a",
                            "class_top_ratio": 0.0, "keep_top_class": False},
}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--runs", required=True,
                 help="one world's runs: RUNS/<arm>/seed<i> (robustness.py's OUT/runs/WORLD)")
  p.add_argument("--arms", default="full,CL+PSL")
  p.add_argument("--seeds", type=int, default=2)
  a = p.parse_args(argv)
  rows = {}
  for arm in a.arms.split(","):
    for seed in range(a.seeds):
      wd = os.path.join(a.runs, arm, f"seed{seed}")
      with open(os.path.join(wd, "config.json")) as f:
        cfg = ml_collections.ConfigDict(config_lib.with_added_fields(json.load(f)))
      run = workdir.load_run(cfg, wd, which="final")
      for name, ov in VARIANTS.items():
        c = config_lib.with_overrides(cfg, **{f"inference.{k}": v for k, v in ov.items()})
        # The inference fields as set (the "jaxseg" rules), whatever inference.rules says.
        rules = rules_lib.from_config(c.inference, "jaxseg")
        s = evaluate.evaluate_params(c, run.model, run.state.params, run.data.validation,
                                     rules=rules)["summary"]
        rows.setdefault((arm, name), []).append((s["mAP@0.1"], s["mAP@0.5"], s["avg0.1:0.5"]))
  world = os.path.basename(os.path.normpath(a.runs))
  print(f"# Inference choices on the validation hold-out ({world} world, final checkpoints, "
        f"seeds 0-{a.seeds - 1}, mean)\n")
  print("| model | inference | mAP@0.1 | mAP@0.5 | avg0.1:0.5 |\n"
        "| --- | --- | ---: | ---: | ---: |")
  for (arm, name), v in rows.items():
    m = np.mean(v, axis=0)
    print(f"| {arm} | {name} | {m[0]:.1f} | {m[1]:.1f} | {m[2]:.1f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
