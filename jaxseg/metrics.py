"""Detection mAP at temporal IoU, two protocols.

Two detection protocols, chosen with ``protocol=`` and labeled in every output
(``DataFrame.attrs["protocol"]``, the summary row name, the CLI header):

* ``"activitynet"`` (default): the algorithm of the official ActivityNet
  ``eval_detection.py`` (``ANETdetection``). Continuous tIoU in seconds; per
  class, predictions sorted by score (``argsort()[::-1]``, the official tie
  order); each prediction takes, per threshold, the unmatched ground truth of
  its video with the highest tIoU, if that tIoU reaches the threshold;
  VOC-style interpolated AP; a class without predictions has AP 0; the classes
  are the ground-truth labels, in order of first appearance.
* ``"wtalc"``: the W-TALC ``getDetectionMAP`` protocol. Bounds in seconds are
  rounded to segment indices (``feature_rate`` segments per second), IoU on
  index sets; predictions that overlap an "Ambiguous" interval are removed;
  each prediction takes the *first* unmatched ground truth (annotation order)
  whose IoU reaches the threshold; non-interpolated AP (sum of the precision at
  each true positive over the number of ground truths).

``docs/evaluation.md`` states both protocols precisely and how they differ.
The paper reports the THUMOS14 mAP at tIoU 0.1:0.1:0.7 with the 0.1-0.5 average
(its Table 2) and the ActivityNet average over 0.5:0.05:0.95 (Tables 3-4):
:mod:`jaxseg.map_summary` averages and summarizes the table; video
classification mAP (its Table 5) is :mod:`jaxseg.classification_metrics`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from jaxseg import detection_inputs
from jaxseg.config import (ACTIVITYNET_AVERAGES, ACTIVITYNET_TIOU, PROTOCOLS,
                           THUMOS14_AVERAGES, THUMOS14_TIOU)
from jaxseg.data.video import I3D_FEATURE_RATE, DataError

__all__ = [
    "ACTIVITYNET_AVERAGES", "ACTIVITYNET_TIOU", "AMBIGUOUS_LABEL", "MEAN_ROW",
    "PROTOCOLS", "PROTOCOL_LABELS", "THUMOS14_AVERAGES", "THUMOS14_TIOU", "detection_map",
    "parse_tiou",
]

PROTOCOL_LABELS = {
    "activitynet": "ActivityNet protocol (interpolated AP, best-tIoU match)",
    "wtalc": "W-TALC protocol (non-interpolated AP, first match, segment-index IoU)",
}
AMBIGUOUS_LABEL = "Ambiguous"
MEAN_ROW = "mean"



# ----------------------------------------------------------------- thresholds


# More tIoU thresholds than this is a typo in a range (0:1:1e-9), not a request.
MAX_THRESHOLDS = 100


def parse_tiou(spec: str) -> tuple[float, ...]:
  """Parses a tIoU threshold list.

  Args:
    spec: ``"start:stop:step"`` (stop inclusive, e.g. ``"0.1:0.7:0.1"`` or
      ``"0.5:0.95:0.05"``), a comma-separated list (``"0.3,0.5"``) or one value.

  Returns:
    The thresholds, each rounded to 10 decimals (no ``0.30000000000000004``).

  Raises:
    ValueError: on an empty or malformed spec, a non-positive step, a stop
      below the start, a value outside (0, 1], a repeated value, or more than
      ``MAX_THRESHOLDS`` (100) thresholds.
  """
  text = str(spec).strip()
  if not text:
    raise ValueError("tIoU spec is empty")
  try:
    if ":" in text:
      parts = text.split(":")
      if len(parts) != 3:
        raise ValueError("expected start:stop:step")
      start, stop, step = (float(p) for p in parts)
      if not all(math.isfinite(v) for v in (start, stop, step)):
        raise ValueError("values must be finite")
      if step <= 0:
        raise ValueError("step must be positive")
      if stop < start:
        raise ValueError("stop is below start")
      n = int(math.floor((stop - start) / step + 1e-9)) + 1
      if n > MAX_THRESHOLDS:  # checked before the list is built
        raise ValueError(f"{n} thresholds; at most {MAX_THRESHOLDS}")
      values = [round(start + i * step, 10) for i in range(n)]
    else:
      values = [round(float(p), 10) for p in text.split(",")]
  except ValueError as e:
    raise ValueError(f"bad tIoU spec {spec!r}: {e}") from None
  return _check_thresholds(values, what=f"tIoU spec {spec!r}")


def _check_thresholds(values: Iterable[float], what: str = "tiou_thresholds") -> tuple[float, ...]:
  out = []
  for v in values:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
      raise ValueError(f"{what}: {v!r} is not a number")
    v = float(v)
    if not 0.0 < v <= 1.0:  # also NaN; tIoU 0 would count disjoint detections as hits
      raise ValueError(f"{what}: {v!r} is outside (0, 1]")
    out.append(v)
  if not out:
    raise ValueError(f"{what}: no threshold")
  if len(out) > MAX_THRESHOLDS:
    raise ValueError(f"{what}: {len(out)} thresholds; at most {MAX_THRESHOLDS}")
  labels = [_label(v) for v in out]
  if len(set(labels)) != len(labels):
    raise ValueError(f"{what}: repeated threshold in {out}")
  return tuple(out)


def _label(t: float) -> float:
  """The column name of threshold ``t`` (``np.linspace`` drift removed)."""
  return round(float(t), 6)


# ------------------------------------------------------------ shared helpers


def _group(codes: np.ndarray) -> dict[int, np.ndarray]:
  """Positions of each code, each group in increasing position order."""
  if codes.size == 0:
    return {}
  order = np.argsort(codes, kind="stable")
  sorted_codes = codes[order]
  cuts = np.flatnonzero(np.diff(sorted_codes)) + 1
  return {int(sorted_codes[g[0]]): g_idx
          for g, g_idx in zip(np.split(np.arange(codes.size), cuts), np.split(order, cuts))}


def _interpolated_ap(tp: np.ndarray, npos: int) -> np.ndarray:
  """VOC-style interpolated AP per row of ``tp`` ``(K, P) bool`` (ranked)."""
  tp_c = np.cumsum(tp, axis=1, dtype=np.float64)
  fp_c = np.cumsum(~tp, axis=1, dtype=np.float64)
  rec = tp_c / float(npos)
  prec = tp_c / (tp_c + fp_c)
  k = tp.shape[0]
  mprec = np.concatenate([np.zeros((k, 1)), prec, np.zeros((k, 1))], axis=1)
  mrec = np.concatenate([np.zeros((k, 1)), rec, np.ones((k, 1))], axis=1)
  mprec = np.maximum.accumulate(mprec[:, ::-1], axis=1)[:, ::-1]
  d = mrec[:, 1:] - mrec[:, :-1]
  return np.sum(np.where(d != 0, d * mprec[:, 1:], 0.0), axis=1)


def _activitynet_class_ap(gt_vid, gt_seg, pr_vid, pr_seg, pr_score,
                          thr: np.ndarray) -> np.ndarray:
  """AP ``(K,)`` of one class under the ActivityNet protocol.

  Args:
    gt_vid, gt_seg: ``(G,) int64``, ``(G, 2) float64``, the class's ground
      truth in document order.
    pr_vid, pr_seg, pr_score: ``(P,)``, ``(P, 2)``, ``(P,)``, its predictions in
      document order (``pr_vid`` -1 for videos without ground truth).
    thr: ``(K,) float64`` thresholds.
  """
  k, p = thr.size, pr_score.size
  if p == 0:
    return np.zeros(k)
  order = pr_score.argsort()[::-1]  # the official call: same tie order
  pr_vid, pr_seg = pr_vid[order], pr_seg[order]
  tp = np.zeros((k, p), bool)
  thr_min = thr.min()
  gt_groups = _group(gt_vid)
  for v, ranks in _group(pr_vid).items():
    g = gt_groups.get(v)
    if g is None:
      continue  # false positives at every threshold
    gs, ge = gt_seg[g, 0], gt_seg[g, 1]
    ps, pe = pr_seg[ranks, 0:1], pr_seg[ranks, 1:2]
    inter = (np.minimum(pe, ge) - np.maximum(ps, gs)).clip(0)
    union = (ge - gs) + (pe - ps) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
      tiou = inter / union  # (R, n); NaN on 0/0 as the official
    live = ~np.all(tiou < thr_min, axis=1)
    locked = np.zeros((k, g.size), bool)
    for i in np.flatnonzero(live):
      t = tiou[i]
      cand = t.argsort()[::-1]  # the official candidate order
      # Official loop: walk candidates by tIoU; stop at the first below the
      # threshold; take the first one not yet locked.
      prefix = ~np.logical_or.accumulate(t[cand][None, :] < thr[:, None], axis=1)
      eligible = prefix & ~locked[:, cand]
      hit = np.flatnonzero(eligible.any(axis=1))
      if hit.size:
        first = eligible[hit].argmax(axis=1)
        locked[hit, cand[first]] = True
        tp[hit, ranks[i]] = True
  return _interpolated_ap(tp, gt_vid.size)


def _wtalc_class_ap(gt_vid, gt_idx, pr_vid, pr_idx, pr_score, thr: np.ndarray) -> np.ndarray:
  """AP ``(K,)`` of one class under the W-TALC protocol.

  Args:
    gt_vid, gt_idx: ``(G,) int64``, ``(G, 2) int64`` ground truth in list order,
      bounds as segment indices (the index range ``[s, e)``).
    pr_vid, pr_idx, pr_score: ``(P,)``, ``(P, 2) int64``, ``(P,) float64``, in
      document order (all ``pr_vid`` >= 0).
    thr: ``(K,) float64``.
  """
  k, p = thr.size, pr_score.size
  if p == 0:
    return np.zeros(k)
  # W-TALC lists a class's predictions video by video (dataset order), then
  # ranks them with np.argsort(-score): same input order, same tie order.
  by_video = np.argsort(pr_vid, kind="stable")
  pr_vid, pr_idx, pr_score = pr_vid[by_video], pr_idx[by_video], pr_score[by_video]
  order = np.argsort(-pr_score)
  pr_vid, pr_idx = pr_vid[order], pr_idx[order]
  tp = np.zeros((k, p), bool)
  gt_groups = _group(gt_vid)
  for v, ranks in _group(pr_vid).items():
    g = gt_groups.get(v)
    if g is None:
      continue
    iou = _index_iou(pr_idx[ranks], gt_idx[g])  # (R, n)
    locked = np.zeros((k, g.size), bool)
    above = iou[:, None, :] >= thr[None, :, None]  # (R, K, n)
    for i in np.flatnonzero(above.any(axis=(1, 2))):
      eligible = above[i] & ~locked
      hit = np.flatnonzero(eligible.any(axis=1))
      if hit.size:
        first = eligible[hit].argmax(axis=1)  # first in annotation order
        locked[hit, first] = True
        tp[hit, ranks[i]] = True
  tp_c = np.cumsum(tp, axis=1, dtype=np.float64)
  prec = tp_c / np.arange(1, p + 1, dtype=np.float64)
  return np.sum(prec * tp, axis=1) / float(gt_vid.size)


def _index_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU of index ranges ``[s, e)``: ``(R, 2)`` x ``(n, 2)`` -> ``(R, n)``.

  Equals ``len(set(range(..)) & set(range(..))) / len(union)`` (0 on an empty union).
  """
  inter = np.maximum(np.minimum(a[:, 1:2], b[None, :, 1]) - np.maximum(a[:, 0:1], b[None, :, 0]), 0)
  la = np.maximum(a[:, 1:2] - a[:, 0:1], 0)
  lb = np.maximum(b[None, :, 1] - b[None, :, 0], 0)
  union = la + lb - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _to_index(seconds: np.ndarray, rate: float) -> np.ndarray:
  """W-TALC's ``int(round(t * factor))`` (round half to even, as Python 3)."""
  return np.rint(np.asarray(seconds, np.float64) * rate).astype(np.int64)


