"""Tests for jaxseg.inference (paper 4.7) against float64 NumPy references."""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxseg import inference, proposals
from jaxseg import rules as rules_lib
from jaxseg.config import EXTENT_FALLBACK_OFFSET
from jaxseg.data.video import DataError, Video


def make_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dict(
      class_threshold=0.0, class_top_ratio=0.0, cas_thresholds=(0.4,),
      outer_scale=0.25, class_score_weight=0.2, nms_iou=0.6,
      max_proposals_per_video=100, contrast_on="raw", class_score="s_a",
      score_source="average", keep_top_class=True, contrast_loc_weight=0.5,
      extent="proposal", proposal_cas="average", extent_fallback=False,
      outer_outside="ignored"))
  c.update(overrides)
  return c


def make_rules(**overrides) -> rules_lib.InferenceRules:
  """The validated rules of :func:`make_config` with ``overrides``."""
  return rules_lib.from_config(make_config(**overrides), "jaxseg")


# ------------------------------------------------------------ references


def ref_scores(cas_cls, cas_loc, lengths, k):
  """Eq. 2-3 in float64, straight from the paper, one video at a time."""
  num_b, _, num_n = cas_cls.shape
  s = np.zeros((num_b, num_n))
  for b in range(num_b):
    length = int(lengths[b])
    if length == 0:
      continue
    kk = min(max(int(k[b]), 1), length)
    cas_a = (cas_cls[b, :length].astype(np.float64) + cas_loc[b, :length]) / 2
    for n in range(num_n):
      s[b, n] = np.sum(sorted(cas_a[:, n], reverse=True)[:kk]) / kk
  e = np.exp(s - s.max(axis=1, keepdims=True))
  return s, e / e.sum(axis=1, keepdims=True)


def ref_iou(a, b):
  inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
  union = (a[1] - a[0]) + (b[1] - b[0]) - inter
  return inter / union if union > 0 else 0.0


def ref_nms(segments, scores, thr):
  order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
  kept = []
  for i in order:
    if all(ref_iou(segments[i], segments[j]) <= thr for j in kept):
      kept.append(i)
  return kept


def ref_contrast(x, t, u, outer_scale, outside="ignored"):
  """Outer-inner contrast of ``x[t:u]``; ``outside``: the outer region's part
  past the ends of ``x`` is left out ("ignored") or taken as the inner mean
  ("neutral")."""
  w = math.ceil(outer_scale * (u - t) - 1e-9)
  outer = x[max(0, t - w):t] + x[u:min(len(x), u + w)]
  inner = sum(x[t:u]) / (u - t)
  if outside == "neutral" and w > 0:
    padded = outer + [inner] * (2 * w - len(outer))
    return inner - sum(padded) / len(padded)
  return inner - (sum(outer) / len(outer) if outer else 0.0)


def ref_runs(column, thresholds, rate, duration):
  """Runs ``(t, u, start, end)`` of one min-max normalised CAS column above
  each threshold (by threshold, then time), zero-length ones dropped."""
  x = [float(v) for v in column]
  lo, hi = min(x), max(x)
  norm = [(v - lo) / (hi - lo) if hi > lo else 1.0 for v in x]
  out = []
  for th in thresholds:
    t = 0
    while t < len(x):
      if norm[t] <= th:
        t += 1
        continue
      u = t
      while u < len(x) and norm[u] > th:
        u += 1
      start, end = min(t / rate, duration), min(u / rate, duration)
      if end > start:
        out.append((t, u, start, end))
      t = u
  return out


def ref_proposals(cas, s, p, rate, duration, cfg, contrast=None, extent=None, cls=None):
  """Paper 4.7 proposals with plain Python loops over segments.

  ``contrast``: the CAS of the outer-inner contrast (``cas`` when None), raw or
  min-max normalised per class as ``cfg.contrast_on`` says. ``extent``: with
  ``cfg.extent == "localization"``, the CAS a kept proposal's container is
  chosen on (the same normalisation); the containers are the runs of ``cas``.
  ``cls``: the CAS the proposals are cut from when ``cfg.proposal_cas ==
  "classification"`` (else ``cas``).
  """
  contrast = cas if contrast is None else contrast
  cut = cls if cfg.get("proposal_cas", "average") == "classification" else cas
  num_t, num_n = cas.shape
  keep = [n for n in range(num_n) if s[n] > cfg.class_threshold
          and (cfg.class_top_ratio <= 0 or p[n] >= cfg.class_top_ratio * max(p))]
  top = int(np.argmax(s))
  if top not in keep:
    keep = sorted(keep + [top])
  dets = []
  for c in keep:
    def column(a):
      x = [float(v) for v in a[:, c]]
      if cfg.contrast_on == "normalized":
        lo, hi = min(x), max(x)
        x = [(v - lo) / (hi - lo) if hi > lo else 1.0 for v in x]
      return x
    x = column(contrast)
    runs = ref_runs(cut[:, c], cfg.cas_thresholds, rate, duration)
    segs = [(start, end) for _, _, start, end in runs]
    outside = cfg.get("outer_outside", "ignored")
    scores = [ref_contrast(x, t, u, cfg.outer_scale, outside) + cfg.class_score_weight * s[c]
              for t, u, _, _ in runs]
    kept = ref_nms(segs, scores, cfg.nms_iou)
    segs_before, scores_before = segs, scores
    if cfg.get("extent", "proposal") == "localization":
      e = column(extent)
      containers = ref_runs(cas[:, c], cfg.cas_thresholds, rate, duration)
      grown, grown_scores = [], []
      for i in kept:
        t0, u0 = runs[i][:2]
        seg, best = segs[i], ref_contrast(e, t0, u0, cfg.outer_scale, outside)
        for t, u, start, end in containers:  # the first of the best containers
          fit = ref_contrast(e, t, u, cfg.outer_scale, outside)
          if t <= t0 and u >= u0 and fit > best:
            seg, best = (start, end), fit
        grown.append(seg)
        grown_scores.append(scores[i])
      survivors = ref_nms(grown, grown_scores, cfg.nms_iou)  # positions in `kept`
      lost = [i for j, i in enumerate(kept) if j not in survivors]
      segs = [grown[j] for j in survivors]
      scores = [grown_scores[j] for j in survivors]
      kept = list(range(len(segs)))
      if cfg.get("extent_fallback", False):  # the suppressed keep their own segment
        for i in sorted(lost, key=lambda i: -scores_before[i]):
          if all(ref_iou(segs_before[i], segs[j]) <= cfg.nms_iou for j in kept):
            segs.append(segs_before[i])
            scores.append(scores_before[i] - EXTENT_FALLBACK_OFFSET)
            kept.append(len(segs) - 1)
    for i in kept:
      dets.append((scores[i], c, segs[i]))
  dets.sort(key=lambda d: -d[0])
  return dets[:cfg.max_proposals_per_video]


