"""Inference choices re-scored on the validation hold-out, on trained full-model runs."""
import json, os, sys
sys.path.insert(0, "/work/wt14")
import ml_collections
import numpy as np
from jaxseg import evaluate, workdir
from jaxseg import config as config_lib

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
root = "/work/wt14/benchmarks/results/robustness/labels/runs/default"
rows = {}
for arm in ("full", "CL+PSL"):
  for seed in (0, 1):
    wd = os.path.join(root, arm, f"seed{seed}")
    cfg = ml_collections.ConfigDict(json.load(open(os.path.join(wd, "config.json"))))
    run = workdir.load_run(cfg, wd, which="final")
    for name, ov in VARIANTS.items():
      c = ml_collections.ConfigDict(cfg.to_dict())
      for k, v in ov.items():
        c.inference[k] = v
      s = evaluate.evaluate_params(c, run.model, run.state.params, run.data.validation)["summary"]
      rows.setdefault((arm, name), []).append((s["mAP@0.1"], s["mAP@0.5"], s["avg0.1:0.5"]))
print("# Inference choices on the validation hold-out (default world, final checkpoints, "
      "seeds 0-1, mean)\n")
print("| model | inference | mAP@0.1 | mAP@0.5 | avg0.1:0.5 |\n| --- | --- | ---: | ---: | ---: |")
for (arm, name), v in rows.items():
  m = np.mean(v, axis=0)
  print(f"| {arm} | {name} | {m[0]:.1f} | {m[1]:.1f} | {m[2]:.1f} |")
