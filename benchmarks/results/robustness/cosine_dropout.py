import numpy as np, glob
files = sorted(glob.glob('/tmp/rob14data/default/features/video_validation_*.npy'))[:20]
rng = np.random.default_rng(0)
def mean_cos(f):
  u = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
  s = u @ u.T
  n = len(f); return (s.sum() - np.trace(s)) / (n * (n - 1))
for name, fn in (("features x (softplus)", lambda x: x),
                 ("relu(x - mean)", lambda x: np.maximum(x - x.mean(0), 0))):
  for rate in (0.0, 0.5, 0.7):
    vals = []
    for p in files:
      f = fn(np.load(p))
      if rate: f = f * (rng.random(f.shape) >= rate)
      vals.append(mean_cos(f))
    print(f"{name:22s} dropout {rate}: mean pairwise cosine {np.mean(vals):.3f}")
