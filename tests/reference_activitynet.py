"""Independent reference of the official ActivityNet detection evaluation.

A re-statement of the algorithm of ``Evaluation/eval_detection.py`` in the
ActivityNet challenge kit (class ``ANETdetection``), written for the tests of
:mod:`jaxseg.metrics` and deliberately sharing no code with it. It keeps the
official structure: pandas DataFrames of ground truth and predictions, an
activity index built from the ground-truth labels in order of first appearance,
``segment_iou``, ``compute_average_precision_detection`` with one ``lock_gt``
row per threshold and ``interpolated_prec_rec`` (VOC-style).

Left out from the official class: file reading (it takes the loaded dicts),
the blocked-videos request to the challenge server, joblib parallelism and
printing. ``subset=None`` keeps every video (the official always filters).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def import_ground_truth(data: dict, subset: str | None):
  """The official ``_import_ground_truth`` on an already loaded dict."""
  activity_index, cidx = {}, 0
  video_lst, t_start_lst, t_end_lst, label_lst = [], [], [], []
  for videoid, v in data["database"].items():
    if subset is not None and subset != v["subset"]:
      continue
    for ann in v["annotations"]:
      if ann["label"] not in activity_index:
        activity_index[ann["label"]] = cidx
        cidx += 1
      video_lst.append(videoid)
      t_start_lst.append(float(ann["segment"][0]))
      t_end_lst.append(float(ann["segment"][1]))
      label_lst.append(activity_index[ann["label"]])
  ground_truth = pd.DataFrame({"video-id": video_lst,
                               "t-start": t_start_lst,
                               "t-end": t_end_lst,
                               "label": label_lst})
  return ground_truth, activity_index


def import_prediction(data: dict, activity_index: dict) -> pd.DataFrame:
  """The official ``_import_prediction`` (unknown labels raise ``KeyError``)."""
  video_lst, t_start_lst, t_end_lst = [], [], []
  label_lst, score_lst = [], []
  for videoid, v in data["results"].items():
    for result in v:
      label = activity_index[result["label"]]
      video_lst.append(videoid)
      t_start_lst.append(float(result["segment"][0]))
      t_end_lst.append(float(result["segment"][1]))
      label_lst.append(label)
      score_lst.append(result["score"])
  return pd.DataFrame({"video-id": video_lst,
                       "t-start": t_start_lst,
                       "t-end": t_end_lst,
                       "label": label_lst,
                       "score": score_lst})


def segment_iou(target_segment, candidate_segments):
  """tIoU of one segment ``[s, e]`` against ``(M, 2)`` candidates."""
  tt1 = np.maximum(target_segment[0], candidate_segments[:, 0])
  tt2 = np.minimum(target_segment[1], candidate_segments[:, 1])
  segments_intersection = (tt2 - tt1).clip(0)
  segments_union = ((candidate_segments[:, 1] - candidate_segments[:, 0])
                    + (target_segment[1] - target_segment[0])
                    - segments_intersection)
  with np.errstate(divide="ignore", invalid="ignore"):
    tiou = segments_intersection.astype(float) / segments_union
  return tiou


def interpolated_prec_rec(prec, rec):
  """VOC-style interpolated average precision."""
  mprec = np.hstack([[0], prec, [0]])
  mrec = np.hstack([[0], rec, [1]])
  for i in range(len(mprec) - 1)[::-1]:
    mprec[i] = max(mprec[i], mprec[i + 1])
  idx = np.where(mrec[1::] != mrec[0:-1])[0] + 1
  ap = np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx])
  return ap


def compute_average_precision_detection(ground_truth, prediction, tiou_thresholds):
  """AP of one class at each threshold, as the official function."""
  ap = np.zeros(len(tiou_thresholds))
  if prediction.empty:
    return ap

  npos = float(len(ground_truth))
  lock_gt = np.ones((len(tiou_thresholds), len(ground_truth))) * -1
  # Sort predictions by decreasing score order.
  sort_idx = prediction["score"].values.argsort()[::-1]
  prediction = prediction.loc[sort_idx].reset_index(drop=True)

  tp = np.zeros((len(tiou_thresholds), len(prediction)))
  fp = np.zeros((len(tiou_thresholds), len(prediction)))

  ground_truth_gbvn = ground_truth.groupby("video-id")

  for idx, this_pred in prediction.iterrows():
    try:
      ground_truth_videoid = ground_truth_gbvn.get_group(this_pred["video-id"])
    except Exception:  # pylint: disable=broad-except
      fp[:, idx] = 1
      continue

    this_gt = ground_truth_videoid.reset_index()
    tiou_arr = segment_iou(this_pred[["t-start", "t-end"]].values.astype(float),
                           this_gt[["t-start", "t-end"]].values)
    # Ground truth with the highest tIoU first.
    tiou_sorted_idx = tiou_arr.argsort()[::-1]
    for tidx, tiou_thr in enumerate(tiou_thresholds):
      for jdx in tiou_sorted_idx:
        if tiou_arr[jdx] < tiou_thr:
          fp[tidx, idx] = 1
          break
        if lock_gt[tidx, this_gt.loc[jdx]["index"]] >= 0:
          continue
        tp[tidx, idx] = 1
        lock_gt[tidx, this_gt.loc[jdx]["index"]] = idx
        break
      if fp[tidx, idx] == 0 and tp[tidx, idx] == 0:
        fp[tidx, idx] = 1

  tp_cumsum = np.cumsum(tp, axis=1).astype(float)
  fp_cumsum = np.cumsum(fp, axis=1).astype(float)
  recall_cumsum = tp_cumsum / npos
  precision_cumsum = tp_cumsum / (tp_cumsum + fp_cumsum)

  for tidx in range(len(tiou_thresholds)):
    ap[tidx] = interpolated_prec_rec(precision_cumsum[tidx, :], recall_cumsum[tidx, :])
  return ap


def get_predictions_with_label(prediction_by_label, cidx):
  try:
    return prediction_by_label.get_group(cidx).reset_index(drop=True)
  except Exception:  # pylint: disable=broad-except
    return pd.DataFrame()


def evaluate(ground_truth: dict, prediction: dict, tiou_thresholds, subset=None):
  """Returns ``(ap (K, C), activity_index)`` as ``ANETdetection.evaluate`` computes."""
  tiou_thresholds = np.asarray(tiou_thresholds, dtype=float)
  gt, activity_index = import_ground_truth(ground_truth, subset)
  pred = import_prediction(prediction, activity_index)
  ap = np.zeros((len(tiou_thresholds), len(activity_index)))
  ground_truth_by_label = gt.groupby("label")
  prediction_by_label = pred.groupby("label")
  for label_name, cidx in activity_index.items():
    del label_name
    ap[:, cidx] = compute_average_precision_detection(
        ground_truth=ground_truth_by_label.get_group(cidx).reset_index(drop=True),
        prediction=get_predictions_with_label(prediction_by_label, cidx),
        tiou_thresholds=tiou_thresholds)
  return ap, activity_index