# ------------------------------------------------------------------ detection


def detection_map(ground_truth: dict, predictions: dict, tiou_thresholds=THUMOS14_TIOU,
                  subset: str | None = None, *, protocol: str,
                  class_names: Sequence[str] | None = None,
                  feature_rate: float = I3D_FEATURE_RATE,
                  ambiguous: Mapping | None = None, gt_source: str = "ground truth",
                  pred_source: str = "predictions",
                  ambiguous_source: str = "ambiguous") -> pd.DataFrame:
  """Detection AP per class and their mean, at each tIoU threshold.

  Args:
    ground_truth: ``{"database": {vid: {"subset", "annotations": [{"segment":
      [s, e], "label"}], ...}}}`` (ActivityNet format; bounds in seconds, numbers
      or numeric strings; other fields ignored).
    predictions: ``{"results": {vid: [{"label", "score", "segment": [s, e]}]}}``
      (other top-level keys ignored).
    tiou_thresholds: the thresholds, a sequence of floats in (0, 1] or a
      :func:`parse_tiou` spec string.
    subset: keep the ground-truth videos of this subset (``None``: all).
      Predictions are not filtered: under "activitynet" a prediction on a video
      without ground truth of its class is a false positive.
    protocol: ``"activitynet"`` (the official algorithm) or ``"wtalc"``.
    class_names: optional vocabulary: labels of ground truth and predictions
      must be in it, rows follow its order, predictions of a class without
      ground truth (in the subset) are ignored. ``None``: the classes are the
      ground-truth labels in order of first appearance and any other predicted
      label is an error (as the official code).
    feature_rate: "wtalc" only: segments per second used to round bounds to
      segment indices (25/16 for I3D on 25 fps video, 10/4 for UntrimmedNet).
    ambiguous: ambiguous intervals ``{vid: [[s, e], ...]}`` in seconds
      (THUMOS14's, W-TALC's ``Ambiguous_test.txt``). "wtalc": added to the
      ground-truth instances labeled "Ambiguous"; "activitynet": predictions
      overlapping one by more than 0 s are removed before matching (THUMOS14's
      rule; the official ActivityNet code has no such intervals). None: none.
    gt_source, pred_source, ambiguous_source: how error messages name the
      three inputs (e.g. their file names).

  Returns:
    DataFrame of AP in [0, 1]: one row per class (index: class name, in the
    order above) and a last row ``"mean"``; one column per threshold (float
    names rounded to 6 decimals, e.g. ``0.5``). ``attrs`` holds ``protocol``,
    ``subset``, ``num_videos``, ``num_instances`` and ``num_predictions``
    (those evaluated).

  Raises:
    ValueError (a ``DataError``): on malformed input, naming the video and the
      field: missing keys, non-numeric or non-finite bounds or score, end <
      start, a predicted label that is not a class, an empty subset, no class.
  """
  thresholds = _checked_arguments(protocol, tiou_thresholds, feature_rate)
  gt = detection_inputs.GroundTruth(ground_truth, subset, gt_source)
  video_code = {v: i for i, v in enumerate(gt.video_ids)}
  pr = detection_inputs.Predictions(predictions, video_code, pred_source)

  wtalc = protocol == "wtalc"
  is_amb = np.asarray([wtalc and l == AMBIGUOUS_LABEL for l in gt.label], bool)
  classes = _classes(gt, pr, is_amb, class_names, wtalc=wtalc, subset=subset,
                     gt_source=gt_source, pred_source=pred_source)
  gt_cls, pr_cls = _class_codes(classes, gt, pr, is_amb)
  index = None
  if wtalc:
    index = _wtalc_indices_and_drops(gt, gt_cls, pr, pr_cls, is_amb, ambiguous, video_code,
                                     feature_rate, ambiguous_source)
  elif ambiguous is not None:
    _drop_ambiguous_seconds(
        pr, pr_cls, detection_inputs.parse_ambiguous(ambiguous, video_code, ambiguous_source))

  ap = _class_aps(gt, gt_cls, pr, pr_cls, np.asarray(thresholds, np.float64), len(classes),
                  index)
  return _ap_frame(ap, classes, thresholds, protocol=protocol, subset=subset,
                   num_videos=len(gt.video_ids), gt_cls=gt_cls, pr_cls=pr_cls)


