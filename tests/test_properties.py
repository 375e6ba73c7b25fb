"""Property-based tests (hypothesis) of jaxseg.losses and jaxseg.metrics.

Losses (paper eq. 1-13): for any lengths (prefix masks, one-segment and empty
videos included), any segment-label pattern, features and CAS of any scale
(zeros, 1e4 feature entries, all-equal CAS, large offsets) and any garbage in
the padded steps (NaN, +-inf, +-3e38):

* the value and the gradients are finite;
* padding invariance: the value and the gradients with garbage in the padded
  steps equal, bit for bit, those with zeros, and the gradient on padded steps
  is exactly zero;
* videos do not interact: the batch value is the mean of the values computed
  one video at a time (``B = 1``) over the non-empty videos, and a video's
  gradient does not change, to the bit, when the other videos' values do.

JAX compiles per shape, so every batch has the same padded shape (B, T, E, N)
and each loss is jitted once at module level (compiled for B and for 1).

Evaluator (``detection_map``, both protocols) on random ActivityNet-format
ground truth and predictions:

* every AP and the mAP lie in [0, 1];
* predictions equal to the ground truth (score 1, one per instance) give AP 1
  for every class at every threshold; for W-TALC only when the instances of a
  class in a video do not overlap: its first-in-annotation-order match can
  give an instance's own prediction to a neighbour
  (``test_wtalc_first_match_can_miss_with_overlapping_instances``);
* shuffling the prediction lists (within and across videos) changes nothing
  when the scores are distinct;
* adding an exact duplicate of a prediction never raises any AP when no
  prediction can reach two instances (thresholds above 0.5, disjoint instances
  per class and video). Outside that domain it can, under both protocols and
  in the official ActivityNet algorithm as well: the duplicate takes the second
  instance. The general property tested is therefore "an AP rises only at a
  threshold where the duplicated prediction reaches two instances", and
  ``test_duplicate_can_raise_ap_...`` shows the rise by hand.

Every ``@settings`` has ``derandomize=True`` (the same examples on every run,
no example database; hypothesis still caches source constants in
``.hypothesis/constants``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random

import jax
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jaxseg import metrics as ev
from jaxseg import losses
from tests import anet_json
from tests import reference_activitynet as anet_ref
from tests.helpers import loss_kwargs

# ================================================================== losses

B, T, E, N = 3, 16, 8, 4
MARGIN = 4

LOSS_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.too_slow])

FEATURE_KINDS = ("relu", "signed", "constant")
FEATURE_SCALES = (0.0, 1e-3, 1.0, 1e2, 1e4)
CAS_KINDS = ("normal", "equal", "time_constant")
CAS_SCALES = (0.0, 1e-3, 1.0, 30.0, 1e3, 1e4)
CAS_OFFSETS = (0.0, 1e3, -1e4)
DENSITIES = (0.0, 0.1, 0.5, 1.0)
GARBAGE = (math.nan, math.inf, -math.inf, 1e30, -3e38, 3e38, "random")


@dataclasses.dataclass(frozen=True)
class LossCase:
  """What hypothesis draws; :func:`build_batch` turns it into arrays.

  Attributes:
    lengths: ``B`` real lengths in ``[0, T]`` (prefix masks).
    labels: ``B`` non-zero bitmasks of the classes present in each video.
    feature_kind: ``"relu"`` (non-negative, as the model), ``"signed"`` or
      ``"constant"`` (one vector repeated over the video's steps).
    feature_scale: standard deviation of the features.
    cas_kind: ``"normal"``, ``"equal"`` (one value for every step and class of
      a video) or ``"time_constant"`` (constant over time per class).
    cas_scale: standard deviation of the CAS.
    cas_offset: added to every real CAS value.
    density: probability of ``u(t, n) = 1`` on a real step.
    garbage: what the padded steps hold in the "junk" copy (``"random"``: a
      mix of NaN, infinities and huge normals).
    seed: numpy seed of the values.
  """
  lengths: tuple[int, ...]
  labels: tuple[int, ...]
  feature_kind: str
  feature_scale: float
  cas_kind: str
  cas_scale: float
  cas_offset: float
  density: float
  garbage: float | str
  seed: int


@st.composite
def loss_cases(draw) -> LossCase:
  return LossCase(
      lengths=tuple(draw(st.lists(st.integers(0, T), min_size=B, max_size=B))),
      labels=tuple(draw(st.lists(st.integers(1, 2**N - 1), min_size=B, max_size=B))),
      feature_kind=draw(st.sampled_from(FEATURE_KINDS)),
      feature_scale=draw(st.sampled_from(FEATURE_SCALES)),
      cas_kind=draw(st.sampled_from(CAS_KINDS)),
      cas_scale=draw(st.sampled_from(CAS_SCALES)),
      cas_offset=draw(st.sampled_from(CAS_OFFSETS)),
      density=draw(st.sampled_from(DENSITIES)),
      garbage=draw(st.sampled_from(GARBAGE)),
      seed=draw(st.integers(0, 2**32 - 1)),
  )


def _cas(rng, case: LossCase) -> np.ndarray:
  if case.cas_kind == "equal":
    c = np.broadcast_to(rng.normal(size=(B, 1, 1)), (B, T, N))
  elif case.cas_kind == "time_constant":
    c = np.broadcast_to(rng.normal(size=(B, 1, N)), (B, T, N))
  else:
    c = rng.normal(size=(B, T, N))
  return c * case.cas_scale + case.cas_offset


def build_batch(case: LossCase) -> tuple[dict, dict]:
  """``(clean, junk)`` float32 batches: zeros / ``case.garbage`` on padding."""
  rng = np.random.default_rng(case.seed)
  lengths = np.asarray(case.lengths, np.int32)
  mask = np.arange(T)[None, :] < lengths[:, None]
  if case.feature_kind == "constant":
    f = np.broadcast_to(np.abs(rng.normal(size=(B, 1, E))), (B, T, E))
  else:
    f = rng.normal(size=(B, T, E))
    if case.feature_kind == "relu":
      f = np.maximum(f, 0.0)
  f = f * case.feature_scale
  labels = np.array([[(bits >> n) & 1 for n in range(N)] for bits in case.labels],
                    np.float32)
  seg = (rng.random((B, T, N)) < case.density) & mask[..., None]
  clean = dict(
      features=f, cas_cls=_cas(rng, case), cas_loc=_cas(rng, case),
      segment_labels=seg,
  )
  clean = {k: np.where(mask[..., None], v, 0.0).astype(np.float32)
           for k, v in clean.items()}
  clean.update(
      mask=mask, lengths=lengths, video_labels=labels,
      num_labeled=seg.any(axis=2).sum(axis=1).astype(np.int32),
      weight=rng.normal(size=(N, E)).astype(np.float32),
  )
  junk = dict(clean)
  for key in ("features", "cas_cls", "cas_loc", "segment_labels"):
    x = np.array(clean[key])
    if case.garbage == "random":
      fill = rng.choice(np.array([np.nan, np.inf, -np.inf, 1e38, -1e38], np.float32),
                        size=x.shape)
      fill = np.where(rng.random(x.shape) < 0.5, fill,
                      rng.normal(0.0, 1e20, x.shape).astype(np.float32))
    else:
      fill = np.full(x.shape, case.garbage, np.float32)
    x[~mask] = fill[~mask]
    junk[key] = x
  return clean, junk


def _total(f, cc, cl, w, b):
  outputs = {"features": f, "cas_cls": cc, "cas_loc": cl}
  return losses.total_loss(outputs, b, weight=w, **loss_kwargs(
      margin=MARGIN, classification_normalization="classes", propagation_similarity="dot",
      propagation_normalization="none"))[0]


def _propagation(method, similarity="dot"):
  return lambda f, cc, cl, w, b: losses.propagation_loss(
      f, cl, b["mask"], method=method, grad_through_similarity=True, similarity=similarity,
      normalization="none")


# Each takes (features, cas_cls, cas_loc, sphere weight, batch) -> scalar.
LOSS_FNS = {
    "classification": lambda f, cc, cl, w, b: losses.classification_loss(
        cc, b["video_labels"], b["mask"],
        losses.topk_k(b["lengths"], b["num_labeled"], mode="labeled", ratio=8.0),
        normalization="classes"),
    "segment": lambda f, cc, cl, w, b: losses.partial_segment_loss(
        cl, b["segment_labels"], b["mask"], normalization="none"),
    "sphere": lambda f, cc, cl, w, b: losses.sphere_loss(
        f, cl, b["video_labels"], b["mask"], w, margin=MARGIN, classes="present"),
    "propagation_naive": _propagation("naive"),
    "propagation_dense": _propagation("dense"),
    "propagation_factorized": _propagation("factorized"),
    "propagation_fused": _propagation("fused"),
    "propagation_fused_cosine": _propagation("fused", "cosine"),
    "total": _total,
}
# value_and_grad w.r.t. (features, cas_cls, cas_loc, weight), jitted once per
# loss (compiled for B = 3 and, in the interaction test, B = 1).
VALUE_AND_GRAD = {name: jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))
                  for name, fn in LOSS_FNS.items()}
BATCH_KEYS = ("mask", "lengths", "video_labels", "segment_labels", "num_labeled")
PADDED_INPUTS = ("features", "cas_cls", "cas_loc")


def run_loss(name: str, b: dict):
  """``(value, (g_features, g_cas_cls, g_cas_loc, g_weight))`` as float64 numpy."""
  value, grads = VALUE_AND_GRAD[name](
      b["features"], b["cas_cls"], b["cas_loc"], b["weight"],
      {k: b[k] for k in BATCH_KEYS})
  return np.float64(value), tuple(np.asarray(g, np.float64) for g in grads)


def one_video(b: dict, i: int) -> dict:
  """Video ``i`` of a batch as a batch of one (the sphere ``weight`` is shared)."""
  return {k: (v if k == "weight" else v[i:i + 1]) for k, v in b.items()}


# Extreme inputs, always run on top of the drawn examples.
EXTREME_CASES = (
    # One-segment videos, 1e4 features, all-equal CAS.
    LossCase((1, 1, 1), (1, 15, 8), "relu", 1e4, "equal", 1.0, 0.0, 1.0, math.nan, 0),
    # Full, one-segment and mid-length videos; 1e4 features and CAS; offset.
    LossCase((T, 1, 7), (3, 1, 12), "signed", 1e4, "normal", 1e4, -1e4, 1.0,
             -3e38, 1),
    LossCase((T, T, T), (15, 15, 15), "constant", 1e4, "normal", 1e3, 1e3, 0.5,
             math.inf, 2),
    # All-equal CAS with zero features, no labeled segment.
    LossCase((T, 5, 1), (2, 4, 8), "relu", 0.0, "equal", 0.0, 0.0, 0.0, -math.inf, 3),
    # An empty video (batch padding) next to a full and a one-segment one.
    LossCase((0, T, 1), (1, 2, 4), "relu", 1e2, "time_constant", 30.0, 0.0, 0.1,
             "random", 4),
    # Every video empty: the loss is 0.
    LossCase((0, 0, 0), (1, 1, 1), "relu", 1.0, "normal", 1.0, 0.0, 0.5, math.nan, 5),
)


def _with_extremes(test):
  for case in reversed(EXTREME_CASES):
    test = example(case=case)(test)
  return test


@pytest.mark.parametrize("name", list(LOSS_FNS))
@LOSS_SETTINGS
@given(case=loss_cases())
@_with_extremes
def test_loss_finite_and_padding_invariant(name, case):
  clean, junk = build_batch(case)
  value, grads = run_loss(name, clean)
  assert np.isfinite(value), (name, value)
  for g, what in zip(grads, PADDED_INPUTS + ("weight",)):
    assert np.all(np.isfinite(g)), (name, what)
  for g, what in zip(grads, PADDED_INPUTS):
    assert np.all(g[~clean["mask"]] == 0.0), (name, what)
  if not clean["mask"].any():
    assert value == 0.0
  value_junk, grads_junk = run_loss(name, junk)
  # Padding never reaches the result: the same numbers, bit for bit.
  np.testing.assert_array_equal(value_junk, value, err_msg=name)
  for g_junk, g in zip(grads_junk, grads):
    np.testing.assert_array_equal(g_junk, g, err_msg=name)


def _other_videos_from(clean: dict, other: dict, i: int) -> dict:
  """``clean`` with every video but ``i`` taken from ``other`` (same lengths)."""
  out = {}
  for k, v in clean.items():
    if k == "weight":
      out[k] = v
    else:
      out[k] = np.array(other[k])
      out[k][i] = v[i]
  return out


@pytest.mark.parametrize("name", list(LOSS_FNS))
@LOSS_SETTINGS
@given(case=loss_cases())
@_with_extremes
def test_loss_videos_do_not_interact(name, case):
  clean, _ = build_batch(case)
  value, grads = run_loss(name, clean)
  # Value: the mean over the non-empty videos of the one-video (B = 1) values.
  values = np.array([run_loss(name, one_video(clean, i))[0] for i in range(B)])
  valid = np.asarray(case.lengths) > 0
  assert np.all(values[~valid] == 0.0), name  # an empty video alone gives 0
  want = values[valid].sum() / max(int(valid.sum()), 1)
  np.testing.assert_allclose(value, want, rtol=1e-5,
                             atol=1e-5 * np.abs(values).max(), err_msg=name)
  # Gradient: a video's gradient does not depend, to the bit, on the other
  # videos' values (same lengths, so the same 1 / count factor). Not compared
  # with the B = 1 gradient: the 1 / count factor enters before cancelling
  # sums (e.g. the softmax gradient sum(y) p - y of a video with every class)
  # and changes their float32 rounding far above the result.
  other, _ = build_batch(dataclasses.replace(case, seed=case.seed ^ 0x5EED))
  for i in range(B):
    _, grads_mixed = run_loss(name, _other_videos_from(clean, other, i))
    for g_mixed, g, what in zip(grads_mixed, grads, PADDED_INPUTS):
      np.testing.assert_array_equal(g_mixed[i], g[i], err_msg=f"{name} d/d{what} video {i}")


# =============================================================== evaluator

EVAL_SETTINGS = settings(max_examples=120, deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.too_slow])
CLASSES = ("c0", "c1", "c2")
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # 0.05, ..., 1 (tIoU 0 is refused)
HIGH_THRESHOLDS = tuple(t for t in THRESHOLDS if t > 0.5)


_gt_dict = functools.partial(anet_json.ground_truth, duration=60.0)
_pred_dict = anet_json.results


@st.composite
def ground_truths(draw, disjoint: bool = False) -> dict:
  """1-3 videos, 0-5 instances each (at least one overall), bounds on a 0.1 s grid.

  ``disjoint``: the instances of a class in a video do not overlap and have
  positive length; otherwise anything (overlaps, copies, zero length).
  """
  videos = {}
  for v in range(draw(st.integers(1, 3))):
    if disjoint:
      anns = []
      for c in CLASSES:
        t = 0
        for _ in range(draw(st.integers(0, 2))):
          t += draw(st.integers(0, 50))
          length = draw(st.integers(1, 120))
          anns.append((t / 10, (t + length) / 10, c))
          t += length
      anns = draw(st.permutations(anns)) if anns else anns
    else:
      raw = draw(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 150),
                                    st.sampled_from(CLASSES)), max_size=5))
      anns = [(s / 10, (s + l) / 10, c) for s, l, c in raw]
      if anns and draw(st.booleans()):
        anns.append(draw(st.sampled_from(anns)))  # an exact copy
    videos[f"v{v}"] = anns
  if not any(videos.values()):
    videos["v0"] = [(1.0, 5.0, draw(st.sampled_from(CLASSES)))]
  return videos


@st.composite
def predictions(draw, gt: dict, min_size: int = 0) -> dict:
  """Predictions near the ground truth (jittered copies) or anywhere, on the GT
  videos and one unknown video; labels among the GT classes; distinct scores."""
  classes = sorted({c for anns in gt.values() for _, _, c in anns})
  instances = [(v, a) for v, anns in gt.items() for a in anns]
  n = draw(st.integers(min_size, 10))
  scores = draw(st.lists(st.integers(1, 10**6), min_size=n, max_size=n, unique=True))
  out: dict = {}
  for i in range(n):
    if draw(st.booleans()):
      v, (s, e, c) = draw(st.sampled_from(instances))
      s = round(s + draw(st.integers(-20, 20)) / 10, 1)
      e = round(max(s, e + draw(st.integers(-20, 20)) / 10), 1)
      if draw(st.integers(0, 9)) == 0:
        c = draw(st.sampled_from(classes))
    else:
      v = draw(st.sampled_from(sorted(gt) + ["unknown"]))
      s = draw(st.integers(0, 400)) / 10
      e = round(s + draw(st.integers(0, 150)) / 10, 1)
      c = draw(st.sampled_from(classes))
    out.setdefault(v, []).append((s, e, c, scores[i] / 10**6))
  return out


@st.composite
def eval_cases(draw, disjoint: bool = False, thresholds=THRESHOLDS,
               min_predictions: int = 0):
  gt = draw(ground_truths(disjoint=disjoint))
  preds = draw(predictions(gt, min_size=min_predictions))
  thr = draw(st.lists(st.sampled_from(thresholds), min_size=1, max_size=4, unique=True))
  return gt, preds, thr


def _evaluate(gt: dict, preds: dict, thr, protocol: str) -> pd.DataFrame:
  return ev.detection_map(_gt_dict(gt), _pred_dict(preds), thr, protocol=protocol)


@EVAL_SETTINGS
@given(case=eval_cases())
def test_ap_and_map_in_unit_interval(case):
  gt, preds, thr = case
  for protocol in ev.PROTOCOLS:
    df = _evaluate(gt, preds, thr, protocol)
    values = df.to_numpy(np.float64)
    assert values.shape == (len(df.index), len(thr))
    assert np.all(np.isfinite(values)), protocol
    assert np.all((values >= 0.0) & (values <= 1.0)), (protocol, df)
    np.testing.assert_allclose(df.loc[ev.MEAN_ROW], values[:-1].mean(axis=0))


def _perfect(gt: dict) -> dict:
  return {v: [(s, e, c, 1.0) for s, e, c in anns] for v, anns in gt.items() if anns}


@EVAL_SETTINGS
@given(gt=ground_truths(), thr=st.lists(st.sampled_from(THRESHOLDS), min_size=1,
                                        max_size=4, unique=True))
def test_perfect_prediction_scores_one_activitynet(gt, thr):
  # Any ground truth: overlapping instances, exact copies, zero length (0/0
  # tIoU is NaN, which the official loop does not reject). Each prediction's
  # tIoU-1 instances come first in its best-tIoU candidate walk.
  df = _evaluate(gt, _perfect(gt), thr, "activitynet")
  assert np.all(df.to_numpy() == 1.0), df


@EVAL_SETTINGS
@given(gt=ground_truths(disjoint=True),
       thr=st.lists(st.sampled_from(THRESHOLDS), min_size=1, max_size=4, unique=True))
def test_perfect_prediction_scores_one_wtalc(gt, thr):
  # W-TALC matches the *first* instance in annotation order, so with
  # overlapping instances of a class and tied scores AP 1 depends on the tie
  # order (see test_wtalc_first_match_can_miss_with_overlapping_instances).
  # Bounds are rounded to segment indices: an instance whose index range is
  # empty (shorter than a segment) can never be matched, so drop those.
  rate = ev.I3D_FEATURE_RATE
  kept = {v: [a for a in anns if round(a[1] * rate) > round(a[0] * rate)]
          for v, anns in gt.items()}
  if not any(kept.values()):
    kept["v0"] = [(1.0, 5.0, "c0")]
  df = _evaluate(kept, _perfect(kept), thr, "wtalc")
  assert np.all(df.to_numpy() == 1.0), df


def test_wtalc_first_match_can_miss_with_overlapping_instances():
  # Why the W-TALC perfect-prediction property needs disjoint instances (the
  # protocol, not a bug): A = [0, 10), B = [2, 12), C = [4, 14) (feature_rate
  # 1: indices = seconds); IoU(A, B) = IoU(B, C) = 8/12, IoU(A, C) = 6/14.
  # At 0.5, ranked B, C, A: B takes A (first in annotation order), C takes B,
  # A finds A and B taken. With score 1 everywhere the rank is numpy's tie
  # order (here: list order, so listing B, C, A gives the same 2/3); distinct
  # scores make the example independent of the sort implementation.
  gt = {"v": [(0.0, 10.0, "x"), (2.0, 12.0, "x"), (4.0, 14.0, "x")]}
  preds = {"v": [(2.0, 12.0, "x", 0.9), (4.0, 14.0, "x", 0.8), (0.0, 10.0, "x", 0.7)]}
  wtalc = ev.detection_map(_gt_dict(gt), _pred_dict(preds), [0.5], protocol="wtalc",
                           feature_rate=1.0)
  assert wtalc.loc["x", 0.5] == pytest.approx(2 / 3)  # (1 + 1) / 3
  # ActivityNet's best-tIoU match gives each prediction its own instance.
  assert _evaluate(gt, preds, [0.5], "activitynet").loc["x", 0.5] == 1.0


@EVAL_SETTINGS
@given(case=eval_cases(), rnd=st.randoms(use_true_random=False))
def test_prediction_order_does_not_matter(case, rnd: random.Random):
  gt, preds, thr = case
  videos = list(preds.items())
  rnd.shuffle(videos)
  shuffled = {v: rnd.sample(p, len(p)) for v, p in videos}
  for protocol in ev.PROTOCOLS:
    want = _evaluate(gt, preds, thr, protocol)
    got = _evaluate(gt, shuffled, thr, protocol)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert got.attrs == want.attrs


# ------------------------------------------------------- duplicate predictions


def _reachable(pred, gt: dict, thr: float, protocol: str) -> int:
  """How many instances of the prediction's class and video it can match at ``thr``.

  ActivityNet: continuous tIoU in seconds, NaN (0/0) counts (the official loop
  only stops at ``tiou < thr``). W-TALC: IoU of the rounded index ranges
  ``[round(s r), round(e r))``, 0 on an empty union, ``>= thr``.
  """
  v, (ps, pe, c, _) = pred
  count = 0
  for gs, ge, gc in gt.get(v, []):
    if gc != c:
      continue
    if protocol == "activitynet":
      inter = max(min(pe, ge) - max(ps, gs), 0.0)
      union = (ge - gs) + (pe - ps) - inter
      ok = not (inter / union < thr) if union != 0 else True
    else:
      r = ev.I3D_FEATURE_RATE
      a0, a1, b0, b1 = (int(np.rint(x * r)) for x in (ps, pe, gs, ge))
      inter = max(min(a1, b1) - max(a0, b0), 0)
      union = max(a1 - a0, 0) + max(b1 - b0, 0) - inter
      ok = (inter / union if union > 0 else 0.0) >= thr
    count += ok
  return count


@st.composite
def duplicate_cases(draw, disjoint: bool, thresholds):
  gt, preds, thr = draw(eval_cases(disjoint=disjoint, thresholds=thresholds,
                                   min_predictions=1))
  flat = [(v, p) for v, ps in preds.items() for p in ps]
  v, p = draw(st.sampled_from(flat))
  where = draw(st.integers(0, len(preds[v])))
  doubled = {u: list(ps) for u, ps in preds.items()}
  doubled[v].insert(where, p)  # anywhere in its video's list
  return gt, preds, doubled, (v, p), thr


def _check_duplicate(case, *, allow_two_reachable: bool):
  gt, preds, doubled, dup, thr = case
  for protocol in ev.PROTOCOLS:
    before = _evaluate(gt, preds, thr, protocol)
    after = _evaluate(gt, doubled, thr, protocol)
    rose = after.to_numpy() > before.to_numpy()
    if not allow_two_reachable:
      assert not rose.any(), (protocol, before, after)
    # The mean rises only with a class; only the duplicated prediction's class
    # can rise, and only where it reaches two instances (the original takes
    # one, the copy the other).
    assert not (rose[-1] & ~rose[:-1].any(axis=0)).any(), (protocol, before, after)
    for ci, ti in zip(*np.nonzero(rose[:-1])):
      cls, t = after.index[ci], thr[ti]
      assert cls == dup[1][2] and _reachable(dup, gt, t, protocol) >= 2, (
          protocol, cls, t, before, after)


@EVAL_SETTINGS
@given(case=duplicate_cases(disjoint=True, thresholds=HIGH_THRESHOLDS))
def test_duplicate_never_raises_ap(case):
  # Thresholds > 0.5 and disjoint instances: a prediction p reaches at most
  # one instance (tIoU > 0.5 needs an overlap > |p| / 2), so the copy is a
  # false positive right after the original, which can only lower precision.
  _check_duplicate(case, allow_two_reachable=False)


@EVAL_SETTINGS
@given(case=duplicate_cases(disjoint=False, thresholds=THRESHOLDS))
def test_duplicate_raises_ap_only_by_reaching_a_second_instance(case):
  _check_duplicate(case, allow_two_reachable=True)


def test_duplicate_can_raise_ap_when_one_prediction_reaches_two_instances():
  # Not a bug: the protocols' definition. [0, 10] has tIoU 0.4 with both
  # [0, 4] and [6, 10]; at 0.3 the original takes one, the copy the other.
  gt = {"v": [(0.0, 4.0, "x"), (6.0, 10.0, "x")]}
  once = {"v": [(0.0, 10.0, "x", 0.9)]}
  twice = {"v": [(0.0, 10.0, "x", 0.9), (0.0, 10.0, "x", 0.9)]}
  for protocol, rate in (("activitynet", None), ("wtalc", 1.0)):
    kw = {} if rate is None else {"feature_rate": rate}
    ap = [ev.detection_map(_gt_dict(gt), _pred_dict(p), [0.3], protocol=protocol,
                           **kw).loc["x", 0.3] for p in (once, twice)]
    assert ap == [pytest.approx(0.5), pytest.approx(1.0)], protocol
  # The official ActivityNet algorithm does the same.
  official = [anet_ref.evaluate(_gt_dict(gt), _pred_dict(p), [0.3])[0][0, 0]
              for p in (once, twice)]
  assert official == [pytest.approx(0.5), pytest.approx(1.0)]
