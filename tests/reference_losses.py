"""Independent float64 NumPy references for the losses, straight from the paper.

Each function loops over the videos of the batch and only looks at the first
``lengths[b]`` (real) steps of each, so padding cannot influence it. No code is
shared with :mod:`jaxseg.losses`. Equation numbers refer to the paper.
"""

from __future__ import annotations

import math

import numpy as np


def _f64(x):
  return np.asarray(x, np.float64)


def _batch_mean(values, lengths):
  kept = [v for v, l in zip(values, lengths) if l > 0]
  return float(np.mean(kept)) if kept else 0.0


def topk_k(lengths, num_labeled, mode="labeled", ratio=8.0):
  """k = max(1, floor(l / r)), r = 2Q (Q > 0, mode labeled) or r = ratio."""
  out = []
  for l, q in zip(lengths, num_labeled):
    r = 2 * int(q) if (mode == "labeled" and q > 0) else ratio
    out.append(max(1, int(math.floor(int(l) / r))))
  return np.array(out)


def labeled_instances(segment_labels, lengths):
  """Q counted as instances: runs of consecutive labeled steps of each class."""
  u = np.asarray(segment_labels) > 0
  out = []
  for b, l in enumerate(lengths):
    runs = 0
    for n in range(u.shape[2]):
      runs += sum(1 for t in range(l) if u[b, t, n] and (t == 0 or not u[b, t - 1, n]))
    out.append(runs)
  return np.array(out)


def class_scores(cas, lengths, k):
  """Eq. 2, per video: mean of the k largest of each class column."""
  cas = _f64(cas)
  out = np.zeros((cas.shape[0], cas.shape[2]))
  for b, l in enumerate(lengths):
    if l == 0:
      continue
    kk = min(max(int(k[b]), 1), int(l))
    for n in range(cas.shape[2]):
      column = sorted(cas[b, :l, n], reverse=True)
      out[b, n] = sum(column[:kk]) / kk
  return out


def classification_loss(cas, labels, lengths, k, normalization="classes"):
  """Eq. 2-4 (``classes``: 1/N as printed; ``labels``: W-TALC's y / sum y)."""
  s = class_scores(cas, lengths, k)
  labels = _f64(labels)
  values = []
  for b in range(s.shape[0]):
    e = np.exp(s[b] - s[b].max())
    p = e / e.sum()  # eq. 3
    n_cls = s.shape[1]
    ce = sum(-labels[b, n] * math.log(p[n]) for n in range(n_cls))
    if normalization == "classes":
      values.append(ce / n_cls)
    else:
      count = labels[b].sum()
      values.append(ce / count if count > 0 else 0.0)
  return _batch_mean(values, lengths)


def normalized_cas(cas, lengths):
  """Eq. 5: softmax over the real steps of each class; 0 on padding."""
  cas = _f64(cas)
  a = np.zeros_like(cas)
  for b, l in enumerate(lengths):
    for n in range(cas.shape[2]):
      column = cas[b, :l, n]
      e = np.exp(column - column.max()) if l else column
      a[b, :l, n] = e / e.sum() if l else e
  return a


def partial_segment_loss(cas, segment_labels, lengths, normalization="none"):
  """Eq. 6: sum over labeled (t, n) of -log a(t, n); with ``"instances"``,
  the sum over runs of consecutive labeled steps of a class of the run's mean."""
  a = normalized_cas(cas, lengths)
  u = _f64(segment_labels)
  values = []
  for b, l in enumerate(lengths):
    total = 0.0
    for n in range(u.shape[2]):
      run = []
      for t in range(l + 1):
        if t < l and u[b, t, n] == 1:
          run.append(-math.log(a[b, t, n]))
        elif run:
          total += sum(run) / (len(run) if normalization == "instances" else 1)
          run = []
    values.append(total)
  return _batch_mean(values, lengths)


def sphere_psi(theta, m):
  """SphereFace: (-1)^k cos(m theta) - 2k, theta in [k pi/m, (k+1) pi/m]."""
  k = min(int(math.floor(m * theta / math.pi)), m - 1)
  return (-1) ** k * math.cos(m * theta) - 2 * k


def sphere_loss(features, cas, labels, lengths, weight, margin):
  """Eq. 7-10, one A-Softmax term per present class (see docs/decisions.md#eq-9-the-1d-sum-fni-and-the-sphere-weight-w and #eq-10-which-classes-enter-the-sphere-loss)."""
  f_all = _f64(features)
  a_all = normalized_cas(cas, lengths)
  y = _f64(labels)
  w = _f64(weight)
  w_hat = w / np.linalg.norm(w, axis=1, keepdims=True)
  n_cls = w.shape[0]
  values = []
  for b, l in enumerate(lengths):
    total = 0.0
    for n in range(n_cls):
      if l == 0 or y[b, n] != 1:
        continue
      a = a_all[b, :l, n]
      tau = np.median(a)
      att = np.where(a >= tau, a, 0.0)  # eq. 7
      big_f = f_all[b, :l].T @ att  # eq. 8
      norm = np.linalg.norm(big_f)
      logits = np.zeros(n_cls)
      for j in range(n_cls):
        if norm == 0:
          continue
        cos = float(np.clip(w_hat[j] @ big_f / norm, -1.0, 1.0))
        theta = math.acos(cos)
        logits[j] = norm * (sphere_psi(theta, margin) if j == n else cos)
      shift = logits.max()
      log_den = shift + math.log(np.exp(logits - shift).sum())
      total += -(logits[n] - log_den)  # eq. 9
    values.append(total)  # eq. 10
  return _batch_mean(values, lengths)


def propagation_loss(features, cas, lengths, similarity="dot", normalization="none"):
  """Eq. 13 summed over classes: sum_n sum_ij S_ij (C(i,n) - C(j,n))^2.

  ``similarity="cosine"``: S_ij = f_i.f_j / (|f_i| |f_j|) (0 for a zero row);
  ``normalization="pairs"``: the video's sum divided by l^2.
  """
  f_all = _f64(features)
  c_all = _f64(cas)
  values = []
  for b, l in enumerate(lengths):
    f = f_all[b, :l]
    s = np.zeros((l, l))
    for i in range(l):
      for j in range(l):
        s[i, j] = float(np.dot(f[i], f[j]))
        if similarity == "cosine":
          ni, nj = np.linalg.norm(f[i]), np.linalg.norm(f[j])
          s[i, j] = s[i, j] / (ni * nj) if ni > 0 and nj > 0 else 0.0
    total = 0.0
    for i in range(l):
      for j in range(l):
        total += s[i, j] * float(np.sum((c_all[b, i] - c_all[b, j]) ** 2))
    if normalization == "pairs" and l > 0:
      total /= l * l
    values.append(total)
  return _batch_mean(values, lengths)
