"""Tests of jaxseg.metrics and the jaxseg.score CLI.

The ActivityNet protocol is checked against tests/reference_activitynet.py (the
official eval_detection.py algorithm restated with pandas), the W-TALC protocol
against a set-based restatement of W-TALC's getLocMAP loop below, and both
against hand-computed values.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from jaxseg import classification_metrics
from jaxseg import map_summary
from jaxseg import metrics as ev
from jaxseg import score as cli
from jaxseg.data.video import DataError
from tests import anet_json
from tests import reference_activitynet as ref

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ builders


_gt = anet_json.ground_truth
_pred = anet_json.results


def _random_case(seed: int, n_vid: int = 40, n_cls: int = 6):
  """Random GT/predictions: jittered copies of GT (overlapping), random
  false positives, scores with many ties, duplicated GT (tIoU ties), a class
  never predicted, predictions on videos without ground truth, two subsets."""
  rng = np.random.default_rng(seed)
  classes = [f"class{i}" for i in range(n_cls)]
  never = classes[-1]  # annotated, never predicted
  db, res = {}, {}
  for v in range(n_vid):
    anns = []
    for _ in range(int(rng.integers(0, 6))):
      s = float(np.round(rng.uniform(0, 100), 1))
      e = float(np.round(s + rng.uniform(0, 20), 1))
      lab = classes[int(rng.integers(0, n_cls))]
      anns.append({"segment": [s, e], "label": lab})
      if rng.uniform() < 0.2:
        anns.append({"segment": [s, e], "label": lab})
    vid = f"video_{v}"
    db[vid] = {"subset": "test" if v % 3 else "validation", "duration": 130.0,
               "annotations": anns}
    preds = []
    for a in anns:
      for _ in range(int(rng.integers(0, 4))):
        s, e = a["segment"]
        j = rng.normal(0.0, 2.0, 2)
        s2 = float(np.round(s + j[0], 1))
        e2 = float(np.round(max(e + j[1], s2), 1))
        lab = a["label"] if rng.uniform() < 0.9 else classes[int(rng.integers(0, n_cls - 1))]
        preds.append({"label": lab, "score": float(np.round(rng.uniform(), 1)),
                      "segment": [s2, e2]})
    for _ in range(int(rng.integers(0, 4))):
      s = float(np.round(rng.uniform(0, 100), 1))
      preds.append({"label": classes[int(rng.integers(0, n_cls - 1))],
                    "score": float(np.round(rng.uniform(), 1)),
                    "segment": [s, float(np.round(s + rng.uniform(0, 20), 1))]})
    preds = [p for p in preds if p["label"] != never]
    rng.shuffle(preds)
    if preds:
      res[vid] = preds
  for k in range(3):  # videos absent from the ground truth
    res[f"unknown_{k}"] = [{"label": classes[k], "score": 0.5 + 0.2 * k,
                            "segment": [1.0, 9.0]}]
  # Make sure the never-predicted class is annotated in both subsets.
  db["video_1"]["annotations"].append({"segment": [3.0, 8.0], "label": never})
  db["video_0"]["annotations"].append({"segment": [3.0, 8.0], "label": never})
  return {"database": db}, {"results": res}, never


ANET_THRESHOLDS = np.linspace(0.1, 0.95, 18)


# ------------------------------------------------------- ActivityNet protocol


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("subset", [None, "test"])
def test_activitynet_matches_official_reference(seed, subset):
  gt, pred, never = _random_case(seed, n_vid=30 + 10 * seed)
  want, activity_index = ref.evaluate(gt, pred, ANET_THRESHOLDS, subset)
  got = ev.detection_map(gt, pred, ANET_THRESHOLDS, subset, protocol="activitynet")
  assert list(got.index) == list(activity_index) + ["mean"]
  assert list(got.columns) == [round(float(t), 6) for t in ANET_THRESHOLDS]
  np.testing.assert_allclose(got.drop(index="mean").to_numpy().T, want, atol=1e-6, rtol=0)
  np.testing.assert_allclose(got.loc["mean"].to_numpy(), want.mean(axis=1), atol=1e-6, rtol=0)
  assert np.all(got.loc[never] == 0.0)
  assert got.loc["mean"].iloc[0] > 0.2  # not a trivial all-zero case
  assert got.attrs["protocol"] == "activitynet"


def test_activitynet_reference_agreement_is_sensitive_to_tie_order():
  # The randomized cases above have tied scores whose order changes the AP:
  # ranking ties the other way round gives a different table.
  gt, pred, _ = _random_case(0)
  base = ev.detection_map(gt, pred, ANET_THRESHOLDS, protocol="activitynet")
  flipped = {"results": {v: ps[::-1] for v, ps in reversed(list(pred["results"].items()))}}
  other = ev.detection_map(gt, flipped, ANET_THRESHOLDS, protocol="activitynet")
  want, _ = ref.evaluate(gt, flipped, ANET_THRESHOLDS)
  np.testing.assert_allclose(other.drop(index="mean").to_numpy().T, want, atol=1e-6, rtol=0)
  assert np.abs(base.to_numpy() - other.to_numpy()).max() > 1e-3


def test_zero_length_segments_as_official():
  # 0/0 tIoU is NaN in the official code; NaN is not below any threshold, so a
  # zero-length prediction on a zero-length GT at the same time matches.
  gt = {"database": {"a": {"subset": "t", "annotations": [
      {"segment": [5, 5], "label": "x"}, {"segment": [5, 9], "label": "x"},
      {"segment": [5, 5], "label": "x"}]}}}
  pred = _pred({"a": [(5, 5, "x", 0.9), (5, 5, "x", 0.8), (4, 9, "x", 0.7),
                      (5, 5, "x", 0.95)]})
  want, _ = ref.evaluate(gt, pred, [0.1, 0.5, 0.9])
  got = ev.detection_map(gt, pred, [0.1, 0.5, 0.9], protocol="activitynet")
  np.testing.assert_allclose(got.loc["x"].to_numpy(), want[:, 0], atol=1e-12)
  np.testing.assert_allclose(want[:, 0], [11 / 12, 11 / 12, 2 / 3])


def test_perfect_predictions_score_one():
  gt = _gt({"a": [(1.0, 5.0, "x"), (10.0, 20.0, "y")], "b": [(0.0, 3.0, "x")]})
  pred = _pred({"a": [(1.0, 5.0, "x", 0.9), (10.0, 20.0, "y", 0.8)], "b": [(0.0, 3.0, "x", 0.7)]})
  for protocol in ev.PROTOCOLS:
    df = ev.detection_map(gt, pred, ev.ACTIVITYNET_TIOU, protocol=protocol)
    assert np.all(df.to_numpy() == 1.0), protocol


def test_one_tp_after_one_fp_is_one_half():
  gt = _gt({"a": [(10.0, 20.0, "x")]})
  pred = _pred({"a": [(40.0, 50.0, "x", 0.9), (10.0, 20.0, "x", 0.5)]})
  df = ev.detection_map(gt, pred, [0.5], protocol="activitynet")
  assert df.loc["x", 0.5] == pytest.approx(0.5)


def test_interpolated_ap_by_hand():
  # 3 GT; ranked TP, FP, TP, TP: precision at the TPs 1, 2/3, 3/4.
  # Interpolated (ActivityNet): (1 + 3/4 + 3/4) / 3; non-interpolated (W-TALC):
  # (1 + 2/3 + 3/4) / 3.
  gt = _gt({"a": [(0.0, 10.0, "x"), (20.0, 30.0, "x"), (40.0, 50.0, "x")]})
  pred = _pred({"a": [(0.0, 10.0, "x", 0.9), (60.0, 70.0, "x", 0.8),
                      (20.0, 30.0, "x", 0.7), (40.0, 50.0, "x", 0.6)]})
  anet = ev.detection_map(gt, pred, [0.5], protocol="activitynet")
  wtalc = ev.detection_map(gt, pred, [0.5], protocol="wtalc", feature_rate=1.0)
  assert anet.loc["x", 0.5] == pytest.approx((1 + 0.75 + 0.75) / 3)
  assert wtalc.loc["x", 0.5] == pytest.approx((1 + 2 / 3 + 0.75) / 3)


def test_class_without_prediction_has_ap_zero_and_counts_in_mean():
  gt = _gt({"a": [(0.0, 10.0, "x"), (20.0, 30.0, "y")]})
  pred = _pred({"a": [(0.0, 10.0, "x", 0.9)]})
  df = ev.detection_map(gt, pred, [0.5, 0.7], protocol="activitynet")
  assert list(df.index) == ["x", "y", "mean"]
  np.testing.assert_array_equal(df.loc["y"], [0.0, 0.0])
  np.testing.assert_allclose(df.loc["mean"], [0.5, 0.5])


def test_prediction_on_video_without_gt_is_false_positive():
  gt = _gt({"a": [(0.0, 10.0, "x")], "b": [(0.0, 10.0, "y")]})
  # "b" has no "x"; "c" is not in the ground truth; both rank above the TP.
  pred = _pred({"b": [(0.0, 10.0, "x", 0.9)], "c": [(0.0, 10.0, "x", 0.8)],
                "a": [(0.0, 10.0, "x", 0.7)]})
  df = ev.detection_map(gt, pred, [0.5], protocol="activitynet")
  assert df.loc["x", 0.5] == pytest.approx(1 / 3)


def test_subset_filter_and_predictions_on_other_subset():
  gt = {"database": {
      "t1": {"subset": "test", "annotations": [{"segment": [0, 10], "label": "x"}]},
      "v1": {"subset": "validation", "annotations": [{"segment": [0, 10], "label": "x"},
                                                     {"segment": [0, 10], "label": "y"}]}}}
  pred = _pred({"v1": [(0.0, 10.0, "x", 0.9)], "t1": [(0.0, 10.0, "x", 0.5)]})
  test = ev.detection_map(gt, pred, [0.5], subset="test", protocol="activitynet")
  assert list(test.index) == ["x", "mean"]
  assert test.loc["x", 0.5] == pytest.approx(0.5)  # the validation video is an FP
  both = ev.detection_map(gt, pred, [0.5], protocol="activitynet")
  assert both.loc["x", 0.5] == pytest.approx(1.0)
  assert both.loc["y", 0.5] == 0.0


def test_best_tiou_match_versus_first_match():
  # With feature_rate 1 the W-TALC indices equal the seconds. P1 overlaps A
  # (tIoU 8/11) and B (0.9); P2 overlaps A (0.9) and B (7/12).
  gt = _gt({"a": [(0.0, 10.0, "x"), (2.0, 12.0, "x")]})
  pred = _pred({"a": [(2.0, 11.0, "x", 0.9), (0.0, 9.0, "x", 0.8)]})
  anet = ev.detection_map(gt, pred, [0.5, 0.7], protocol="activitynet")
  wtalc = ev.detection_map(gt, pred, [0.5, 0.7], protocol="wtalc", feature_rate=1.0)
  # ActivityNet: P1 -> B, P2 -> A at both thresholds.
  np.testing.assert_allclose(anet.loc["x"], [1.0, 1.0])
  # W-TALC at 0.7: P1 takes A (first in list), P2 misses B (7/12 < 0.7).
  np.testing.assert_allclose(wtalc.loc["x"], [1.0, 0.5])


def test_numeric_string_bounds_equal_numbers():
  gt = _gt({"a": [(1.5, 7.25, "x"), (20.0, 30.0, "x")]})
  gt_str = _gt({"a": [("1.5", "7.25", "x"), ("20", "30.0", "x")]})
  pred = _pred({"a": [(1.0, 7.0, "x", 0.9), (22.0, 30.0, "x", 0.3)]})
  pd.testing.assert_frame_equal(ev.detection_map(gt, pred, [0.5, 0.8], protocol="activitynet"),
                                ev.detection_map(gt_str, pred, [0.5, 0.8], protocol="activitynet"))


def test_thresholds_as_spec_and_column_names():
  gt = _gt({"a": [(0.0, 10.0, "x")]})
  pred = _pred({"a": [(0.0, 8.0, "x", 1.0)]})
  df = ev.detection_map(gt, pred, "0.5:0.95:0.05", protocol="activitynet")
  assert list(df.columns) == list(ev.ACTIVITYNET_TIOU)
  np.testing.assert_array_equal(df.loc["x"], [1.0 if t <= 0.8 else 0.0
                                              for t in ev.ACTIVITYNET_TIOU])
  df2 = ev.detection_map(gt, pred, np.linspace(0.5, 0.95, 10), protocol="activitynet")
  assert list(df2.columns) == list(ev.ACTIVITYNET_TIOU)


def test_class_names_order_and_classes_without_gt():
  gt = _gt({"a": [(0.0, 10.0, "x"), (20.0, 30.0, "y")]})
  pred = _pred({"a": [(0.0, 10.0, "x", 0.5), (20.0, 30.0, "z", 0.9), (20.0, 30.0, "y", 0.4)]})
  df = ev.detection_map(gt, pred, [0.5], class_names=["z", "y", "x"], protocol="activitynet")
  assert list(df.index) == ["y", "x", "mean"]  # "z" has no ground truth
  np.testing.assert_allclose(df[0.5], [1.0, 1.0, 1.0])
  assert df.attrs["num_predictions"] == 2
  with pytest.raises(ValueError, match=r"video 'a'.*'label'.*'w'"):
    ev.detection_map(gt, _pred({"a": [(0.0, 1.0, "w", 0.1)]}), [0.5], class_names=["x", "y"],
                     protocol="activitynet")
  with pytest.raises(ValueError, match=r"'y' is not in class_names"):
    ev.detection_map(gt, pred, [0.5], class_names=["x", "z"], protocol="activitynet")


def test_extra_top_level_keys_ignored():
  gt = _gt({"a": [(0.0, 10.0, "x")]})
  gt["version"] = "1.3"
  pred = _pred({"a": [(0.0, 10.0, "x", 0.5)]})
  pred["p_a"] = {"a": [0.1]}
  pred["external_data"] = {}
  assert ev.detection_map(gt, pred, [0.5], protocol="activitynet").loc["x", 0.5] == 1.0


@pytest.mark.parametrize("gt_videos, pred_videos, pattern", [
    ({"v": {"subset": "t"}}, {}, r"ground truth: video 'v': missing field 'annotations'"),
    ({"v": {"subset": "t", "annotations": [{"label": "x"}]}}, {},
     r"video 'v': missing field 'segment'"),
    ({"v": {"subset": "t", "annotations": [{"segment": [0, 1]}]}}, {},
     r"video 'v': missing field 'label'"),
    ({"v": {"subset": "t", "annotations": [{"segment": ["a", 1], "label": "x"}]}}, {},
     r"video 'v': field 'annotations\[0\].segment\[0\]': 'a' is not a number"),
    ({"v": {"subset": "t", "annotations": [{"segment": [5, 1], "label": "x"}]}}, {},
     r"video 'v': field 'annotations\[0\].segment': end 1.0 < start 5.0"),
    ({"v": {"subset": "t", "annotations": [{"segment": [0, "nan"], "label": "x"}]}}, {},
     r"video 'v'.*not finite"),
    ({"v": {"subset": "t", "annotations": [{"segment": [0, 1, 2], "label": "x"}]}}, {},
     r"video 'v'.*expected \[start, end\]"),
    ({"v": {"subset": "t", "annotations": [{"segment": [0, 1], "label": "x"}]}},
     {"w": [{"segment": [0, 1], "label": "q", "score": 1.0}]},
     r"predictions: video 'w': field 'label': unknown label 'q'"),
    ({"v": {"subset": "t", "annotations": [{"segment": [0, 1], "label": "x"}]}},
     {"w": [{"segment": [0, 1], "label": "x"}]}, r"predictions: video 'w': missing field 'score'"),
    ({"v": {"subset": "t", "annotations": [{"segment": [0, 1], "label": "x"}]}},
     {"w": [{"segment": [0, 1], "label": "x", "score": "high"}]},
     r"video 'w': field 'results\[0\].score'.*not a number"),
    ({"v": {"subset": "t", "annotations": [{"segment": [0, 1], "label": "x"}]}},
     {"w": [{"segment": [3, 1], "label": "x", "score": 1.0}]},
     r"predictions: video 'w': field 'results\[0\].segment': end"),
    ({"v": {"subset": "t", "annotations": [{"segment": [0, 1], "label": "x"}]}},
     {"w": [{"label": "x", "score": 1.0}]}, r"predictions: video 'w': missing field 'segment'"),
    ({"v": {"subset": "t", "annotations": []}}, {}, r"no annotated instance"),
])
def test_bad_input_names_video_and_field(gt_videos, pred_videos, pattern):
  with pytest.raises(ValueError, match=pattern):
    ev.detection_map({"database": gt_videos}, {"results": pred_videos}, [0.5],
                     protocol="activitynet")


def test_bad_top_level_and_arguments():
  ok_gt = _gt({"a": [(0.0, 1.0, "x")]})
  with pytest.raises(DataError, match="ground truth: missing field 'database'"):
    ev.detection_map({}, {"results": {}}, [0.5], protocol="activitynet")
  with pytest.raises(DataError, match="predictions: missing field 'results'"):
    ev.detection_map(ok_gt, {}, [0.5], protocol="activitynet")
  with pytest.raises(ValueError, match=r"subset 'val' is empty|no video in subset 'val'"):
    ev.detection_map(ok_gt, {"results": {}}, [0.5], subset="val", protocol="activitynet")
  with pytest.raises(ValueError, match="video 'a': missing field 'subset'"):
    ev.detection_map({"database": {"a": {"annotations": []}}}, {"results": {}}, [0.5],
                     subset="test", protocol="activitynet")
  with pytest.raises(ValueError, match="protocol"):
    ev.detection_map(ok_gt, {"results": {}}, [0.5], protocol="voc")
  with pytest.raises(ValueError, match="outside"):
    ev.detection_map(ok_gt, {"results": {}}, [0.5, 1.5], protocol="activitynet")
  with pytest.raises(ValueError, match="feature_rate"):
    ev.detection_map(ok_gt, {"results": {}}, [0.5], protocol="wtalc", feature_rate=0.0)


def test_empty_predictions_give_zero():
  df = ev.detection_map(_gt({"a": [(0.0, 1.0, "x")]}), {"results": {}}, [0.1, 0.5],
                        protocol="activitynet")
  assert np.all(df.to_numpy() == 0.0)


# ------------------------------------------------------------ W-TALC protocol


def _wtalc_reference(gt: dict, pred: dict, th: float, factor: float, ambiguous=None):
  """W-TALC's getLocMAP restated: set-based IoU of index ranges, ``del`` of the
  matched GT, ``np.argsort(-score)``. Videos without annotations are dropped;
  a class without predictions gets AP 0 (W-TALC returns 0 for the whole mAP)."""
  videoname, gtsegments, gtlabels, ambilist = [], [], [], []
  for v, entry in gt["database"].items():
    segs = [(float(a["segment"][0]), float(a["segment"][1]), a["label"])
            for a in entry["annotations"]]
    ambilist += [(v, s, e) for s, e, l in segs if l == "Ambiguous"]
    segs = [x for x in segs if x[2] != "Ambiguous"]
    if segs:
      videoname.append(v)
      gtsegments.append([x[:2] for x in segs])
      gtlabels.append([x[2] for x in segs])
  for v, segs in (ambiguous or {}).items():
    ambilist += [(v, s, e) for s, e in segs]
  classes = sorted({l for ls in gtlabels for l in ls})
  aps = []
  for c in classes:
    segment_predict = []
    for i, v in enumerate(videoname):
      for p in pred["results"].get(v, []):
        if p["label"] == c:
          segment_predict.append([i, int(round(p["segment"][0] * factor)),
                                  int(round(p["segment"][1] * factor)), p["score"]])
    kept = []
    for sp in segment_predict:
      overlap = False
      for vn, s, e in ambilist:
        if vn == videoname[sp[0]]:
          g = set(range(int(round(s * factor)), int(round(e * factor))))
          q = set(range(sp[1], sp[2]))
          if g | q and len(g & q) / len(g | q) > 0:
            overlap = True
      if not overlap:
        kept.append(sp)
    if not kept:
      aps.append(0.0)
      continue
    segment_predict = np.array(kept, dtype=float)
    segment_predict = segment_predict[np.argsort(-segment_predict[:, 3])]
    segment_gt = [[i, gtsegments[i][j][0], gtsegments[i][j][1]]
                  for i in range(len(gtsegments)) for j in range(len(gtsegments[i]))
                  if gtlabels[i][j] == c]
    gtpos = len(segment_gt)
    tp = []
    for i in range(len(segment_predict)):
      flag = 0.0
      for j in range(len(segment_gt)):
        if segment_predict[i][0] == segment_gt[j][0]:
          g = set(range(int(round(segment_gt[j][1] * factor)),
                        int(round(segment_gt[j][2] * factor))))
          q = set(range(int(segment_predict[i][1]), int(segment_predict[i][2])))
          union = g | q
          iou = len(g & q) / len(union) if union else 0.0
          if iou >= th:
            flag = 1.0
            del segment_gt[j]
            break
      tp.append(flag)
    tp = np.array(tp)
    tp_c = np.cumsum(tp)
    prec = tp_c / np.arange(1, len(tp) + 1)
    aps.append(float(np.sum(prec * tp) / gtpos) if tp.sum() else 0.0)
  return dict(zip(classes, aps))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wtalc_matches_set_based_reference(seed):
  gt, pred, _ = _random_case(seed + 10)
  rng = np.random.default_rng(seed)
  vids = list(gt["database"])
  for v in vids[:: 4]:  # some Ambiguous instances in the ground truth
    s = float(np.round(rng.uniform(0, 90), 1))
    gt["database"][v]["annotations"].append({"segment": [s, s + 5.0], "label": "Ambiguous"})
  gt["database"]["only_ambiguous"] = {
      "subset": "test", "annotations": [{"segment": [0, 5], "label": "Ambiguous"}]}
  pred["results"]["only_ambiguous"] = [{"label": "class0", "score": 1.0, "segment": [20, 30]}]
  ambiguous = {vids[1]: [[50.0, 55.0]], vids[2]: [[0.0, 3.0], [70.5, 80.0]]}
  # W-TALC ranks a class's predictions listed in dataset video order, whatever
  # the order of the results file.
  pred = {"results": dict(reversed(list(pred["results"].items())))}
  thresholds = (0.1, 0.3, 0.5, 0.7)
  got = ev.detection_map(gt, pred, thresholds, protocol="wtalc", ambiguous=ambiguous)
  assert got.attrs["protocol"] == "wtalc"
  assert "Ambiguous" not in got.index
  for t in thresholds:
    want = _wtalc_reference(gt, pred, t, 25 / 16, ambiguous)
    assert set(want) == set(got.index[:-1])
    for c, ap in want.items():
      assert got.loc[c, t] == pytest.approx(ap, abs=1e-12), (c, t)
    assert got.loc["mean", t] == pytest.approx(np.mean(list(want.values())), abs=1e-12)
  assert got.loc["mean", 0.1] > 0.2


def test_wtalc_ambiguous_predictions_removed():
  gt = _gt({"a": [(10.0, 20.0, "x"), (40.0, 50.0, "Ambiguous")]})
  # A false positive overlapping the ambiguous interval ranks first.
  pred = _pred({"a": [(42.0, 48.0, "x", 0.9), (10.0, 20.0, "x", 0.5)]})
  wtalc = ev.detection_map(gt, pred, [0.5], protocol="wtalc", feature_rate=1.0)
  assert list(wtalc.index) == ["x", "mean"]
  assert wtalc.loc["x", 0.5] == 1.0
  assert wtalc.attrs["num_instances"] == 1 and wtalc.attrs["num_predictions"] == 1
  # Under ActivityNet "Ambiguous" is an ordinary class and the FP counts.
  anet = ev.detection_map(gt, pred, [0.5], protocol="activitynet")
  assert list(anet.index) == ["x", "Ambiguous", "mean"]
  assert anet.loc["x", 0.5] == 0.5
  # The same interval given with ambiguous=; touching (no shared index) is kept.
  gt2 = _gt({"a": [(10.0, 20.0, "x")]})
  pred2 = _pred({"a": [(42.0, 48.0, "x", 0.9), (50.0, 60.0, "x", 0.8),
                       (10.0, 20.0, "x", 0.5)]})
  df = ev.detection_map(gt2, pred2, [0.5], protocol="wtalc", feature_rate=1.0,
                        ambiguous={"a": [[40.0, 50.0]], "elsewhere": [[0, 100]]})
  assert df.loc["x", 0.5] == pytest.approx(0.5)  # FP at 50-60 kept, then the TP
  assert df.attrs["num_predictions"] == 2


def test_wtalc_segment_index_iou_and_rounding():
  # 25/16 segments per second: GT [0, 3.2] s -> [0, 5); prediction [0.3, 3.2] s
  # -> round(0.46875) = 0 -> [0, 5): index IoU 1, continuous tIoU 2.9/3.2.
  gt = _gt({"a": [(0.0, 3.2, "x")]})
  pred = _pred({"a": [(0.3, 3.2, "x", 0.9)]})
  wtalc = ev.detection_map(gt, pred, [0.9, 0.95], protocol="wtalc")
  anet = ev.detection_map(gt, pred, [0.9, 0.95], protocol="activitynet")
  np.testing.assert_array_equal(wtalc.loc["x"], [1.0, 1.0])
  np.testing.assert_array_equal(anet.loc["x"], [1.0, 0.0])
  # Round half to even, as Python's round: at 2 segments per second 0.25 s ->
  # 0.5 -> 0 and 0.75 s -> 1.5 -> 2.
  gt = _gt({"a": [(0.25, 5.0, "x")]})  # [0, 10)
  pred = _pred({"a": [(0.75, 5.0, "x", 0.9)]})  # [2, 10): IoU 0.8
  df = ev.detection_map(gt, pred, [0.8, 0.81], protocol="wtalc", feature_rate=2.0)
  np.testing.assert_array_equal(df.loc["x"], [1.0, 0.0])


def test_wtalc_ignores_predictions_on_unannotated_videos():
  gt = _gt({"a": [(0.0, 10.0, "x")], "b": [], "c": [(0.0, 5.0, "Ambiguous")]})
  pred = _pred({"b": [(0.0, 10.0, "x", 0.9)], "c": [(20.0, 30.0, "x", 0.9)],
                "z": [(0.0, 10.0, "x", 0.9)], "a": [(0.0, 10.0, "x", 0.5)]})
  assert ev.detection_map(gt, pred, [0.5], protocol="wtalc").loc["x", 0.5] == 1.0
  df = ev.detection_map(gt, pred, [0.5], protocol="activitynet")
  assert df.loc["x", 0.5] == pytest.approx(0.25)


# ------------------------------------------------------------------ averages


def _table(values: dict, protocol="activitynet") -> pd.DataFrame:
  ts = sorted(values)
  df = pd.DataFrame([[values[t] for t in ts]], index=["mean"], columns=ts)
  df.attrs["protocol"] = protocol
  return df


def test_average_over_and_summarize():
  vals = {t: 0.1 * (i + 1) for i, t in enumerate(ev.THUMOS14_TIOU)}  # 0.1 .. 0.7
  df = _table(vals, "wtalc")
  assert map_summary.average_over(df, 0.1, 0.5) == pytest.approx(0.3)
  assert map_summary.average_over(df, 0.1, 0.7) == pytest.approx(0.4)
  assert map_summary.average_over(df, 0.3, 0.3) == pytest.approx(0.3)
  with pytest.raises(ValueError, match="no tIoU threshold"):
    map_summary.average_over(df, 0.8, 0.9)
  s = map_summary.summarize(df)
  assert list(s.index) == ["wtalc"]
  assert list(s.columns) == [f"mAP@{t:g}" for t in ev.THUMOS14_TIOU] + ["avg0.1:0.5",
                                                                         "avg0.1:0.7"]
  np.testing.assert_allclose(s.iloc[0].to_numpy(),
                             [10, 20, 30, 40, 50, 60, 70, 30, 40])
  with pytest.raises(ValueError, match="0.9 is not among"):
    map_summary.summarize(df, averages=(("avg", 0.1, 0.9),))
  # A run's config.eval.averages: over the thresholds inside the range, or left out.
  lenient = map_summary.summarize(df, averages=(("a", 0.15, 0.35), ("b", 0.8, 0.9)), lenient=True)
  assert lenient["a"].iloc[0] == pytest.approx(25.0) and "b" not in lenient
  custom = map_summary.summarize(df, averages=(("avg0.2:0.4", 0.2, 0.4),))
  assert custom["avg0.2:0.4"].iloc[0] == pytest.approx(30.0)


def test_summary_rounds_like_papers():
  df = _table({0.5: 0.123456, 0.55: 0.2, 0.6: 0.3, 0.65: 0.4, 0.7: 0.5, 0.75: 0.6,
               0.8: 0.7, 0.85: 0.8, 0.9: 0.9, 0.95: 0.987654})
  s = map_summary.summarize(df).round(1)
  assert list(s.columns)[-1] == "avg0.5:0.95"
  assert s["mAP@0.5"].iloc[0] == 12.3 and s["mAP@0.95"].iloc[0] == 98.8
  assert s["avg0.5:0.95"].iloc[0] == round(100 * np.mean(list(df.iloc[0])), 1)
  assert map_summary.summarize(df).round(2)["mAP@0.5"].iloc[0] == 12.35


def test_default_averages():
  assert map_summary.default_averages(ev.THUMOS14_TIOU) == ev.THUMOS14_AVERAGES
  assert map_summary.default_averages(ev.ACTIVITYNET_TIOU) == ev.ACTIVITYNET_AVERAGES
  assert map_summary.default_averages((0.1, 0.2, 0.3, 0.4, 0.5)) == (("avg0.1:0.5", 0.1, 0.5),)
  assert map_summary.default_averages((0.3, 0.5)) == (("avg0.3:0.5", 0.3, 0.5),)
  assert map_summary.default_averages((0.5,)) == ()


def test_summarize_per_class_averages():
  gt = _gt({"a": [(0.0, 10.0, "x"), (20.0, 30.0, "y")]})
  pred = _pred({"a": [(0.0, 7.0, "x", 0.9), (20.0, 30.0, "y", 0.8)]})
  df = ev.detection_map(gt, pred, ev.THUMOS14_TIOU, protocol="activitynet")
  r = map_summary.summarize(df, per_class=True)
  # x: tIoU 0.7 -> TP up to 0.7 inclusive; y: perfect.
  np.testing.assert_allclose(r.loc["x", [f"mAP@{t:g}" for t in ev.THUMOS14_TIOU]], 100.0)
  df2 = ev.detection_map(gt, _pred({"a": [(0.0, 5.0, "x", 0.9)]}), ev.THUMOS14_TIOU,
                         protocol="activitynet")
  r2 = map_summary.summarize(df2, per_class=True)
  np.testing.assert_allclose(r2.loc["x", "avg0.1:0.5"], 100.0)  # tIoU exactly 0.5
  np.testing.assert_allclose(r2.loc["x", "avg0.1:0.7"], 100.0 * 5 / 7)
  np.testing.assert_allclose(r2.loc["mean", "avg0.1:0.7"], 100.0 * 5 / 14)
  assert (r2["protocol"] == "activitynet").all()


# --------------------------------------------------------------- parse_tiou


def test_parse_tiou():
  assert ev.parse_tiou("0.1:0.7:0.1") == ev.THUMOS14_TIOU
  assert ev.parse_tiou("0.5:0.95:0.05") == ev.ACTIVITYNET_TIOU
  assert ev.parse_tiou(" 0.3, 0.5 ") == (0.3, 0.5)
  assert ev.parse_tiou("0.5") == (0.5,)
  assert ev.parse_tiou("0.1:0.1:0.2") == (0.1,)
  assert len(ev.THUMOS14_TIOU) == 7 and len(ev.ACTIVITYNET_TIOU) == 10


@pytest.mark.parametrize("spec", ["", "0.1:0.7", "0.7:0.1:0.1", "0.1:0.7:0", "0.1:0.7:-0.1",
                                  "abc", "0.1,", "1.5", "-0.1", "0.3,0.3", "nan", "0.1:inf:0.1"])
def test_parse_tiou_rejects(spec):
  with pytest.raises(ValueError, match="tIoU spec"):
    ev.parse_tiou(spec)


# ------------------------------------------------------------ classification


def _ap_by_hand(y, s):
  """Sum over positives of precision at their rank / #positives (no ties)."""
  order = sorted(range(len(s)), key=lambda i: -s[i])
  hits, total = 0, 0.0
  for rank, i in enumerate(order, start=1):
    if y[i]:
      hits += 1
      total += hits / rank
  return total / sum(y)


