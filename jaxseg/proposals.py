"""Proposals of one video (paper 4.7, step 3 of :mod:`jaxseg.inference`): class
selection, thresholded runs of the CAS, their outer-inner contrast scores,
class-wise temporal NMS and each detection's extent from ``C_loc``. Host-side
NumPy, per video."""

from __future__ import annotations

import math
import numpy as np

from jaxseg.config import EXTENT_FALLBACK_OFFSET
from jaxseg.rules import InferenceRules


# ------------------------------------------------------------------------ NMS


def temporal_nms(segments: np.ndarray, scores: np.ndarray,
                 iou_threshold: float) -> np.ndarray:
  """Greedy temporal non-maximum suppression.

  Visits the segments by decreasing score (ties: lower index first) and drops
  every remaining one whose temporal IoU with a kept segment is strictly above
  ``iou_threshold``. A pair with zero union has IoU 0.

  Args:
    segments: ``(K, 2) float`` ``[start, end]`` (any unit).
    scores: ``(K,) float``.
    iou_threshold: suppress when ``IoU > iou_threshold``.

  Returns:
    ``(M,) int64`` indices of the kept segments, by decreasing score.
  """
  segments = np.asarray(segments, np.float64).reshape(-1, 2)
  scores = np.asarray(scores, np.float64).reshape(-1)
  if segments.shape[0] != scores.shape[0]:
    raise ValueError(f"temporal_nms: {segments.shape[0]} segments but "
                     f"{scores.shape[0]} scores")
  starts, ends = segments[:, 0], segments[:, 1]
  lengths = np.maximum(ends - starts, 0.0)
  order = np.argsort(-scores, kind="stable")
  keep = []
  while order.size:
    i = order[0]
    keep.append(i)
    rest = order[1:]
    inter = np.maximum(
        np.minimum(ends[i], ends[rest]) - np.maximum(starts[i], starts[rest]), 0.0)
    union = lengths[i] + lengths[rest] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    order = rest[iou <= iou_threshold]
  return np.asarray(keep, np.int64)


# ------------------------------------------------------------------ proposals


def select_classes(s_a: np.ndarray, p_a: np.ndarray, *, class_threshold: float,
                   class_top_ratio: float, keep_top_class: bool) -> np.ndarray:
  """Classes to localize in one video (paper 4.7).

  A class is kept when ``s_a > class_threshold`` and, if
  ``class_top_ratio > 0``, also ``p_a >= class_top_ratio * max(p_a)``. With
  ``keep_top_class`` the top-1 class (largest ``s_a``, equivalently ``p_a``)
  is always kept, so every video gets detections (as BaSNet/LACP do); without
  it (the paper's rule) a video may get none.

  Args:
    s_a: ``(N,) float`` class scores (eq. 2).
    p_a: ``(N,) float`` class probabilities (eq. 3).
    class_threshold: threshold on ``s_a`` (0 in the paper).
    class_top_ratio: relative threshold on ``p_a`` in ``[0, 1]``; 0: off.
    keep_top_class: always keep the top class.

  Returns:
    ``(C,) int64`` sorted class indices (``C >= 1`` with ``keep_top_class``).
  """
  s_a = np.asarray(s_a, np.float64)
  p_a = np.asarray(p_a, np.float64)
  keep = s_a > class_threshold
  if class_top_ratio > 0:
    keep &= p_a >= class_top_ratio * np.max(p_a)
  if keep_top_class:
    keep[int(np.argmax(s_a))] = True
  return np.flatnonzero(keep)