def assert_same_detections(got, want, tol=1e-9):
  assert len(got) == len(want)
  for g, (score, c, seg) in zip(got, want):
    assert g["label"] == c
    assert g["score"] == pytest.approx(score, abs=tol)
    assert g["segment"] == pytest.approx(list(seg), abs=1e-12)


# ---------------------------------------------------------------- scores


def test_inference_topk():
  k = inference.inference_topk(np.array([0, 1, 7, 8, 16, 17, 100]), 8.0)
  np.testing.assert_array_equal(k, [1, 1, 1, 1, 2, 2, 12])
  assert k.dtype == np.int32
  np.testing.assert_array_equal(inference.inference_topk(np.array([5, 6]), 2.5), [2, 2])
  with pytest.raises(ValueError, match="ratio"):
    inference.inference_topk(np.array([5]), 0.5)


def test_video_scores_matches_float64_reference():
  rng = np.random.default_rng(0)
  num_b, num_t, num_n = 5, 9, 4
  lengths = np.array([9, 5, 1, 0, 6])
  mask = np.arange(num_t)[None] < lengths[:, None]
  cas_cls = rng.normal(size=(num_b, num_t, num_n)).astype(np.float32)
  cas_loc = rng.normal(size=(num_b, num_t, num_n)).astype(np.float32)
  # Video 4: all real values negative, padding exactly zero (as the model's
  # zero-padded output could be): the padding must not be picked by the top-k.
  cas_cls[4] = -np.abs(cas_cls[4]) - 1.0
  cas_loc[4] = -np.abs(cas_loc[4]) - 1.0
  cas_cls[4, 6:] = cas_loc[4, 6:] = 0.0
  # Other padded steps hold garbage that must be ignored.
  cas_cls[:4][~mask[:4]] = 1e3
  k = np.array([3, 10, 1, 1, 2], np.int32)  # 10 > length 5: clipped to 5
  out = jax.device_get(inference.video_scores(cas_cls, cas_loc, mask, k, score_source="average",
                                                     contrast_loc_weight=0.5))
  s_ref, p_ref = ref_scores(cas_cls, cas_loc, lengths, k)
  np.testing.assert_allclose(out["s_a"], s_ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out["p_a"], p_ref, rtol=1e-6, atol=1e-7)
  assert out["s_a"].dtype == np.float32 and out["p_a"].dtype == np.float32
  np.testing.assert_array_equal(out["cas_a"][~mask], 0.0)
  np.testing.assert_allclose(out["cas_a"][mask],
                             ((cas_cls.astype(np.float64) + cas_loc) / 2)[mask], rtol=1e-6)
  np.testing.assert_allclose(out["p_a"][3], np.full(num_n, 1 / num_n), rtol=1e-6)
  assert np.all(out["s_a"][4] < -1.0)


# ------------------------------------------------------------------- NMS


def test_temporal_nms_hand_built():
  segs = np.array([[0, 10], [1, 11], [20, 30], [0, 5]], float)
  scores = np.array([0.9, 0.8, 0.7, 0.95])
  # [0,5] first; IoU([0,5],[0,10]) = 0.5 is not > 0.5: kept; IoU([0,10],[1,11])
  # = 9/11: suppressed; [20,30] overlaps nothing.
  np.testing.assert_array_equal(proposals.temporal_nms(segs, scores, 0.5), [3, 0, 2])
  # At 0.4 [0,10] goes, so it no longer suppresses [1,11], whose IoU with
  # [0,5] is 4/11 <= 0.4 (greedy: only kept segments suppress).
  np.testing.assert_array_equal(proposals.temporal_nms(segs, scores, 0.4), [3, 1, 2])
  np.testing.assert_array_equal(proposals.temporal_nms(segs, scores, 0.9), [3, 0, 1, 2])
  assert proposals.temporal_nms(np.zeros((0, 2)), np.zeros(0), 0.5).shape == (0,)


@pytest.mark.parametrize("seed", range(5))
def test_temporal_nms_vs_brute_force(seed):
  rng = np.random.default_rng(seed)
  starts = rng.uniform(0, 50, size=40)
  segs = np.stack([starts, starts + rng.uniform(0.5, 15, size=40)], axis=1)
  segs[5] = segs[3]  # an exact duplicate
  scores = rng.uniform(size=40)
  thr = [0.3, 0.5, 0.7][seed % 3]
  got = proposals.temporal_nms(segs, scores, thr)
  assert got.tolist() == ref_nms(segs.tolist(), scores.tolist(), thr)


# ------------------------------------------------------------- proposals