def test_classification_map_by_hand():
  y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]], np.float32)
  s = np.array([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.4, 0.6, 0.1], [0.3, 0.2, 0.5],
                [0.2, 0.9, 0.4]])
  # Class 0 ranks videos 0,1,2,3,4 with positives 0,2,4: (1 + 2/3 + 3/5) / 3.
  # Class 1 ranks 4,1,2,3,0 with positives 1,2: (1/2 + 2/3) / 2. Class 2: none.
  ap = classification_metrics.classification_ap(y, s)
  assert ap[0] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
  assert ap[1] == pytest.approx((1 / 2 + 2 / 3) / 2)
  assert math.isnan(ap[2])
  assert classification_metrics.classification_map(y, s) == pytest.approx((ap[0] + ap[1]) / 2)


def test_classification_map_random_and_ties():
  rng = np.random.default_rng(0)
  y = (rng.uniform(size=(50, 8)) < 0.3).astype(np.int32)
  s = rng.uniform(size=(50, 8))
  ap = classification_metrics.classification_ap(y, s)
  for c in range(8):
    assert ap[c] == pytest.approx(_ap_by_hand(y[:, c].tolist(), s[:, c].tolist()))
  # Ties share the precision at the end of the tie: scores [1, 1, 0] with
  # labels [0, 1, 1]: (1/2 + 2/3) / 2, whatever the video order.
  a = classification_metrics.classification_ap(np.array([[0], [1], [1]]), np.array([[1.0], [1.0], [0.0]]))
  b = classification_metrics.classification_ap(np.array([[1], [0], [1]]), np.array([[1.0], [1.0], [0.0]]))
  assert a[0] == pytest.approx((1 / 2 + 2 / 3) / 2) and b[0] == pytest.approx(a[0])