def _ap_frame(ap: np.ndarray, classes: list, thresholds: tuple[float, ...], *, protocol: str,
              subset: str | None, num_videos: int, gt_cls: np.ndarray,
              pr_cls: np.ndarray) -> pd.DataFrame:
  """The table :func:`detection_map` returns, from the AP ``(C, K)`` of each class."""
  values = np.concatenate([ap, ap.mean(axis=0, keepdims=True)], axis=0)
  df = pd.DataFrame(values, index=pd.Index(classes + [MEAN_ROW], name="class"),
                    columns=pd.Index([_label(t) for t in thresholds], name="tIoU"))
  df.attrs.update(protocol=protocol, subset=subset, num_videos=num_videos,
                  num_instances=int(np.sum(gt_cls >= 0)),
                  num_predictions=int(np.sum(pr_cls >= 0)))
  return df


def _checked_arguments(protocol: str, tiou_thresholds, feature_rate) -> tuple[float, ...]:
  """Checks ``protocol`` and (``"wtalc"``) ``feature_rate`` of :func:`detection_map`;
  returns its thresholds (a list or a :func:`parse_tiou` spec), checked."""
  if protocol not in PROTOCOLS:
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
  if isinstance(tiou_thresholds, str):
    thresholds = parse_tiou(tiou_thresholds)
  else:
    thresholds = _check_thresholds(np.ravel(np.asarray(tiou_thresholds, dtype=object)).tolist())
  if protocol == "wtalc":
    if isinstance(feature_rate, bool) or not isinstance(feature_rate, numbers.Real) or not (
        math.isfinite(feature_rate) and feature_rate > 0):
      raise ValueError(f"feature_rate must be a positive number, got {feature_rate!r}")
  return thresholds


