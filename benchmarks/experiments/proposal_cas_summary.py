"""The summary table of the proposal-CAS runs from seeds0-4/, seeds5-9/ and seeds10-19/.

The experiment docs/experiments/2026-11-27-proposal-cas.md ("Confirmed on new
runs"): mean over seeds 0-9 of CL (video-level labels), the full model with
one-segment labels (`full`) and with full labels (`full-all`), the defaults of
that day, and the paired-by-seed differences with their standard error
(sample std / sqrt(n)). Seeds 10-19 (long-instance and AR(0.9) worlds, full
model only) enter the full-labels comparison only, with their own mean. It
reads the robustness.csv files of benchmarks/results/robustness/cut-cls/ and
ran as::

  python benchmarks/experiments/proposal_cas_summary.py > benchmarks/results/robustness/cut-cls/summary.md
"""

import argparse
import os

import numpy as np
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "robustness", "cut-cls")
WORLDS = ["default", "white-noise", "ar0.9-noise", "relu", "hard-snr", "easy-snr",
          "long-instances", "d2048", "d2048-relu-ar0.9"]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--results", default=RESULTS,
                 help="the folder holding seeds0-4/, seeds5-9/ and seeds10-19/")
  a = p.parse_args(argv)
  df = pd.concat([pd.read_csv(os.path.join(a.results, d, "robustness.csv"))
                  for d in ("seeds0-4", "seeds5-9", "seeds10-19")])
  df = df[df.arm.isin(["CL", "full", "full-all"])]

  def per_seed(arm, inference, metric):
    x = df[(df.arm == arm) & (df.inference == inference)]
    return x.pivot(index="world", columns="seed", values=metric).reindex(WORLDS)

  print("# Validation, final checkpoint, one H200; mean over seeds 0-9, and paired "
        "difference ± its standard error (full labels against one-segment: every "
        "seed run, 0-19 on two worlds)\n")
  for metric in ("mAP@0.1", "mAP@0.5", "avg0.1:0.7"):
    cl, one, full = (per_seed(a, "defaults", metric) for a in ("CL", "full", "full-all"))
    one_nf = per_seed("full", "cut-cls-nofallback", metric)
    full_nf = per_seed("full-all", "cut-cls-nofallback", metric)
    rows = []
    ten = [s for s in cl.columns if s < 10]

    def paired(a, b):
      d = (a - b).dropna()
      return f"{d.mean():+.1f} ± {d.std() / np.sqrt(len(d)):.1f}", len(d)

    for w in WORLDS:
      d1, _ = paired(one.loc[w, ten], cl.loc[w, ten])
      d2, n2 = paired(full.loc[w], one.loc[w])
      rows.append({"world": w, "CL": cl.loc[w, ten].mean(),
                   "one-segment": one.loc[w, ten].mean(),
                   "full labels": full.loc[w, ten].mean(),
                   "one-segment - CL": d1,
                   "full - one-segment": d2, "seeds of it": n2,
                   "one-segment, no fallback": one_nf.loc[w, ten].mean(),
                   "full labels, no fallback": full_nf.loc[w, ten].mean()})
    print(f"## {metric}\n")
    print(pd.DataFrame(rows).round(1).to_markdown(index=False))
    print()


if __name__ == "__main__":
  main()
