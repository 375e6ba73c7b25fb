"""Video classification mAP (the paper's Table 5)."""

from __future__ import annotations

import numpy as np



def classification_ap(video_labels, scores) -> np.ndarray:
  """Average precision of each class over videos (paper Table 5, per class).

  For class ``c``, videos are ranked by ``scores[:, c]`` (descending) and
  ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct score values ``k``
  (scikit-learn's ``average_precision_score``). Without tied scores this is the
  sum over positive videos of the precision at their rank, divided by the
  number of positives (W-TALC's ``getAP``); tied videos share the precision at
  the end of their tie, so the result does not depend on the video order.

  Args:
    video_labels: ``(V, N)`` multi-hot labels in {0, 1} (any numeric or bool dtype).
    scores: ``(V, N)`` finite float scores.

  Returns:
    ``(N,) float64`` AP in [0, 1]; NaN for a class without a positive video.

  Raises:
    ValueError: on mismatched shapes, labels other than 0/1, non-finite scores.
  """
  y = np.asarray(video_labels)
  s = np.asarray(scores, np.float64)
  if y.ndim != 2 or s.shape != y.shape:
    raise ValueError(f"video_labels {y.shape} and scores {s.shape} must both be (V, N)")
  yf = y.astype(np.float64)
  if not np.all((yf == 0) | (yf == 1)):
    raise ValueError("video_labels must be 0 or 1")
  if not np.all(np.isfinite(s)):
    raise ValueError("scores must be finite")
  v, n = y.shape
  out = np.full((n,), np.nan)
  for c in range(n):
    pos = yf[:, c]
    npos = pos.sum()
    if npos == 0:
      continue
    order = np.argsort(-s[:, c], kind="stable")
    ss, yy = s[order, c], pos[order]
    tp_c = np.cumsum(yy)
    # Index of the last video of each video's tie block.
    is_end = np.append(ss[1:] != ss[:-1], True)
    ends = np.flatnonzero(is_end)
    block_end = ends[np.searchsorted(ends, np.arange(v))]
    prec = tp_c[block_end] / (block_end + 1.0)
    out[c] = float(np.sum(yy * prec) / npos)
  return out


def classification_map(video_labels, scores) -> float:
  """Video classification mAP (paper Table 5): mean of :func:`classification_ap`.

  Classes without a positive video are excluded from the mean.

  Args:
    video_labels: ``(V, N)`` multi-hot labels in {0, 1}.
    scores: ``(V, N)`` float scores (e.g. the softmax ``p_a`` of paper 4.7).

  Returns:
    mAP as a fraction in [0, 1].

  Raises:
    ValueError: as :func:`classification_ap`, or if no class has a positive.
  """
  ap = classification_ap(video_labels, scores)
  if not np.any(np.isfinite(ap)):
    raise ValueError("no class has a positive video")
  return float(np.nanmean(ap))