def _runs(above: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Runs of True along the last axis.

  Args:
    above: ``(R, T) bool``.

  Returns:
    ``(row, t0, t1)``, each ``(P,) int64``: run ``p`` covers ``[t0, t1)`` of
    row ``row``; ordered by row, then time.
  """
  padded = np.pad(above.astype(np.int8), ((0, 0), (1, 1)))
  edges = np.diff(padded, axis=1)  # (R, T + 1): +1 at a start, -1 after an end
  row, t0 = np.nonzero(edges == 1)
  row_end, t1 = np.nonzero(edges == -1)
  assert np.array_equal(row, row_end)  # row-major order pairs them up
  return row, t0, t1


def _oic_scores(cas: np.ndarray, t0: np.ndarray, t1: np.ndarray,
                outer_scale: float, outside: str) -> np.ndarray:
  """Outer-inner contrast of proposals ``[t0, t1)`` on one class's CAS.

  ``inner = mean(X[t0:t1])``; the outer region is ``w = ceil(outer_scale *
  (t1 - t0))`` segments on each side, of which the ``m`` inside the video are
  ``outer``. ``outside = "ignored"``: ``inner - mean(X[outer])`` (``inner``
  when ``m = 0``). ``"neutral"``: the ``2w - m`` segments past the video's
  ends count as ``inner`` (no contrast either way), i.e. ``m / (2w) *
  (inner - mean(X[outer]))``, 0 when ``m = 0`` (``w = 0``: ``inner``).

  Args:
    cas: ``(T,) float`` one class's CAS.
    t0, t1: ``(P,) int`` proposal bounds, ``0 <= t0 < t1 <= T``.
    outer_scale: outer width as a fraction of the proposal length.
    outside: one of ``config.OUTER_OUTSIDE``.

  Returns:
    ``(P,) float64`` the contrast.
  """
  num_t = cas.shape[0]
  csum = np.concatenate([[0.0], np.cumsum(cas, dtype=np.float64)])
  length = t1 - t0
  inner = (csum[t1] - csum[t0]) / length
  # The epsilon keeps e.g. 0.7 * 10 = 7.000000000000001 from rounding up to 8.
  width = np.ceil(outer_scale * length - 1e-9).astype(np.int64)
  width = np.maximum(width, 0)
  o0 = np.maximum(t0 - width, 0)
  o1 = np.minimum(t1 + width, num_t)
  outer_sum = (csum[t0] - csum[o0]) + (csum[o1] - csum[t1])
  outer_cnt = (t0 - o0) + (o1 - t1)
  outer = np.divide(outer_sum, outer_cnt, out=np.zeros_like(outer_sum),
                    where=outer_cnt > 0)
  if outside == "ignored":
    return inner - outer
  # Past the video's ends the outer region counts as the inner mean, which
  # scales the contrast by the share of the outer region inside the video.
  inside = np.divide(outer_cnt, 2 * width, out=np.zeros(length.shape), where=width > 0)
  return np.where(width > 0, inside * (inner - outer), inner)


def _best_container(q0: np.ndarray, q1: np.ndarray, q_fit: np.ndarray,
                    c0: np.ndarray, c1: np.ndarray, c_fit: np.ndarray) -> np.ndarray:
  """For each query proposal, the container proposal of best ``fit`` holding it.

  Args:
    q0, q1: ``(K,) int`` bounds of the queries (the kept proposals).
    q_fit: ``(K,) float`` their own contrast on the extent CAS.
    c0, c1: ``(P,) int`` bounds of the candidate containers (of one class).
    c_fit: ``(P,) float`` their contrast on the extent CAS.

  Returns:
    ``(K,) int``: for query ``i``, the ``j`` with ``c0[j] <= q0[i]``,
    ``c1[j] >= q1[i]`` and the largest ``c_fit[j]`` (the first on ties) when
    that fit is strictly above ``q_fit[i]``; ``-1`` (keep its own segment)
    otherwise.
  """
  if q0.size == 0 or c0.size == 0:
    return np.full(q0.shape, -1, np.int64)
  inside = (c0[None, :] <= q0[:, None]) & (c1[None, :] >= q1[:, None])  # (K, P)
  floor = min(c_fit.min(), q_fit.min()) - 1.0
  masked = np.where(inside, c_fit[None, :], floor)
  best = np.argmax(masked, axis=1)
  better = masked[np.arange(q0.size), best] > q_fit
  return np.where(better, best, -1).astype(np.int64)


def _minmax_rows(x: np.ndarray) -> np.ndarray:
  """Each row of ``x (C, T)`` min-max normalised to [0, 1]; a constant row to 1."""
  lo = x.min(axis=1, keepdims=True)
  span = x.max(axis=1, keepdims=True) - lo
  return np.divide(x - lo, span, out=np.ones_like(x), where=span > 0)


def _class_runs(cas: np.ndarray, thresholds: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
  """Proposals of each class: runs of its min-max normalised CAS above each threshold.

  Args:
    cas: ``(T, C) float`` the CAS of the kept classes.
    thresholds: ``(L,) float``.

  Returns:
    ``C`` pairs ``(t0, t1)`` of ``(P_c,) int64``: run ``[t0, t1)``, by
    threshold, then time.
  """
  num_t, num_c = cas.shape
  norm = _minmax_rows(cas.astype(np.float64).T)  # (C, T)
  above = norm[:, None, :] > thresholds[None, :, None]  # (C, L, T)
  row, t0, t1 = _runs(above.reshape(-1, num_t))
  pos = row // thresholds.size
  return [(t0[pos == p], t1[pos == p]) for p in range(num_c)]


def _in_seconds(t0: np.ndarray, t1: np.ndarray, rate: float,
                duration: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Runs ``[t0, t1)`` as segments in seconds, clipped to ``duration``.

  Returns:
    ``(t0, t1, segs)``: the runs that keep a positive length after clipping
    (those past the annotated duration are dropped), and their ``(P, 2)
    float64`` segments ``[min(t0 / rate, duration), min(t1 / rate, duration)]``.
  """
  segs = np.stack([np.minimum(t0 / rate, duration), np.minimum(t1 / rate, duration)], axis=1)
  valid = segs[:, 1] > segs[:, 0]
  return t0[valid], t1[valid], segs[valid]


def _fall_back(segs: np.ndarray, scores: np.ndarray, keep: np.ndarray, own: np.ndarray,
               iou_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Detections whose grown segment NMS suppressed fall back to their own.

  Visits the kept detections first, then the suppressed ones by decreasing
  score, each with its own segment, and keeps a visited one unless its IoU with
  a kept segment is above ``iou_threshold`` (greedy NMS over both tiers).

  Args:
    segs: ``(K, 2)`` grown segments; ``scores``: ``(K,)`` their scores.
    keep: ``(M,) int`` indices NMS kept, by decreasing score.
    own: ``(K, 2)`` each detection's own segment.
    iou_threshold: the NMS threshold.

  Returns:
    ``(segs, scores, keep)`` over the ``M`` kept and the suppressed ones
    (own segments, scores lowered by ``EXTENT_FALLBACK_OFFSET``).
  """
  lost = np.setdiff1d(np.arange(scores.size), keep)
  if lost.size == 0:
    return segs, scores, keep
  all_segs = np.concatenate([segs[keep], own[lost]])
  all_scores = np.concatenate([scores[keep], scores[lost] - EXTENT_FALLBACK_OFFSET])
  # Visit order: the kept tier first (any order: they do not overlap), then the rest.
  tier = np.concatenate([np.ones(keep.size), scores[lost] - scores[lost].max() - 1.0])
  return all_segs, all_scores, temporal_nms(all_segs, tier, iou_threshold)


def _checked_inputs(cas_a, s_a, p_a, *, feature_rate: float, duration: float,
                    rules: InferenceRules, cas_cls, cas_contrast, cas_extent,
                    video_id: str) -> tuple[np.ndarray, ...]:
  """The inputs of :func:`generate_proposals` as arrays, checked (its Raises).

  Returns:
    ``(cas_a, s_a, p_a, cas_contrast, cas_extent, cas_cut)``: ``(T, N)``
    ``cas_a``; ``(N,) float64`` ``s_a`` and ``p_a``; the ``(T, N)`` CAS of the
    contrast, of the extent step (``cas_a`` when not given) and the one the
    proposals are cut from (``rules.proposal_cas``).
  """
  if not isinstance(rules, InferenceRules):
    raise TypeError("generate_proposals: rules must be a jaxseg.rules.InferenceRules "
                    f"(jaxseg.rules.from_config), got {type(rules).__name__}")
  cas_a = np.asarray(cas_a)
  s_a = np.asarray(s_a, np.float64).reshape(-1)
  p_a = np.asarray(p_a, np.float64).reshape(-1)
  where = f"inference: video {video_id!r}"
  if cas_a.ndim != 2:
    raise ValueError(f"{where}: cas_a must have shape (T, N), got {cas_a.shape}")
  num_classes = cas_a.shape[1]
  if s_a.shape[0] != num_classes or p_a.shape[0] != num_classes:
    raise ValueError(f"{where}: cas_a has {num_classes} classes but s_a/p_a have "
                     f"{s_a.shape[0]}/{p_a.shape[0]}")
  if not (math.isfinite(feature_rate) and feature_rate > 0):
    raise ValueError(f"{where}: field feature_rate must be > 0, got {feature_rate}")
  if not (math.isfinite(duration) and duration >= 0):
    raise ValueError(f"{where}: field duration must be >= 0, got {duration}")
  cas_contrast = cas_a if cas_contrast is None else np.asarray(cas_contrast)
  if rules.extent == "localization" and cas_extent is None:
    raise ValueError(f"{where}: inference.extent = 'localization' needs cas_extent (C_loc)")
  cas_extent = cas_a if cas_extent is None else np.asarray(cas_extent)
  if rules.proposal_cas == "classification" and cas_cls is None:
    raise ValueError(f"{where}: inference.proposal_cas = 'classification' needs cas_cls")
  cas_cut = cas_a if rules.proposal_cas == "average" else np.asarray(cas_cls)
  for name, x in (("cas_contrast", cas_contrast), ("cas_extent", cas_extent),
                  ("cas_cls", cas_cut)):
    if x.shape != cas_a.shape:
      raise ValueError(f"{where}: {name} has shape {x.shape}, cas_a {cas_a.shape}")
  if not all(np.all(np.isfinite(x))
             for x in (cas_a, s_a, cas_contrast, cas_extent, cas_cut)):
    raise ValueError(f"{where}: the CAS or class scores are not finite")
  return cas_a, s_a, p_a, cas_contrast, cas_extent, cas_cut


def _contrast_and_extent_cas(cas_contrast: np.ndarray, cas_extent: np.ndarray,
                             classes: np.ndarray, *, rules: InferenceRules
                             ) -> tuple[np.ndarray, np.ndarray | None]:
  """The kept classes' CAS the contrast (step 3) and the extent (step 5) are taken on.

  Args:
    cas_contrast, cas_extent: ``(T, N) float``.
    classes: ``(C,) int`` the kept classes.
    rules: gives ``extent`` and ``contrast_on``.

  Returns:
    ``(contrast, extent)``: ``(C, T) float64`` each, min-max normalised per
    class with ``rules.contrast_on = "normalized"``; ``extent`` is None unless
    ``rules.extent = "localization"``.
  """
  contrast_cas = cas_contrast[:, classes].astype(np.float64).T  # (C, T)
  extent_cas = (cas_extent[:, classes].astype(np.float64).T
                if rules.extent == "localization" else None)
  if rules.contrast_on == "normalized":
    contrast_cas = _minmax_rows(contrast_cas)
    if extent_cas is not None:
      extent_cas = _minmax_rows(extent_cas)
  return contrast_cas, extent_cas


def _grow_to_containers(a: np.ndarray, b: np.ndarray, segs: np.ndarray, scores: np.ndarray,
                        keep: np.ndarray, container: tuple[np.ndarray, np.ndarray],
                        extent_cas: np.ndarray, *, rules: InferenceRules, feature_rate: float,
                        duration: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Step 5 of :func:`generate_proposals` for one class (``extent = "localization"``).

  Args:
    a, b: ``(P,) int`` the class's proposals ``[a, b)`` in segments.
    segs: ``(P, 2) float64`` their segments in seconds; ``scores``: ``(P,)``.
    keep: ``(M,) int`` the proposals the first NMS kept.
    container: ``(t0, t1)`` the runs the proposals may grow to, in segments.
    extent_cas: ``(T,) float64`` the class's extent CAS.

  Returns:
    ``(segs, scores, keep)`` of the kept proposals, grown where a container
    fits better, after the second NMS (and the fallback with
    ``rules.extent_fallback``).
  """
  outer_scale, outside, nms_iou = rules.outer_scale, rules.outer_outside, rules.nms_iou
  ca, cb, c_segs = _in_seconds(*container, feature_rate, duration)
  pick = _best_container(a[keep], b[keep],
                         _oic_scores(extent_cas, a[keep], b[keep], outer_scale, outside),
                         ca, cb, _oic_scores(extent_cas, ca, cb, outer_scale, outside))
  own, segs, scores = segs[keep], segs[keep].copy(), scores[keep]
  moved = pick >= 0
  segs[moved] = c_segs[pick[moved]]
  keep = temporal_nms(segs, scores, nms_iou)
  if rules.extent_fallback:
    segs, scores, keep = _fall_back(segs, scores, keep, own, nms_iou)
  return segs, scores, keep


def _class_detections(c: int, run: tuple[np.ndarray, np.ndarray],
                      container: tuple[np.ndarray, np.ndarray], contrast_cas: np.ndarray,
                      extent_cas: np.ndarray | None, video_score: float, *,
                      rules: InferenceRules, feature_rate: float,
                      duration: float) -> list[tuple[float, int, float, float]]:
  """Steps 2-5 of :func:`generate_proposals` for one kept class ``c``.

  Args:
    c: the class index.
    run: ``(t0, t1)`` its proposals ``[t0, t1)`` in segments (:func:`_class_runs`).
    container: the runs its proposals may grow to (step 5).
    contrast_cas: ``(T,) float64`` the CAS its contrast is taken on.
    extent_cas: ``(T,) float64`` its extent CAS, None without the extent step.
    video_score: its ``s_a`` or ``p_a`` (``rules.class_score``).

  Returns:
    ``(score, c, start, end)`` of its detections after NMS, plain Python numbers.
  """
  a, b = run
  if a.size == 0:
    return []
  a, b, segs = _in_seconds(a, b, feature_rate, duration)
  scores = (_oic_scores(contrast_cas, a, b, rules.outer_scale, rules.outer_outside)
            + rules.class_score_weight * video_score)
  keep = temporal_nms(segs, scores, rules.nms_iou)
  if rules.extent == "localization":
    segs, scores, keep = _grow_to_containers(a, b, segs, scores, keep, container, extent_cas,
                                             rules=rules, feature_rate=feature_rate,
                                             duration=duration)
  return [(float(scores[i]), int(c), float(segs[i, 0]), float(segs[i, 1])) for i in keep]


def generate_proposals(cas_a: np.ndarray, s_a: np.ndarray, p_a: np.ndarray, *,
                       feature_rate: float, duration: float, rules: InferenceRules,
                       cas_cls: np.ndarray | None = None,
                       cas_contrast: np.ndarray | None = None,
                       cas_extent: np.ndarray | None = None,
                       video_id: str = "?") -> list[dict]:
  """Action proposals of one video (paper 4.7), host-side NumPy.

  1. Classes: :func:`select_classes` with ``rules.class_threshold`` and
     ``rules.class_top_ratio`` (the top-1 class kept if ``rules.keep_top_class``).
  2. For each kept class ``c``, the CAS of ``rules.proposal_cas``
     (``"average"``: ``C_a[:, c]``; ``"classification"``: ``cas_cls[:, c]``) is
     min-max normalised over time (a constant sequence normalises to 1, i.e.
     the whole video) and thresholded (``>``) at each value of
     ``rules.cas_thresholds``; each run of consecutive segments ``[t0, t1)``
     above a threshold is a proposal ``[min(t0 / rate, duration), min(t1 /
     rate, duration)]`` seconds (proposals that clip to zero length are
     dropped).
  3. Score: ``mean(X[t0:t1, c]) - mean(X[outer, c]) + w * s_a[c]`` with the
     outer region ``ceil(rules.outer_scale * (t1 - t0))`` segments on each side;
     its part past the video's ends is left out (``rules.outer_outside =
     "ignored"``; none left: outer mean 0) or counts as the inner mean
     (``"neutral"``: the contrast is scaled by the share of the outer region
     inside the video), and
     ``w = rules.class_score_weight`` (AutoLoc/BaSNet outer-inner contrast).
     ``X`` is ``cas_contrast`` (``C_a`` when it is None), raw or min-max
     normalised per class (``rules.contrast_on``).
  4. Class-wise :func:`temporal_nms` at ``rules.nms_iou`` on the segments in
     seconds.
  5. With ``rules.extent = "localization"``, each kept proposal takes the
     segment of the container of its class that contains it and has the best
     outer-inner contrast on ``cas_extent`` (``C_loc``), when that contrast is
     strictly above the proposal's own, and keeps its score; NMS runs again on
     the new segments. The containers are the runs of step 2 cut from ``C_a``
     (the proposals themselves when ``rules.proposal_cas = "average"``).
     With ``rules.extent_fallback``, a proposal whose new segment this NMS
     suppresses keeps its own segment instead, unless that overlaps a kept one
     (the same NMS), with its score lowered by ``EXTENT_FALLBACK_OFFSET`` so
     that it ranks after the others. ``"proposal"`` skips this step.
  6. The ``rules.max_proposals_per_video`` best overall.

  Args:
    cas_a: ``(T, N) float`` final CAS of ONE video, cut to its ``T`` segments.
    cas_cls: ``(T, N) float`` ``C_cls``, needed with
      ``rules.proposal_cas = "classification"``.
    cas_contrast: ``(T, N) float`` the CAS the contrast is taken on
      (:func:`jaxseg.inference.video_scores` gives ``(1 - w) C_cls + w C_loc``
      for ``w = rules.contrast_loc_weight``); None takes it on ``cas_a``.
    cas_extent: ``(T, N) float`` ``C_loc``, needed with
      ``rules.extent = "localization"``.
    s_a: ``(N,) float`` class scores (eq. 2).
    p_a: ``(N,) float`` class probabilities (eq. 3).
    feature_rate: segments per second.
    duration: video duration in seconds.
    rules: the :class:`jaxseg.rules.InferenceRules` to detect with (built once).
    video_id: used in error messages only.

  Returns:
    Detections sorted by decreasing score, each
    ``{"label": int class index, "score": float, "segment": [start, end]}``
    (plain Python floats, seconds).

  Raises:
    ValueError: on bad shapes, a non-positive rate, a negative or non-finite
      duration, or non-finite CAS values, naming the video.
  """
  cas_a, s_a, p_a, cas_contrast, cas_extent, cas_cut = _checked_inputs(
      cas_a, s_a, p_a, feature_rate=feature_rate, duration=duration, rules=rules,
      cas_cls=cas_cls, cas_contrast=cas_contrast, cas_extent=cas_extent, video_id=video_id)
  num_t, num_classes = cas_a.shape
  if num_t == 0 or num_classes == 0:
    return []

  thresholds = np.asarray(rules.cas_thresholds, np.float64).reshape(-1)
  video_score = s_a if rules.class_score == "s_a" else p_a
  classes = select_classes(s_a, p_a, class_threshold=rules.class_threshold,
                           class_top_ratio=rules.class_top_ratio,
                           keep_top_class=rules.keep_top_class)
  if classes.size == 0:
    return []
  contrast_cas, extent_cas = _contrast_and_extent_cas(cas_contrast, cas_extent, classes,
                                                      rules=rules)
  runs = _class_runs(cas_cut[:, classes], thresholds)
  # The containers of the extent step: the proposals themselves, or C_a's.
  containers = runs if rules.proposal_cas == "average" or rules.extent != "localization" else (
      _class_runs(cas_a[:, classes], thresholds))

  detections = []
  for pos, c in enumerate(classes):
    detections += _class_detections(
        int(c), runs[pos], containers[pos], contrast_cas[pos],
        None if extent_cas is None else extent_cas[pos], video_score[c], rules=rules,
        feature_rate=feature_rate, duration=duration)
  detections.sort(key=lambda d: -d[0])  # stable: ties keep class order
  return [{"label": c, "score": s, "segment": [t_s, t_e]}
          for s, c, t_s, t_e in detections[:rules.max_proposals_per_video]]