def _class_codes(classes: list, gt, pr, is_amb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Integer class codes ``(gt_cls (G,), pr_cls (P,)) int64`` of the ground-truth
  instances and the predictions; -1: not evaluated (Ambiguous, or a class without GT)."""
  class_code = {c: i for i, c in enumerate(classes)}
  gt_cls = np.asarray([-1 if a else class_code[l] for l, a in zip(gt.label, is_amb)], np.int64)
  pr_cls = np.asarray([class_code.get(l, -1) for l in pr.label], np.int64)
  return gt_cls, pr_cls


def _wtalc_indices_and_drops(gt, gt_cls, pr, pr_cls, is_amb, ambiguous, video_code,
                             feature_rate, ambiguous_source) -> tuple[np.ndarray, np.ndarray]:
  """W-TALC: the segment-index bounds ``(gt_idx (G, 2), pr_idx (P, 2)) int64``;
  sets ``pr_cls`` to -1 for the predictions the protocol drops (on videos without
  annotations, or overlapping an "Ambiguous" instance or an ``ambiguous`` interval)."""
  rate = float(feature_rate)
  gt_idx = _to_index(gt.seg, rate)
  pr_idx = _to_index(pr.seg, rate)
  amb = [(int(c), s, e) for c, (s, e) in zip(gt.vid[is_amb], gt.seg[is_amb])]
  amb += detection_inputs.parse_ambiguous(ambiguous, video_code, ambiguous_source)
  _wtalc_drop_predictions(gt, gt_cls, pr, pr_cls, pr_idx, amb, rate)
  return gt_idx, pr_idx


def _class_aps(gt, gt_cls, pr, pr_cls, thr: np.ndarray, num_classes: int,
               index: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
  """AP ``(C, K) float64`` of each class at each threshold ``thr (K,)``: the W-TALC
  protocol on the segment indices ``index = (gt_idx, pr_idx)``, else ActivityNet's."""
  ap = np.zeros((num_classes, thr.size))
  gt_by_cls, pr_by_cls = _group(gt_cls), _group(pr_cls)
  empty = np.zeros((0,), np.int64)
  for ci in range(num_classes):
    g, q = gt_by_cls[ci], pr_by_cls.get(ci, empty)
    if index is not None:
      gt_idx, pr_idx = index
      ap[ci] = _wtalc_class_ap(gt.vid[g], gt_idx[g], pr.vid[q], pr_idx[q], pr.score[q], thr)
    else:
      ap[ci] = _activitynet_class_ap(gt.vid[g], gt.seg[g], pr.vid[q], pr.seg[q],
                                     pr.score[q], thr)
  return ap


def _classes(gt, pr, is_amb, class_names, *, wtalc, subset, gt_source, pred_source):
  """The evaluated classes, checking every label of ``gt`` and ``pr`` against them."""
  # Classes: first appearance in the (filtered) ground truth, as the official.
  present = list(dict.fromkeys(l for l, a in zip(gt.label, is_amb) if not a))
  if class_names is not None:
    vocab = list(class_names)
    vocab_set = set(vocab)
    for l, code in zip(gt.label, gt.vid):
      if l not in vocab_set and not (wtalc and l == AMBIGUOUS_LABEL):
        raise DataError(f"{gt_source}: video {gt.video_ids[code]!r}: field 'label': "
                        f"{l!r} is not in class_names")
    present_set = set(present)
    classes = [c for c in vocab if c in present_set]
  else:
    vocab_set = set(present)
    classes = present
  if not classes:
    raise DataError(f"{gt_source}: no annotated instance"
                    + (f" in subset {subset!r}" if subset is not None else ""))
  for l in pr.first_video:
    if l not in vocab_set and not (wtalc and l == AMBIGUOUS_LABEL):
      raise DataError(f"{pred_source}: video {pr.first_video[l]!r}: field 'label': unknown "
                      f"label {l!r} (not a ground-truth class"
                      + (" nor in class_names)" if class_names is not None else ")"))
  return classes


def _wtalc_drop_predictions(gt, gt_cls, pr, pr_cls, pr_idx, amb, rate) -> None:
  """W-TALC: sets ``pr_cls`` to -1 (not evaluated) for predictions on videos
  without temporal annotations and those overlapping an ambiguous interval."""
  annotated = np.zeros(len(gt.video_ids) + 1, bool)  # last entry: code -1
  annotated[gt.vid[gt_cls >= 0]] = True
  pr_cls[~annotated[pr.vid]] = -1
  if not amb or not np.any(pr_cls >= 0):
    return
  amb_vid = np.asarray([a[0] for a in amb], np.int64)
  amb_idx = _to_index(np.asarray([a[1:] for a in amb], np.float64), rate)
  amb_groups = _group(amb_vid)
  for v, rows in _group(np.where(pr_cls >= 0, pr.vid, -1)).items():
    if v < 0 or v not in amb_groups:
      continue
    a = amb_idx[amb_groups[v]]
    inter = (np.minimum(pr_idx[rows, 1:2], a[None, :, 1])
             - np.maximum(pr_idx[rows, 0:1], a[None, :, 0]))
    pr_cls[rows[np.any(inter > 0, axis=1)]] = -1


def _drop_ambiguous_seconds(pr, pr_cls, amb) -> None:
  """ActivityNet protocol with ambiguous intervals (THUMOS14's rule): sets
  ``pr_cls`` to -1 (not evaluated) for every prediction whose interval
  overlaps an ambiguous interval of its video by more than 0 seconds."""
  if not amb or not np.any(pr_cls >= 0):
    return
  amb_vid = np.asarray([a[0] for a in amb], np.int64)
  amb_seg = np.asarray([a[1:] for a in amb], np.float64)
  amb_groups = _group(amb_vid)
  for v, rows in _group(np.where(pr_cls >= 0, pr.vid, -1)).items():
    if v < 0 or v not in amb_groups:
      continue
    a = amb_seg[amb_groups[v]]
    inter = (np.minimum(pr.seg[rows, 1:2], a[None, :, 1])
             - np.maximum(pr.seg[rows, 0:1], a[None, :, 0]))
    pr_cls[rows[np.any(inter > 0, axis=1)]] = -1
