"""The generative model of one synthetic video: where its instances, cores and
distractors lie (:func:`sample_layout`) and its features (:func:`video_features`).

:mod:`jaxseg.data.synthetic` draws the classes and videos and writes the
dataset; docs/synthetic-data.md describes the model and the world knobs.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# ``p: SyntheticParams`` below is jaxseg.data.synthetic.SyntheticParams (not
# imported: that module imports this one).


# ------------------------------------------------------------------ layout


@dataclasses.dataclass
class _SynthInstance:
  first: int  # inclusive segment range of the instance
  last: int
  label: int
  core_first: int  # inclusive segment range of its (first) discriminative core
  core_last: int
  # Every core as (first, last), the first one above (several with
  # class_evidence "cores"; the bump's middle with "spread"); () : that one.
  cores: tuple[tuple[int, int], ...] = ()


def sample_length(rng: np.random.Generator, p: SyntheticParams) -> int:
  t = p.median_length * math.exp(p.length_sigma * rng.standard_normal())
  return int(np.clip(round(t), p.min_length, p.max_length))


def _place_cores(rng: np.random.Generator, first: int, ell: int,
                 p: SyntheticParams) -> tuple[tuple[int, int], ...]:
  """``class_evidence="cores"``: the cores of the instance ``first .. first +
  ell - 1``: up to ``num_cores`` runs of ``max(1, round(core_fraction /
  num_cores * ell))`` segments, at least one segment apart, the gaps uniform
  (each arrangement equally likely)."""
  core_len = max(1, int(round(p.core_fraction / p.num_cores * ell)))
  m = max(1, min(p.num_cores, (ell + 1) // (core_len + 1)))
  free = ell - m * core_len - (m - 1)
  slots = np.sort(rng.choice(free + m, size=m, replace=False))
  starts = [first + int(c) + j * core_len for j, c in enumerate(slots)]
  return tuple((a, a + core_len - 1) for a in starts)


def sample_layout(rng: np.random.Generator, num_segments: int,
                   class_medians: np.ndarray, p: SyntheticParams,
                   extra_rng: np.random.Generator | None = None) -> list[_SynthInstance]:
  """Non-overlapping instances (with at least one background segment between
  two instances) covering about ``coverage`` of the video.

  The cores of ``class_evidence="cores"`` are drawn from ``extra_rng``, so
  ``rng`` makes the same draws in every class_evidence world."""
  t_len = num_segments
  a = p.coverage_mean * p.coverage_concentration
  b = (1.0 - p.coverage_mean) * p.coverage_concentration
  coverage = float(rng.beta(a, b))
  primary = int(rng.integers(p.num_classes))
  classes = [primary]
  if rng.random() < p.two_class_fraction:
    other = int(rng.integers(p.num_classes - 1))
    classes.append(other + (other >= primary))
  target = coverage * t_len
  max_inst = max(1, t_len // 2)
  labels: list[int] = []
  lengths: list[int] = []
  while not lengths or sum(lengths) < target or len(lengths) < len(classes):
    if len(lengths) < len(classes):
      c = classes[len(lengths)]
    else:
      c = classes[int(rng.integers(len(classes)))]
    ell = class_medians[c] * math.exp(p.instance_length_sigma * rng.standard_normal())
    if rng.random() < p.long_instance_prob:
      ell *= rng.uniform(*p.long_instance_factor)
    labels.append(c)
    lengths.append(int(np.clip(round(ell), 1, max_inst)))
  # Fit: instances plus one background segment between neighbours, and keep at
  # least 30% of the video as background.
  while len(lengths) > 1 and (sum(lengths) + len(lengths) - 1 > 0.7 * t_len):
    lengths.pop()
    labels.pop()
  if sum(lengths) > 0.7 * t_len:
    lengths[0] = max(1, int(0.7 * t_len))
  order = rng.permutation(len(lengths))
  lengths = [lengths[i] for i in order]
  labels = [labels[i] for i in order]
  n = len(lengths)
  free = t_len - sum(lengths) - (n - 1)
  gaps = rng.multinomial(free, rng.dirichlet(np.ones(n + 1)))
  gaps[1:n] += 1
  out = []
  pos = int(gaps[0])
  for i in range(n):
    ell = lengths[i]
    core_len = max(1, int(round(p.core_fraction * ell)))
    core_first = pos + int(rng.integers(ell - core_len + 1))
    cores = ((core_first, core_first + core_len - 1),)
    if p.class_evidence == "spread":  # no core: its record is the bump's middle
      cores = ((pos + (ell - 1) // 2, pos + ell // 2),)
    elif p.class_evidence == "cores":
      if extra_rng is None:
        raise ValueError("class_evidence='cores' needs extra_rng")
      cores = _place_cores(extra_rng, pos, ell, p)
    out.append(_SynthInstance(pos, pos + ell - 1, labels[i], cores[0][0], cores[0][1],
                              cores))
    pos += ell + int(gaps[i + 1])
  assert pos == t_len, (pos, t_len)
  return out


# ---------------------------------------------------------------- features


def unit_vectors(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
  v = rng.standard_normal((n, d))
  return v / np.linalg.norm(v, axis=1, keepdims=True)


def _smooth_noise(rng: np.random.Generator, t_len: int, d: int) -> np.ndarray:
  """``(T, D)`` unit-variance noise with neighbour correlation 2/3 (kernel
  [1, 2, 1] / sqrt(6)), like temporally smooth I3D features."""
  e = rng.standard_normal((t_len + 2, d))
  return (e[:-2] + 2.0 * e[1:-1] + e[2:]) / math.sqrt(6.0)


def _ar1_noise(rng: np.random.Generator, t_len: int, d: int, rho: float) -> np.ndarray:
  """``(T, D)`` unit-variance AR(1) noise: ``e_t = rho e_{t-1} + sqrt(1 - rho^2) w_t``."""
  w = rng.standard_normal((t_len, d))
  out = np.empty_like(w)
  out[0] = w[0]
  scale = math.sqrt(1.0 - rho * rho)
  for t in range(1, t_len):
    out[t] = rho * out[t - 1] + scale * w[t]
  return out


def spread_profile(ell: int, p: SyntheticParams) -> np.ndarray:
  """``(ell,)`` class strength over an instance with ``class_evidence="spread"``:
  a raised-cosine bump peaking at ``core_strength``, never below
  ``weak_class_strength``."""
  h = np.sin(math.pi * (np.arange(ell) + 0.5) / ell) ** 2
  return p.weak_class_strength + (p.core_strength - p.weak_class_strength) * (h / h.max())


def _context_bands(t_len: int, instances: list[_SynthInstance]) -> dict[int, np.ndarray]:
  """Per class: the segments within one instance length before or after one
  of its instances (instance segments included; callers mask them)."""
  bands: dict[int, np.ndarray] = {}
  for inst in instances:
    ell = inst.last - inst.first + 1
    band = bands.setdefault(inst.label, np.zeros((t_len,), bool))
    band[max(0, inst.first - ell):inst.first] = True
    band[inst.last + 1:inst.last + 1 + ell] = True
  return bands


def _foreign_actions(rng: np.random.Generator, free: np.ndarray, labels: set[int],
                     class_medians: np.ndarray,
                     p: SyntheticParams) -> list[tuple[int, int, int]]:
  """``(first, last, class)`` of the foreign action runs: a Poisson number
  (mean ``foreign_action_rate * free / mean run length``) of runs of a uniform
  class outside ``labels``, each as long as its class's median instance, at a
  uniform place where all its segments are ``free``, one segment apart."""
  foreign = [c for c in range(p.num_classes) if c not in labels]
  num_free = int(free.sum())
  if not foreign or not num_free:
    return []
  free = free.copy()
  lengths = {c: max(1, int(round(class_medians[c]))) for c in foreign}
  mean_len = float(np.mean(list(lengths.values())))
  out = []
  for _ in range(int(rng.poisson(p.foreign_action_rate * num_free / mean_len))):
    c = foreign[int(rng.integers(len(foreign)))]
    ell = lengths[c]
    if ell > len(free):
      continue
    fits = np.convolve(free.astype(np.int64), np.ones(ell, np.int64), "valid") == ell
    starts = np.flatnonzero(fits)
    if not len(starts):
      continue
    a = int(starts[int(rng.integers(len(starts)))])
    out.append((a, a + ell - 1, c))
    free[max(0, a - 1):a + ell + 1] = False
  return out


def video_features(rng: np.random.Generator, t_len: int,
                   instances: list[_SynthInstance], class_dirs: np.ndarray,
                   action_dir: np.ndarray, p: SyntheticParams, *,
                   extra_rng: np.random.Generator | None = None,
                   class_medians: np.ndarray | None = None,
                   foreign_runs: list | None = None) -> np.ndarray:
  """``(T, D) float32`` features: ``softplus(bias + scene + signal + noise)``.

  With ``foreign_action_rate > 0`` the foreign action runs are drawn from
  ``extra_rng`` (so ``rng`` makes the same draws as without them), need
  ``class_medians``, and are appended to ``foreign_runs`` as ``(first, last,
  class)``."""
  d = class_dirs.shape[1]
  if p.noise_ar < 0:
    z = p.noise * _smooth_noise(rng, t_len, d)
  else:
    z = p.noise * _ar1_noise(rng, t_len, d, p.noise_ar)
  z += p.bias
  z += p.scene_strength * unit_vectors(rng, 1, d)
  background = np.ones((t_len,), bool)
  for inst in instances:
    sl = slice(inst.first, inst.last + 1)
    background[sl] = False
    z[sl] += p.action_strength * action_dir
    if p.class_evidence == "spread":
      z[sl] += np.outer(spread_profile(inst.last - inst.first + 1, p), class_dirs[inst.label])
      continue
    z[sl] += p.weak_class_strength * class_dirs[inst.label]
    for core_first, core_last in inst.cores or ((inst.core_first, inst.core_last),):
      core = slice(core_first, core_last + 1)
      z[core] += (p.core_strength - p.weak_class_strength) * class_dirs[inst.label]
  context = np.zeros((t_len,), bool)
  if p.context_strength > 0:
    for c, band in sorted(_context_bands(t_len, instances).items()):
      z[band & background] += p.context_strength * class_dirs[c]
      context |= band
  # Distractor runs of 1-3 segments, only on background segments.
  distracted = np.zeros((t_len,), bool)
  num_bg = int(background.sum())
  num_runs = rng.poisson(p.distractor_rate * num_bg / 2.0) if num_bg else 0
  for _ in range(num_runs):
    start = int(rng.integers(t_len))
    run = np.arange(start, min(t_len, start + int(rng.integers(1, 4))))
    run = run[background[run]]
    distracted[run] = True
    if rng.random() < p.distractor_action_prob:
      z[run] += p.distractor_action_strength * action_dir
    else:
      z[run] += p.distractor_class_strength * class_dirs[int(rng.integers(p.num_classes))]
  if p.foreign_action_rate > 0:
    if extra_rng is None or class_medians is None:
      raise ValueError("foreign_action_rate > 0 needs extra_rng and class_medians")
    free = background & ~distracted & ~context
    runs = _foreign_actions(extra_rng, free, {inst.label for inst in instances},
                            class_medians, p)
    for first, last, c in runs:
      z[first:last + 1] += (p.action_strength * action_dir
                            + p.foreign_action_strength * class_dirs[c])
    if foreign_runs is not None:
      foreign_runs.extend(runs)
  if p.activation == "relu":
    return np.maximum(z, 0.0).astype(np.float32)
  return np.logaddexp(0.0, z).astype(np.float32)  # softplus: non-negative