def test_classification_errors():
  with pytest.raises(ValueError, match="must both be"):
    classification_metrics.classification_map(np.zeros((3, 2)), np.zeros((3, 3)))
  with pytest.raises(ValueError, match="0 or 1"):
    classification_metrics.classification_map(np.full((2, 2), 2), np.zeros((2, 2)))
  with pytest.raises(ValueError, match="finite"):
    classification_metrics.classification_map(np.eye(2), np.array([[np.nan, 0], [0, 1]]))
  with pytest.raises(ValueError, match="no class has a positive"):
    classification_metrics.classification_map(np.zeros((2, 2)), np.zeros((2, 2)))


# ----------------------------------------------------------------------- CLI


@pytest.fixture()
def files(tmp_path):
  gt, pred, _ = _random_case(5)
  gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
  gt_path.write_text(json.dumps(gt))
  pred_path.write_text(json.dumps(pred))
  return gt, pred, str(gt_path), str(pred_path)


def test_cli_prints_and_writes_csv(files, tmp_path, capsys):
  gt, pred, gt_path, pred_path = files
  out = tmp_path / "results.csv"
  rc = cli.main(["--ground-truth", gt_path, "--predictions", pred_path, "--subset", "test",
                 "--tiou", "0.1:0.7:0.1", "--output", str(out), "--per-class"])
  assert rc == 0
  text = capsys.readouterr().out
  assert "ActivityNet protocol" in text and "avg0.1:0.5" in text and "avg0.1:0.7" in text
  df = ev.detection_map(gt, pred, ev.THUMOS14_TIOU, "test", protocol="activitynet")
  summary = map_summary.summarize(df).round(1)
  assert summary.to_string() in text
  with open(out, newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["class"] for r in rows] == list(df.index)
  for r in rows:
    for t in ev.THUMOS14_TIOU:
      assert float(r[f"mAP@{t:g}"]) == pytest.approx(100 * df.loc[r["class"], t], abs=1e-9)
    assert float(r["avg0.1:0.5"]) == pytest.approx(
        100 * df.loc[r["class"], [0.1, 0.2, 0.3, 0.4, 0.5]].mean(), abs=1e-9)
    assert r["protocol"] == "activitynet"
  assert sorted(os.listdir(tmp_path)) == ["gt.json", "pred.json", "results.csv"]