def test_proposals_hand_built():
  cas = np.zeros((10, 3), np.float32)
  cas[:, 0] = [0, 4, 2, 0, 0, 1, 2, 4, 4, 2]  # normalised: / 4
  cas[:, 1] = np.arange(10)
  cas[:, 2] = 1.0  # constant: the whole video
  s_a = np.array([0.5, -0.1, 0.2])
  p_a = np.exp(s_a) / np.exp(s_a).sum()
  dets = proposals.generate_proposals(cas, s_a, p_a, feature_rate=2.0, duration=4.8,
                                      rules=make_rules())
  # Class 0 at 0.4: runs [1, 3) and [6, 10) segments -> [0.5, 1.5] s and
  # [3.0, min(5.0, 4.8)] s. Outer width ceil(0.25 * 2) = 1 and ceil(0.25 * 4) = 1.
  # [1, 3): inner (4 + 2) / 2 = 3, outer {0, 0} -> 0: 3 + 0.2 * 0.5 = 3.1.
  # [6, 10): inner 12 / 4 = 3, outer {1} (the right side is past the end) -> 2.1.
  # Class 1 (s_a < 0) is dropped. Class 2: [0, 4.8], inner 1, no outer: 1.04.
  assert [d["label"] for d in dets] == [0, 0, 2]
  assert [d["segment"] for d in dets] == [[0.5, 1.5], [3.0, 4.8], [0.0, 4.8]]
  np.testing.assert_allclose([d["score"] for d in dets], [3.1, 2.1, 1.04], atol=1e-12)
  assert all(type(d["score"]) is float and type(d["label"]) is int for d in dets)
  assert all(type(x) is float for d in dets for x in d["segment"])
  # A proposal that starts after the (shorter) duration is dropped; one that
  # straddles it is clipped.
  dets = proposals.generate_proposals(cas, s_a, p_a, feature_rate=2.0, duration=2.9,
                                      rules=make_rules(class_threshold=0.3))
  assert [(d["label"], d["segment"]) for d in dets] == [(0, [0.5, 1.5])]
  # Strictly above the threshold: normalised values equal to 0.5 are out.
  # [1,2): 4 - mean{0, 2} + 0.1 = 3.1; [7,9): 4 - mean{2, 2} + 0.1 = 2.1.
  dets = proposals.generate_proposals(cas, s_a, p_a, feature_rate=2.0, duration=4.8,
                                      rules=make_rules(class_threshold=0.3,
                                                         cas_thresholds=(0.5,)))
  assert [d["segment"] for d in dets] == [[0.5, 1.0], [3.5, 4.5]]
  assert [d["score"] for d in dets] == pytest.approx([3.1, 2.1], abs=1e-12)
  # The cap keeps the best proposals.
  dets = proposals.generate_proposals(cas, s_a, p_a, feature_rate=2.0, duration=4.8,
                                      rules=make_rules(max_proposals_per_video=2))
  assert [d["score"] for d in dets] == pytest.approx([3.1, 2.1])


def test_proposals_several_thresholds_deduplicated():
  cas = np.zeros((10, 1), np.float32)
  cas[:, 0] = [0, 4, 2, 0, 0, 1, 2, 4, 4, 2]
  cfg = make_config(cas_thresholds=(0.1, 0.4, 0.6), outer_scale=0.5)
  dets = proposals.generate_proposals(cas, np.array([1.0]), np.array([1.0]),
                                      feature_rate=1.0, duration=10.0, rules=make_rules(**cfg))
  # Runs: > 0.1: [1,3) [5,10); > 0.4: [1,3) [6,10); > 0.6: [1,2) [7,9).
  # Scores (outer width ceil(0.5 L)), plus 0.2 * 1:
  #   [1,3): 3 - mean{0, 0} = 3;      [5,10): 13/5 - mean{2, 0, 0} = 1.933;
  #   [6,10): 3 - mean{0, 1} = 2.5;   [1,2): 4 - mean{0, 2} = 3;
  #   [7,9): 4 - mean{2, 2} = 2.
  # NMS at 0.6: the second [1,3) is a duplicate; [1,2) vs [1,3): IoU 0.5, kept;
  # [7,9) vs [6,10): IoU 0.5, kept; [5,10) vs [6,10): IoU 0.8, suppressed.
  got = [(d["segment"], round(d["score"], 9)) for d in dets]
  assert got == [([1.0, 3.0], 3.2), ([1.0, 2.0], 3.2), ([6.0, 10.0], 2.7),
                 ([7.0, 9.0], 2.2)]


def test_class_selection():
  s_a = np.array([-2.0, -0.5, -1.0])
  kw = dict(class_threshold=0.0, class_top_ratio=0.0, keep_top_class=True)
  assert proposals.select_classes(s_a, s_a, **kw).tolist() == [1]
  s_a = np.array([2.0, 1.9, 0.1, -3.0])
  p_a = np.exp(s_a) / np.exp(s_a).sum()
  assert proposals.select_classes(s_a, p_a, **kw).tolist() == [0, 1, 2]
  # p1 / p0 = e^-0.1 >= 0.5; p2 / p0 = e^-1.9 < 0.5.
  assert proposals.select_classes(s_a, p_a, class_threshold=0.0, class_top_ratio=0.5,
                                  keep_top_class=True).tolist() == [0, 1]
  # The paper's rule alone: no class scores above 0, no class.
  assert proposals.select_classes(-np.abs(s_a), p_a, class_threshold=0.0, class_top_ratio=0.0,
                                  keep_top_class=False).tolist() == []
  # Via generate_proposals: a video with all class scores negative still gets
  # detections, of its top class only.
  rng = np.random.default_rng(1)
  cas = rng.normal(size=(20, 3))
  dets = proposals.generate_proposals(cas, np.array([-2.0, -0.5, -1.0]),
                                      np.array([0.2, 0.5, 0.3]), feature_rate=1.0,
                                      duration=20.0, rules=make_rules())
  assert dets and {d["label"] for d in dets} == {1}


