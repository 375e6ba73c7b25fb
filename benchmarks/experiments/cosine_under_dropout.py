"""Mean pairwise cosine of segment features with and without dropout.

The experiment docs/experiments/2026-11-26-cosine-similarity-under-dropout.md:
how much independent dropout masks shrink the cosine similarity ``S`` of
eq. 13. No training: the first 20 training videos (``video_validation_*``)
of a generated synthetic world, every pair ``i != j`` of a video's segments,
dropout at 0, 0.5 and 0.7 (NumPy generator, seed 0), on the features as
generated and on ReLU features (each video's features minus their mean,
clipped at 0). It ran on the default world that ``benchmarks/robustness.py``
generates; to reproduce::

  python benchmarks/robustness.py --out runs/robustness --worlds default --arms full --seeds 1
  python benchmarks/experiments/cosine_under_dropout.py --features runs/robustness/data/default/features

which prints the six numbers of that file's table (the generator is seeded:
the same world, the same numbers).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np


def mean_cos(f: np.ndarray) -> float:
  """Mean cosine similarity over the pairs ``i != j`` of the rows of ``f``."""
  u = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
  s = u @ u.T
  n = len(f)
  return float((s.sum() - np.trace(s)) / (n * (n - 1)))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--features", required=True,
                 help="a generated world's features folder (<data root>/<world>/features)")
  p.add_argument("--videos", type=int, default=20, help="how many training videos")
  a = p.parse_args(argv)
  files = sorted(glob.glob(os.path.join(a.features, "video_validation_*.npy")))[:a.videos]
  if not files:
    p.error(f"no video_validation_*.npy under {a.features}")
  rng = np.random.default_rng(0)
  for name, fn in (("features x (softplus)", lambda x: x),
                   ("relu(x - mean)", lambda x: np.maximum(x - x.mean(0), 0))):
    for rate in (0.0, 0.5, 0.7):
      vals = []
      for path in files:
        f = fn(np.load(path))
        if rate:
          f = f * (rng.random(f.shape) >= rate)
        vals.append(mean_cos(f))
      print(f"{name:22s} dropout {rate}: mean pairwise cosine {np.mean(vals):.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