def test_cli_wtalc_and_activitynet_thresholds(files, tmp_path, capsys):
  gt, pred, gt_path, pred_path = files
  amb = tmp_path / "amb.json"
  amb.write_text(json.dumps({"video_3": [[0, 50]]}))
  rc = cli.main(["--ground-truth", gt_path, "--predictions", pred_path, "--protocol", "wtalc",
                 "--tiou", "0.5:0.95:0.05", "--ambiguous", str(amb)])
  assert rc == 0
  text = capsys.readouterr().out
  assert "W-TALC protocol" in text and "avg0.5:0.95" in text and "avg0.1:0.5" not in text
  df = ev.detection_map(gt, pred, ev.ACTIVITYNET_TIOU, protocol="wtalc",
                        ambiguous={"video_3": [[0, 50]]})
  assert map_summary.summarize(df).round(1).to_string() in text


@pytest.mark.parametrize("which, content, pattern", [
    ("gt", None, "ground-truth file not found"),
    ("gt", "{not json", "malformed JSON"),
    ("pred", None, "predictions file not found"),
    ("pred", '{"results": {"v": [{"label": "class0", "score": 1, "segment": [2, 1]}]}}',
     "video 'v': field 'results\\[0\\].segment': end"),
    ("pred", '{"res": {}}', "missing field 'results'"),
    ("gt", '{"database": {"v": {"subset": "test"}}}', "video 'v': missing field 'annotations'"),
    ("gt", '{"database": {"v": {"subset": "test", "annotations": [{"segment": [-20, 1], '
     '"label": "class0"}]}}}', "video 'v': field 'annotations\\[0\\].segment': start -20.0 < 0"),
    ("gt", '{"database": {"v": {"subset": "test", "annotations": [{"segment": [1, 2], '
     '"label": "  "}]}}}', "video 'v': field 'annotations\\[0\\].label': empty class name"),
])
def test_cli_bad_files(files, tmp_path, capsys, which, content, pattern):
  _, _, gt_path, pred_path = files
  bad = str(tmp_path / f"bad_{which}.json")
  if content is not None:
    with open(bad, "w") as f:
      f.write(content)
  args = ["--ground-truth", bad if which == "gt" else gt_path,
          "--predictions", bad if which == "pred" else pred_path,
          "--output", str(tmp_path / "r.csv")]
  assert cli.main(args) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith(f"error: {bad}: ")
  assert pd.Series([err]).str.contains(pattern).all(), err
  assert not os.path.exists(tmp_path / "r.csv")