@pytest.mark.parametrize("seed", range(6))
def test_proposals_vs_brute_force(seed):
  rng = np.random.default_rng(seed)
  num_t, num_n = int(rng.integers(1, 40)), 4
  cas = rng.normal(size=(num_t, num_n)).astype(np.float32)
  cas[:, 3] = np.round(cas[:, 3])  # plateaus and ties
  s_a = rng.normal(size=num_n)
  p_a = np.exp(s_a) / np.exp(s_a).sum()
  cfg = make_config(cas_thresholds=(0.1, 0.25, 0.5, 0.7, 0.9),
                    outer_scale=[0.25, 0.5, 0.0][seed % 3],
                    class_top_ratio=[0.0, 0.3][seed % 2],
                    class_threshold=[0.0, -0.5][seed % 2],
                    nms_iou=[0.6, 0.3, 0.9][seed % 3],
                    max_proposals_per_video=[100, 5][seed % 2],
                    outer_outside=["ignored", "neutral"][seed % 2])
  rate, duration = 25 / 16, (num_t - 0.5) * 16 / 25
  got = proposals.generate_proposals(cas, s_a, p_a, feature_rate=rate, duration=duration,
                                     rules=make_rules(**cfg))
  want = ref_proposals(cas.astype(np.float64), s_a, p_a, rate, duration, cfg)
  assert got
  assert_same_detections(got, want)


@pytest.mark.parametrize("contrast_on", ["raw", "normalized"])
def test_proposals_contrast_on_another_cas(contrast_on):
  # Proposals are cut from cas_a; their contrast is taken on cas_contrast.
  rng = np.random.default_rng(11)
  num_t, num_n = 30, 3
  cas = rng.normal(size=(num_t, num_n)).astype(np.float32)
  other = (3.0 * rng.normal(size=(num_t, num_n))).astype(np.float32)
  s_a = rng.normal(size=num_n)
  p_a = np.exp(s_a) / np.exp(s_a).sum()
  cfg = make_config(cas_thresholds=(0.2, 0.5, 0.8), contrast_on=contrast_on, nms_iou=0.5)
  rate, duration = 1.5, num_t / 1.5
  got = proposals.generate_proposals(cas, s_a, p_a, feature_rate=rate, duration=duration,
                                     rules=make_rules(**cfg), cas_contrast=other)
  want = ref_proposals(cas.astype(np.float64), s_a, p_a, rate, duration, cfg,
                       contrast=other.astype(np.float64))
  assert got
  assert_same_detections(got, want)
  # The segments are those cut from cas_a; the scores differ from cas_a's own.
  on_a = proposals.generate_proposals(cas, s_a, p_a, feature_rate=rate, duration=duration,
                                      rules=make_rules(**cfg))
  assert sorted(d["score"] for d in got) != sorted(d["score"] for d in on_a)
  with pytest.raises(ValueError, match="cas_contrast"):
    proposals.generate_proposals(cas, s_a, p_a, feature_rate=rate, duration=duration,
                                 rules=make_rules(**cfg), cas_contrast=other[:-1])
  with pytest.raises(ValueError, match="not finite"):
    proposals.generate_proposals(cas, s_a, p_a, feature_rate=rate, duration=duration,
                                 rules=make_rules(**cfg), cas_contrast=np.full_like(other, np.nan))