def test_labels_are_read_without_surrounding_space_as_the_readers_read_them(tmp_path, capsys):
  """A ground-truth label "Diving " trains as "Diving" (the readers strip it),
  so the run's detections say "Diving": scored as the same class."""
  gt = {"database": {"v": {"subset": "test", "duration": 30.0, "annotations": [
      {"segment": [2.0, 6.0], "label": "Diving "}, {"segment": [10.0, 14.0], "label": "Bowl"}]}}}
  pred = {"results": {"v": [{"label": "Diving", "score": 0.9, "segment": [2.0, 6.0]},
                            {"label": " Bowl", "score": 0.8, "segment": [10.0, 14.0]}]}}
  df = ev.detection_map(gt, pred, [0.5], protocol="activitynet")
  assert sorted(df.index[:-1]) == ["Bowl", "Diving"]
  assert df.loc["Bowl", 0.5] == df.loc["Diving", 0.5] == 1.0
  (tmp_path / "gt.json").write_text(json.dumps(gt))
  (tmp_path / "pred.json").write_text(json.dumps(pred))
  assert cli.main(["--ground-truth", str(tmp_path / "gt.json"), "--predictions",
                   str(tmp_path / "pred.json"), "--tiou", "0.5"]) == 0
  assert "100.0" in capsys.readouterr().out


def test_cli_bad_arguments(files, tmp_path, capsys):
  _, _, gt_path, pred_path = files
  for argv in (["--ground-truth", gt_path], ["--ground-truth", gt_path, "--predictions",
                                             pred_path, "--protocol", "x"]):
    with pytest.raises(SystemExit) as e:  # a usage error: one line, not argparse's block
      cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: ") and err.endswith("; see python -m jaxseg.score --help\n")
  assert cli.main(["--ground-truth", gt_path, "--predictions", pred_path,
                   "--tiou", "0.1:0.7"]) == 2
  assert "--tiou" in capsys.readouterr().err
  assert cli.main(["--ground-truth", gt_path, "--predictions", pred_path,
                   "--output", str(tmp_path / "missing_dir" / "r.csv")]) == 2
  assert "missing_dir" in capsys.readouterr().err
  assert cli.main(["--ground-truth", gt_path, "--predictions", pred_path, "--subset", "x"]) == 2
  assert "no video in subset 'x'" in capsys.readouterr().err
  for rate in ("0", "-1", "nan"):
    assert cli.main(["--ground-truth", gt_path, "--predictions", pred_path, "--protocol",
                     "wtalc", "--feature-rate", rate]) == 2
    assert capsys.readouterr().err.startswith("error: --feature-rate: ")