@pytest.mark.parametrize("seed", range(4))
def test_proposals_extent_from_localization(seed):
  # Kept proposals take the extent of their best-fitting container on C_loc.
  rng = np.random.default_rng(100 + seed)
  num_t, num_n = 40, 3
  cas = rng.normal(size=(num_t, num_n)).astype(np.float32)
  cas_loc = np.cumsum(rng.normal(size=(num_t, num_n)), axis=0).astype(np.float32)
  s_a = rng.normal(size=num_n)
  p_a = np.exp(s_a) / np.exp(s_a).sum()
  cfg = make_config(cas_thresholds=(0.2, 0.4, 0.6, 0.8), extent="localization",
                    contrast_on=["raw", "normalized"][seed % 2], nms_iou=[0.3, 0.6][seed // 2],
                    outer_scale=0.25, extent_fallback=seed in (1, 2),
                    outer_outside=["neutral", "ignored"][seed in (1, 2)])
  rate, duration = 1.5, num_t / 1.5
  kw = dict(feature_rate=rate, duration=duration, rules=make_rules(**cfg))
  got = proposals.generate_proposals(cas, s_a, p_a, cas_extent=cas_loc, **kw)
  want = ref_proposals(cas.astype(np.float64), s_a, p_a, rate, duration, cfg,
                       extent=cas_loc.astype(np.float64))
  assert got
  assert_same_detections(got, want)
  own = proposals.generate_proposals(cas, s_a, p_a, **{**kw, "rules": make_rules(
      **{**cfg.to_dict(), "extent": "proposal"})})
  assert {tuple(d["segment"]) for d in got} != {tuple(d["segment"]) for d in own}
  # Every detection keeps the score of a kept proposal (a fallback's lowered).
  own_scores = np.array([d["score"] for d in own])
  fell_back = [d["score"] < -EXTENT_FALLBACK_OFFSET / 2 for d in got]
  for d, low in zip(got, fell_back):
    assert np.min(np.abs(own_scores - d["score"] - low * EXTENT_FALLBACK_OFFSET)) < 1e-9
  assert any(fell_back) == cfg.extent_fallback  # these videos have some
  # A flat C_loc (CL's untrained head) moves nothing.
  flat = proposals.generate_proposals(cas, s_a, p_a, cas_extent=np.zeros_like(cas), **kw)
  assert flat == own
  with pytest.raises(ValueError, match="cas_extent"):
    proposals.generate_proposals(cas, s_a, p_a, **kw)
  with pytest.raises(ValueError, match="cas_extent"):
    proposals.generate_proposals(cas, s_a, p_a, cas_extent=cas_loc[:-1], **kw)
  with pytest.raises(ValueError, match="extent"):
    proposals.generate_proposals(cas, s_a, p_a, cas_extent=cas_loc, **{
        **kw, "rules": make_rules(extent="bogus")})


def test_proposals_extent_fallback_hand_built():
  # Two cores [2, 4) and [8, 10) of C_a; C_loc fits the run [2, 10) around both
  # better, so both grow to it and the second is suppressed after growing.
  cas = np.array([0, 0, 5, 5, 1, 1, 1, 1, 4.8, 4.8, 0, 0], np.float32)[:, None]
  cas_loc = np.array([0, 0, 3, 3, 3, 3, 3, 3, 3, 3, 0, 0], np.float32)[:, None]
  s_a = p_a = np.array([1.0])
  kw = dict(feature_rate=1.0, duration=12.0, cas_extent=cas_loc)
  cfg = make_config(cas_thresholds=(0.1, 0.5), nms_iou=0.3, extent="localization")
  # Contrasts: [2, 4): 5 - (0 + 1) / 2 = 4.5; [8, 10): 4.8 - (1 + 0) / 2 = 4.3;
  # [2, 10): 3 - 0, IoU 0.25 with [2, 4) and [8, 10), so not suppressed by them.
  dropped = proposals.generate_proposals(cas, s_a, p_a, rules=make_rules(**cfg), **kw)
  assert [d["segment"] for d in dropped] == [[2.0, 10.0]]
  np.testing.assert_allclose([d["score"] for d in dropped], [4.5 + 0.2], atol=1e-6)
  kept = proposals.generate_proposals(cas, s_a, p_a, **kw, rules=make_rules(
      **{**cfg.to_dict(), "extent_fallback": True}))
  # [8, 10) falls back to its own segment (IoU 0.25 with [2, 10)), ranked last.
  assert [d["segment"] for d in kept] == [[2.0, 10.0], [8.0, 10.0]]
  np.testing.assert_allclose([d["score"] for d in kept],
                             [4.5 + 0.2, 4.3 + 0.2 - EXTENT_FALLBACK_OFFSET], atol=1e-4)
  # At NMS 0.2 the fallback overlaps the kept [2, 10) too much: dropped as well.
  strict = proposals.generate_proposals(cas, s_a, p_a, **kw, rules=make_rules(
      **{**cfg.to_dict(), "extent_fallback": True, "nms_iou": 0.2}))
  assert [d["segment"] for d in strict] == [[2.0, 10.0]]


def test_outer_region_past_the_video_ends_hand_built():
  # C_loc: three instances, [0, 3), [4, 7), [8, 9), the last segment far below.
  # C_a's runs: > 0.1 is [0, 9) (everything but the last segment), > 0.6 is
  # [4, 7); C_cls has one core, [5, 6).
  cas_a = np.array([0.5, 0.5, 0.5, 0.3, 1, 1, 1, 0.3, 0.5, 0], np.float32)[:, None]
  cas_loc = np.array([1, 1, 1, 0, 1, 1, 1, 0, 1, -3], np.float32)[:, None]
  cas_cls = np.zeros((10, 1), np.float32)
  cas_cls[5] = 1.0
  s_a = p_a = np.array([1.0])
  kw = dict(feature_rate=1.0, duration=10.0, cas_cls=cas_cls, cas_contrast=cas_cls,
            cas_extent=cas_loc)
  cfg = make_config(cas_thresholds=(0.1, 0.6), nms_iou=0.3, extent="localization",
                    proposal_cas="classification")
  # Fits on C_loc: [5, 6): 1 - mean(1, 1) = 0; [4, 7): 1 - mean(0, 0) = 1;
  # [0, 9): 7/9 - (-3) = 3.78 on one outer segment of w = 3 a side ("ignored"),
  # 1/6 of that, 0.63, when the other five count as the inner mean ("neutral").
  ignored = proposals.generate_proposals(cas_a, s_a, p_a, rules=make_rules(**cfg), **kw)
  assert [d["segment"] for d in ignored] == [[0.0, 9.0]]
  neutral = proposals.generate_proposals(cas_a, s_a, p_a, **kw, rules=make_rules(
      **{**cfg.to_dict(), "outer_outside": "neutral"}))
  assert [d["segment"] for d in neutral] == [[4.0, 7.0]]
  # The core's score is its contrast on C_cls (all its outer region inside) + 0.2 s_a.
  assert neutral[0]["score"] == pytest.approx(ignored[0]["score"]) == pytest.approx(1.2)
  # A run that is the whole video (a constant CAS) has no contrast under
  # "neutral", its inner mean under "ignored"; with no outer region
  # (outer_scale 0) both give the inner mean.
  flat = np.full((3, 1), 3.0, np.float32)
  for outside, outer_scale, contrast in (("neutral", 0.25, 0.0), ("ignored", 0.25, 3.0),
                                         ("neutral", 0.0, 3.0), ("ignored", 0.0, 3.0)):
    dets = proposals.generate_proposals(flat, s_a, p_a, feature_rate=1.0, duration=3.0,
                                        rules=make_rules(outer_outside=outside,
                                                           outer_scale=outer_scale))
    assert [d["segment"] for d in dets] == [[0.0, 3.0]]
    assert dets[0]["score"] == pytest.approx(contrast + 0.2)
  with pytest.raises(ValueError, match="config.inference.outer_outside: .zero. is not one of"):
    proposals.generate_proposals(cas_a, s_a, p_a, **kw, rules=make_rules(
        **{**cfg.to_dict(), "outer_outside": "zero"}))


@pytest.mark.parametrize("seed", range(4))
def test_proposals_cut_from_classification(seed):
  # Ranked proposals cut from C_cls; with the C_loc extent, containers cut from C_a.
  rng = np.random.default_rng(200 + seed)
  num_t, num_n = 48, 3
  cas = rng.normal(size=(num_t, num_n)).astype(np.float32)
  cas_cls = (cas + rng.normal(size=(num_t, num_n))).astype(np.float32)
  cas_loc = np.cumsum(rng.normal(size=(num_t, num_n)), axis=0).astype(np.float32)
  s_a = rng.normal(size=num_n)
  p_a = np.exp(s_a) / np.exp(s_a).sum()
  rate = 2.0
  duration = [num_t / rate, 0.8 * num_t / rate][seed % 2]  # the last segments clip
  for extent, fallback in (("proposal", False), ("localization", False),
                           ("localization", True)):
    cfg = make_config(cas_thresholds=(0.2, 0.45, 0.7), extent=extent,
                      proposal_cas="classification", extent_fallback=fallback,
                      contrast_on=["raw", "normalized"][seed // 2], nms_iou=0.4,
                      outer_outside=["ignored", "neutral"][seed % 2])
    kw = dict(feature_rate=rate, duration=duration, rules=make_rules(**cfg), cas_contrast=cas_cls)
    got = proposals.generate_proposals(cas, s_a, p_a, cas_cls=cas_cls, cas_extent=cas_loc,
                                       **kw)
    want = ref_proposals(cas.astype(np.float64), s_a, p_a, rate, duration, cfg,
                         contrast=cas_cls.astype(np.float64),
                         extent=cas_loc.astype(np.float64), cls=cas_cls.astype(np.float64))
    assert got
    assert_same_detections(got, want)
    on_a = proposals.generate_proposals(cas, s_a, p_a, cas_extent=cas_loc, **{
        **kw, "rules": make_rules(**{**cfg.to_dict(), "proposal_cas": "average"})})
    assert got != on_a
    # Cut from a C_cls equal to C_a, the proposals are C_a's.
    same = proposals.generate_proposals(cas, s_a, p_a, cas_cls=cas.copy(), cas_extent=cas_loc,
                                        **kw)
    assert same == on_a
  with pytest.raises(ValueError, match="'v'.*needs cas_cls"):
    proposals.generate_proposals(cas, s_a, p_a, cas_extent=cas_loc, video_id="v", **kw)
  with pytest.raises(ValueError, match="cas_cls has shape"):
    proposals.generate_proposals(cas, s_a, p_a, cas_cls=cas_cls[1:], cas_extent=cas_loc, **kw)
  with pytest.raises(ValueError, match="not finite"):
    proposals.generate_proposals(cas, s_a, p_a, cas_cls=np.full_like(cas, np.inf),
                                 cas_extent=cas_loc, **kw)
  with pytest.raises(ValueError, match="config.inference.proposal_cas: .loc. is not one of"):
    proposals.generate_proposals(cas, s_a, p_a, cas_cls=cas_cls, cas_extent=cas_loc, **{
        **kw, "rules": make_rules(proposal_cas="loc")})


def test_proposals_bad_input():
  cfg = make_config()
  with pytest.raises(ValueError, match="'vid7'.*feature_rate"):
    proposals.generate_proposals(np.ones((3, 2)), np.ones(2), np.ones(2), feature_rate=0.0,
                                 duration=1.0, rules=make_rules(**cfg), video_id="vid7")
  with pytest.raises(ValueError, match="'vid7'.*classes"):
    proposals.generate_proposals(np.ones((3, 2)), np.ones(3), np.ones(3), feature_rate=1.0,
                                 duration=1.0, rules=make_rules(**cfg), video_id="vid7")
  with pytest.raises(ValueError, match="not finite"):
    proposals.generate_proposals(np.full((3, 2), np.nan), np.ones(2), np.ones(2),
                                 feature_rate=1.0, duration=1.0, rules=make_rules(**cfg))


# --------------------------------------------------------------- predict

NUM_D, NUM_N, NUM_T = 3, 3, 12
CLASS_NAMES = ["Jump", "Throw", "Run"]


@jax.jit
def fake_apply(variables, features, mask):
  cas = jnp.einsum("btd,dn->btn", features, variables["w"])
  return {"features": features, "cas_cls": cas, "cas_loc": 0.5 * cas + variables["b"]}


@pytest.fixture(scope="module")
def predict_setup():
  rng = np.random.default_rng(3)
  variables = {"w": rng.normal(size=(NUM_D, NUM_N)).astype(np.float32),
               "b": np.float32(0.25)}
  lengths = {"v0": 12, "v1": 7, "v2": 10}
  feats = {v: rng.normal(size=(n, NUM_D)).astype(np.float32) for v, n in lengths.items()}
  videos = {v: Video(v, "test", feats[v], feature_rate=1.5, duration=n / 1.5 - 0.3)
            for v, n in lengths.items()}

  def batch(ids):
    features = np.full((2, NUM_T, NUM_D), 1e3, np.float32)  # garbage padding
    mask = np.zeros((2, NUM_T), bool)
    lens = np.zeros((2,), np.int32)
    for i, v in enumerate(ids):
      features[i, :lengths[v]] = feats[v]
      mask[i, :lengths[v]] = True
      lens[i] = lengths[v]
    return {"features": features, "mask": mask, "lengths": lens, "video_ids": list(ids)}

  batches = [batch(["v0", "v1"]), batch(["v2"])]  # the second has a padded row
  cfg = make_config(cas_thresholds=(0.2, 0.5, 0.8))
  out = inference.predict(fake_apply, variables, batches, videos=videos,
                          class_names=CLASS_NAMES, rules=make_rules(**cfg), topk_ratio=4.0,
                          return_cas=["v1"])
  return dict(variables=variables, feats=feats, videos=videos, batches=batches, cfg=cfg,
              out=out, batch=batch)


def predict_reference(st, vid, cfg, *, contrast=None, extent=None, loc=lambda x: 0.5 * x + 0.25):
  """Float64 ``(s_a, p_a, detections)`` of one ``predict_setup`` video under
  ``cfg``; ``contrast`` / ``extent``: ``"cls"`` or ``"loc"``, the CAS of the
  proposal contrast and of the extent step (None: ``C_a`` / none); ``loc``:
  ``C_loc`` as a function of ``C_cls`` (as the fake model makes it)."""
  w = st["variables"]["w"].astype(np.float64)
  feat = st["feats"][vid]
  n = feat.shape[0]
  cas = {"cls": feat.astype(np.float64) @ w}
  cas["loc"] = loc(cas["cls"])
  s_ref, p_ref = ref_scores(cas["cls"][None], cas["loc"][None], [n], [max(1, n // 4)])
  video = st["videos"][vid]
  want = ref_proposals((cas["cls"] + cas["loc"]) / 2, s_ref[0], p_ref[0], video.feature_rate,
                       video.duration, cfg, contrast=cas.get(contrast), extent=cas.get(extent),
                       cls=cas["cls"])
  return s_ref[0], p_ref[0], want


def assert_predicted(got, want):
  """``predict``'s detections of a video (class names) equal the reference's."""
  assert got
  assert [d["label"] for d in got] == [CLASS_NAMES[c] for _, c, _ in want]
  np.testing.assert_allclose([d["segment"] for d in got], [seg for _, _, seg in want],
                             atol=1e-12)
  np.testing.assert_allclose([d["score"] for d in got], [s for s, _, _ in want], atol=1e-5)


def test_predict_end_to_end(predict_setup):
  st = predict_setup
  out = st["out"]
  assert list(out["results"]) == ["v0", "v1", "v2"]
  w = st["variables"]["w"].astype(np.float64)
  for vid in st["feats"]:
    s_ref, p_ref, want = predict_reference(st, vid, st["cfg"])
    np.testing.assert_allclose(out["s_a"][vid], s_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["p_a"][vid], p_ref, rtol=1e-5, atol=1e-6)
    video = st["videos"][vid]
    got = out["results"][vid]
    assert_predicted(got, want)
    assert all(0 <= d["segment"][0] < d["segment"][1] <= video.duration for d in got)
  # CAS only for the requested video, cut to its length.
  assert list(out["cas"]) == ["v1"]
  cas_cls = st["feats"]["v1"].astype(np.float64) @ w
  np.testing.assert_allclose(out["cas"]["v1"]["cas_cls"], cas_cls, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["cas"]["v1"]["cas_loc"], 0.5 * cas_cls + 0.25, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(out["cas"]["v1"]["cas_a"], 0.75 * cas_cls + 0.125, rtol=1e-5,
                             atol=1e-6)
  json.dumps(out["results"], allow_nan=False)  # plain Python types


def test_predict_errors(predict_setup):
  st = predict_setup
  kw = dict(videos=st["videos"], class_names=CLASS_NAMES, rules=make_rules(**st["cfg"]),
            topk_ratio=4.0)
  with pytest.raises(ValueError, match="'v0' appears twice"):
    inference.predict(fake_apply, st["variables"], [st["batch"](["v0"]), st["batch"](["v0"])],
                      **kw)
  bad = st["batch"](["v2"])
  bad["video_ids"] = ["nope"]
  with pytest.raises(DataError, match="'nope'"):
    inference.predict(fake_apply, st["variables"], [bad], **kw)
  with pytest.raises(ValueError, match="class names"):
    inference.predict(fake_apply, st["variables"], st["batches"],
                      **{**kw, "class_names": CLASS_NAMES[:2]})
  assert "cas" not in inference.predict(fake_apply, st["variables"], st["batches"], **kw)


# ------------------------------------------------------------------ write


def test_write_detections(tmp_path, predict_setup):
  out = predict_setup["out"]
  path = tmp_path / "sub" / "detections.json"
  inference.write_detections(path, out)
  data = json.loads(path.read_text())
  assert data["version"] == "VERSION 1.3"
  assert data["external_data"]["used"] is True
  assert data["results"] == out["results"]
  assert os.listdir(path.parent) == ["detections.json"]
  # A plain {vid: [...]} mapping overwrites in place.
  inference.write_detections(path, {"x": [{"label": "Run", "score": 1.5,
                                           "segment": [0.0, 2.0]}]})
  assert json.loads(path.read_text())["results"] == {
      "x": [{"label": "Run", "score": 1.5, "segment": [0.0, 2.0]}]}


def test_write_detections_is_atomic(tmp_path, monkeypatch):
  path = tmp_path / "detections.json"
  good = {"a": [{"label": "Run", "score": 0.5, "segment": [1.0, 2.0]}]}
  inference.write_detections(path, good)
  before = path.read_text()
  with pytest.raises(ValueError, match="'b'.*not finite"):
    inference.write_detections(path, {"b": [{"label": "Run", "score": float("nan"),
                                             "segment": [0.0, 1.0]}]})

  def failing_dump(obj, f, **kwargs):
    f.write('{"version": ')  # a partial write, then a crash
    raise OSError("disk full")

  monkeypatch.setattr(inference.json, "dump", failing_dump)
  with pytest.raises(OSError, match="disk full"):
    inference.write_detections(path, good)
  assert path.read_text() == before
  assert os.listdir(tmp_path) == ["detections.json"]


def test_video_scores_from_classification_cas():
  rng = np.random.default_rng(3)
  lengths = np.array([7, 3])
  mask = np.arange(7)[None] < lengths[:, None]
  cas_cls = rng.normal(size=(2, 7, 3)).astype(np.float32)
  cas_loc = 50.0 + rng.normal(size=(2, 7, 3)).astype(np.float32)  # must not matter
  k = np.array([2, 1], np.int32)
  out = jax.device_get(inference.video_scores(cas_cls, cas_loc, mask, k,
                                              score_source="classification",
                                              contrast_loc_weight=0.5))
  s_ref, p_ref = ref_scores(cas_cls, cas_cls, lengths, k)  # (C_cls + C_cls) / 2 = C_cls
  np.testing.assert_allclose(out["s_a"], s_ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out["p_a"], p_ref, rtol=1e-6, atol=1e-7)
  # C_a is still the average of the two CAS.
  np.testing.assert_allclose(out["cas_a"][mask], ((cas_cls + cas_loc) / 2)[mask], rtol=1e-6)
  with pytest.raises(ValueError, match="score_source"):
    inference.video_scores(cas_cls, cas_loc, mask, k, score_source="bogus",
                           contrast_loc_weight=0.5)


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_video_scores_contrast_cas(weight):
  rng = np.random.default_rng(5)
  lengths = np.array([6, 4])
  mask = np.arange(6)[None] < lengths[:, None]
  cas_cls = rng.normal(size=(2, 6, 3)).astype(np.float32)
  cas_loc = rng.normal(size=(2, 6, 3)).astype(np.float32)
  cas_cls[1, 4:] = cas_loc[1, 4:] = 1e3  # padding garbage
  k = np.array([2, 1], np.int32)
  out = jax.device_get(inference.video_scores(cas_cls, cas_loc, mask, k,
                                              score_source="average",
                                              contrast_loc_weight=weight))
  want = (1 - weight) * cas_cls.astype(np.float64) + weight * cas_loc.astype(np.float64)
  np.testing.assert_allclose(out["cas_contrast"][mask], want[mask], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(out["cas_contrast"][~mask], 0.0)
  # The video scores and C_a do not depend on it.
  half = jax.device_get(inference.video_scores(cas_cls, cas_loc, mask, k,
                                               score_source="average",
                                               contrast_loc_weight=0.5))
  np.testing.assert_array_equal(half["cas_contrast"], half["cas_a"])
  np.testing.assert_array_equal(out["s_a"], half["s_a"])
  np.testing.assert_array_equal(out["cas_a"], half["cas_a"])
  with pytest.raises(ValueError, match="contrast_loc_weight"):
    inference.video_scores(cas_cls, cas_loc, mask, k, score_source="average",
                           contrast_loc_weight=1.5)


def test_predict_contrast_on_the_localization_cas(predict_setup):
  # contrast_loc_weight = 1: proposals cut from C_a, scored on C_loc.
  st = predict_setup
  cfg = make_config(cas_thresholds=(0.2, 0.5, 0.8), contrast_loc_weight=1.0)
  out = inference.predict(fake_apply, st["variables"], st["batches"], videos=st["videos"],
                          class_names=CLASS_NAMES, rules=make_rules(**cfg), topk_ratio=4.0)
  for vid in st["feats"]:
    got = out["results"][vid]
    assert_predicted(got, predict_reference(st, vid, cfg, contrast="loc")[2])
    # Not the scores of the contrast on C_a.
    on_a = st["out"]["results"][vid]
    assert not np.allclose([d["score"] for d in got][:len(on_a)],
                           [d["score"] for d in on_a][:len(got)], atol=1e-3)


def test_predict_extent_from_localization(predict_setup):
  st = predict_setup
  cfg = make_config(cas_thresholds=(0.2, 0.5, 0.8), extent="localization",
                    contrast_loc_weight=0.0)
  out = inference.predict(fake_apply, st["variables"], st["batches"], videos=st["videos"],
                          class_names=CLASS_NAMES, rules=make_rules(**cfg), topk_ratio=4.0)
  for vid in st["feats"]:
    assert_predicted(out["results"][vid],
                     predict_reference(st, vid, cfg, contrast="cls", extent="loc")[2])


def test_predict_proposals_cut_from_classification(predict_setup):
  # C_loc not an affine map of C_cls, so that C_a's runs differ from C_cls's.
  def apply_sq(variables, features, mask):
    cas = jnp.einsum("btd,dn->btn", features, variables["w"])
    return {"features": features, "cas_cls": cas, "cas_loc": 0.3 * cas ** 2 - cas}

  st = predict_setup
  moved = 0
  for extent in ("proposal", "localization"):
    cfg = make_config(cas_thresholds=(0.2, 0.5, 0.8), extent=extent, contrast_loc_weight=0.0,
                      proposal_cas="classification", extent_fallback=True)
    out = inference.predict(apply_sq, st["variables"], st["batches"], videos=st["videos"],
                            class_names=CLASS_NAMES, rules=make_rules(**cfg), topk_ratio=4.0)
    on_a = inference.predict(apply_sq, st["variables"], st["batches"], videos=st["videos"],
                             class_names=CLASS_NAMES, topk_ratio=4.0,
                             rules=make_rules(**{**cfg.to_dict(),
                                                             "proposal_cas": "average"}))
    for vid in st["feats"]:
      assert_predicted(out["results"][vid], predict_reference(
          st, vid, cfg, contrast="cls", extent="loc" if extent == "localization" else None,
          loc=lambda x: 0.3 * x ** 2 - x)[2])
      moved += out["results"][vid] != on_a["results"][vid]
  assert moved


def test_proposals_normalized_contrast_and_probability_score():
  cas = np.zeros((10, 3), np.float32)
  cas[:, 0] = [0, 4, 2, 0, 0, 1, 2, 4, 4, 2]  # normalised: / 4
  cas[:, 1] = np.arange(10)
  cas[:, 2] = 1.0
  s_a = np.array([0.5, -0.1, 0.2])
  p_a = np.exp(s_a) / np.exp(s_a).sum()
  dets = proposals.generate_proposals(
      cas, s_a, p_a, feature_rate=2.0, duration=4.8,
      rules=make_rules(contrast_on="normalized", class_score="p_a",
                         class_score_weight=1.0))
  # Class 0, normalised [0, 1, .5, 0, 0, .25, .5, 1, 1, .5] > 0.4:
  # [1, 3): inner .75, outer {0, 0} -> .75 + p0;  [6, 10): inner .75, outer {.25} -> .5 + p0.
  # Class 2 (constant -> all ones): inner 1, no outer -> 1 + p2. Class 1: s_a < 0, dropped.
  want = sorted([(0.75 + p_a[0], 0), (0.5 + p_a[0], 0), (1.0 + p_a[2], 2)], reverse=True)
  np.testing.assert_allclose([d["score"] for d in dets], [w[0] for w in want], atol=1e-12)
  assert [d["label"] for d in dets] == [w[1] for w in want]
  with pytest.raises(ValueError, match="contrast_on"):
    proposals.generate_proposals(cas, s_a, p_a, feature_rate=2.0, duration=4.8,
                                 rules=make_rules(contrast_on="bogus"))