def test_cli_output_never_replaces_an_input(files, tmp_path, capsys):
  _, _, gt_path, pred_path = files
  os.symlink(gt_path, tmp_path / "link.csv")
  before = {p: open(p, "rb").read() for p in (gt_path, pred_path)}
  for out, flag in ((gt_path, "--ground-truth"), (pred_path, "--predictions"),
                    (str(tmp_path / "link.csv"), "--ground-truth")):
    assert cli.main(["--ground-truth", gt_path, "--predictions", pred_path,
                     "--output", out]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --output {out}: is the {flag} file; choose another path\n"
  assert {p: open(p, "rb").read() for p in before} == before


def test_cli_module_entry_point(files):
  _, _, gt_path, pred_path = files
  env = dict(os.environ, PYTHONPATH=REPO)
  ok = subprocess.run([sys.executable, "-m", "jaxseg.score", "--ground-truth", gt_path,
                       "--predictions", pred_path, "--tiou", "0.3,0.5"],
                      capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
  assert ok.returncode == 0, ok.stderr
  assert "mAP@0.3" in ok.stdout and "avg0.3:0.5" in ok.stdout
  bad = subprocess.run([sys.executable, "-m", "jaxseg.score", "--ground-truth",
                        gt_path + ".missing", "--predictions", pred_path],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
  assert bad.returncode == 2
  assert bad.stderr.strip() == f"error: {gt_path}.missing: ground-truth file not found"
  old_name = subprocess.run([sys.executable, "-m", "jaxseg.evaluate", "--ground-truth", gt_path],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
  assert old_name.returncode == 2 and old_name.stdout == ""
  assert old_name.stderr.count("\n") == 1 and "python -m jaxseg.score" in old_name.stderr


def test_activitynet_ambiguous_predictions_removed():
  """THUMOS14's rule under the ActivityNet protocol: a prediction overlapping an
  ambiguous interval (by more than 0 s) is not evaluated; touching is no overlap."""
  gt = {"database": {"a": {"subset": "test", "annotations": [
      {"segment": [10.0, 20.0], "label": "x"}]}}}
  fp_first = {"results": {"a": [{"label": "x", "score": 0.9, "segment": [30.0, 40.0]},
                                {"label": "x", "score": 0.5, "segment": [10.0, 20.0]}]}}
  plain = ev.detection_map(gt, fp_first, [0.5], protocol="activitynet")
  assert plain.loc["mean", 0.5] == pytest.approx(0.5)
  got = ev.detection_map(gt, fp_first, [0.5], protocol="activitynet",
                         ambiguous={"a": [[35.0, 50.0]], "other": [[0.0, 1.0]]})
  assert got.loc["mean", 0.5] == pytest.approx(1.0)
  assert got.attrs["num_predictions"] == 1
  touching = ev.detection_map(gt, fp_first, [0.5], protocol="activitynet",
                              ambiguous={"a": [[40.0, 50.0]]})
  assert touching.loc["mean", 0.5] == pytest.approx(0.5)
