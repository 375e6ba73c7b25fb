"""Inference (paper 4.7): CAS -> video scores -> proposals -> NMS -> results.

The pipeline for one batch of padded videos:

1. ``C_a = (C_cls + C_loc) / 2`` (paper 4.7), zero on padded steps.
2. Video class scores ``s_a`` by the top-k mean of ``C_a`` (eq. 2) with
   ``k_i = max(1, floor(T_i / r))`` and a *fixed* ratio ``r``
   (``config.loss.topk_ratio``): the number of labeled segments ``Q`` that sets
   ``r = 2 Q`` during training is unknown at test time. ``p_a`` is the softmax
   of ``s_a`` over classes (eq. 3). Jitted: :func:`video_scores`.
3. On the host, per video (:func:`generate_proposals`): keep the classes whose
   ``s_a`` exceeds ``config.inference.class_threshold`` (0 in the paper), always
   the top-1; threshold the min-max normalised ``C_a`` of each kept class at
   every value of ``config.inference.cas_thresholds`` (as BaSNet/LACP do); every
   run of consecutive segments above a threshold is a proposal, scored by the
   outer-inner contrast of ``C_a`` (AutoLoc/BaSNet) plus a weighted class score;
   class-wise greedy NMS (:func:`temporal_nms`) removes duplicates.
4. :func:`predict` runs a model over eval batches and returns detections in the
   ActivityNet result format; :func:`write_detections` writes them to JSON.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import losses
from jaxseg.config import CLASS_SCORES, CONTRAST_ON, SCORE_SOURCES, require
from jaxseg.data import io
from jaxseg.data.video import DataError

# ActivityNet result-file header.
RESULTS_VERSION = "VERSION 1.3"
DEFAULT_EXTERNAL_DATA = {
    "used": True,
    "details": "Pre-extracted video features (e.g. I3D pretrained on Kinetics).",
}


# --------------------------------------------------------------------- scores


def inference_topk(lengths: np.ndarray, ratio: float) -> np.ndarray:
  """``k`` of eq. 2 at test time: ``max(1, floor(T_i / r))``, at most ``T_i``.

  Training sets ``r = 2 Q`` from the number of labeled segments ``Q`` (paper
  5.1); at test time no segment is labeled, so a fixed ``r``
  (``config.loss.topk_ratio``) is used for every video. Computed by
  :func:`jaxseg.losses.topk_k` in ``"fixed"`` mode.

  Args:
    lengths: ``(B,) int`` real segments per video (0 for a padded row).
    ratio: ``r >= 1``.

  Returns:
    ``(B,) int32`` ``k`` per video (1 for an empty row).

  Raises:
    ValueError: if ``ratio < 1`` or not finite, or a length is negative.
  """
  ratio = float(ratio)
  if not math.isfinite(ratio) or ratio < 1.0:
    raise ValueError(f"inference: top-k ratio r must be a finite number >= 1, got {ratio}")
  lengths = np.asarray(lengths)
  if lengths.ndim != 1:
    raise ValueError(f"inference: lengths must have shape (B,), got {lengths.shape}")
  if np.any(lengths < 0):
    raise ValueError(f"inference: lengths must be >= 0, got {lengths.tolist()}")
  k = np.asarray(losses.topk_k(lengths, np.zeros_like(lengths), mode="fixed", ratio=ratio))
  return np.minimum(k, np.maximum(lengths, 1)).astype(np.int32)


@functools.partial(jax.jit, static_argnames=("score_source",))
def video_scores(cas_cls: jax.Array, cas_loc: jax.Array, mask: jax.Array,
                 k: jax.Array, *, score_source: str) -> dict[str, jax.Array]:
  """Final CAS and video-level scores of a padded batch (paper 4.7, eq. 2-3).

  Args:
    cas_cls: ``(B, T, N) float32`` classification CAS ``C_cls``.
    cas_loc: ``(B, T, N) float32`` localization CAS ``C_loc``.
    mask: ``(B, T) bool``, True on real segments.
    k: ``(B,) int32`` top-k size per video (see :func:`inference_topk`);
      clipped to ``[1, T_i]``.
    score_source: the CAS the video-level scores come from: ``"average"``,
      ``C_a`` as in the paper's section 4.7, or ``"classification"``, ``C_cls``
      (the localization head is trained only by losses that are invariant to a
      per-class offset of ``C_loc``, eq. 5-6 and 13, so its class offsets carry
      no class evidence; see docs/paper-notes.md).

  Returns:
    ``{"cas_a": (B, T, N) float32`` ``C_a = (C_cls + C_loc) / 2``, zero on
    padding; ``"s_a": (B, N) float32`` top-k mean of ``C_a`` (eq. 2), 0 for a
    row without real segments; ``"p_a": (B, N) float32`` softmax of ``s_a`` over
    classes (eq. 3), uniform for such a row``}``.
  """
  mask = mask.astype(bool)
  # The masked top-k mean of eq. 2 is shared with the classification loss.
  cas_a = jnp.where(mask[..., None], (cas_cls + cas_loc) / 2, 0.0)
  if score_source == "average":
    s_a = losses.topk_mean(cas_a, mask, k)
  elif score_source == "classification":
    s_a = losses.topk_mean(jnp.where(mask[..., None], cas_cls, 0.0), mask, k)
  else:
    raise ValueError(f"score_source: expected one of {SCORE_SOURCES}, got {score_source!r}")
  p_a = jax.nn.softmax(s_a, axis=-1)
  return {"cas_a": cas_a, "s_a": s_a, "p_a": p_a}


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
                outer_scale: float) -> np.ndarray:
  """Outer-inner contrast of proposals ``[t0, t1)`` on one class's ``C_a``.

  ``inner = mean(C_a[t0:t1])``; the outer region is ``w = ceil(outer_scale *
  (t1 - t0))`` segments on each side, clipped to the video;
  ``outer = mean(C_a[outer])`` (0 when the outer region is empty).

  Args:
    cas: ``(T,) float`` raw ``C_a`` of one class.
    t0, t1: ``(P,) int`` proposal bounds, ``0 <= t0 < t1 <= T``.
    outer_scale: outer width as a fraction of the proposal length.

  Returns:
    ``(P,) float64`` ``inner - outer``.
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
  return inner - outer


def _field(config: Any, name: str) -> Any:
  """``config.inference.<name>``; a missing field raises ``ConfigError`` naming it."""
  return require(config, name, where="config.inference")


def generate_proposals(cas_a: np.ndarray, s_a: np.ndarray, p_a: np.ndarray, *,
                       feature_rate: float, duration: float, config: Any,
                       video_id: str = "?") -> list[dict]:
  """Action proposals of one video (paper 4.7), host-side NumPy.

  1. Classes: :func:`select_classes` with ``config.class_threshold`` and
     ``config.class_top_ratio`` (the top-1 class kept if ``config.keep_top_class``).
  2. For each kept class ``c``, ``C_a[:, c]`` is min-max normalised over time
     (a constant sequence normalises to 1, i.e. the whole video) and
     thresholded (``>``) at each value of ``config.cas_thresholds``; each run of
     consecutive segments ``[t0, t1)`` above a threshold is a proposal
     ``[min(t0 / rate, duration), min(t1 / rate, duration)]`` seconds
     (proposals that clip to zero length are dropped).
  3. Score: ``mean(C_a[t0:t1, c]) - mean(C_a[outer, c]) + w * s_a[c]`` with the
     outer region ``ceil(config.outer_scale * (t1 - t0))`` segments on each side,
     clipped to the video (empty: outer mean 0), and
     ``w = config.class_score_weight`` (AutoLoc/BaSNet outer-inner contrast).
  4. Class-wise :func:`temporal_nms` at ``config.nms_iou`` on the segments in
     seconds, then the ``config.max_proposals_per_video`` best overall.

  Args:
    cas_a: ``(T, N) float`` final CAS of ONE video, cut to its ``T`` segments.
    s_a: ``(N,) float`` class scores (eq. 2).
    p_a: ``(N,) float`` class probabilities (eq. 3).
    feature_rate: segments per second.
    duration: video duration in seconds.
    config: ``config.inference`` (a ConfigDict or a mapping).
    video_id: used in error messages only.

  Returns:
    Detections sorted by decreasing score, each
    ``{"label": int class index, "score": float, "segment": [start, end]}``
    (plain Python floats, seconds).

  Raises:
    ValueError: on bad shapes, a non-positive rate, a negative or non-finite
      duration, or non-finite CAS values, naming the video.
  """
  cas_a = np.asarray(cas_a)
  s_a = np.asarray(s_a, np.float64).reshape(-1)
  p_a = np.asarray(p_a, np.float64).reshape(-1)
  where = f"inference: video {video_id!r}"
  if cas_a.ndim != 2:
    raise ValueError(f"{where}: cas_a must have shape (T, N), got {cas_a.shape}")
  num_t, num_classes = cas_a.shape
  if s_a.shape[0] != num_classes or p_a.shape[0] != num_classes:
    raise ValueError(f"{where}: cas_a has {num_classes} classes but s_a/p_a have "
                     f"{s_a.shape[0]}/{p_a.shape[0]}")
  if not (math.isfinite(feature_rate) and feature_rate > 0):
    raise ValueError(f"{where}: field feature_rate must be > 0, got {feature_rate}")
  if not (math.isfinite(duration) and duration >= 0):
    raise ValueError(f"{where}: field duration must be >= 0, got {duration}")
  if not (np.all(np.isfinite(cas_a)) and np.all(np.isfinite(s_a))):
    raise ValueError(f"{where}: the CAS or class scores are not finite")
  if num_t == 0 or num_classes == 0:
    return []

  thresholds = np.asarray(tuple(_field(config, "cas_thresholds")), np.float64).reshape(-1)
  if thresholds.size == 0:
    raise ValueError("inference config: cas_thresholds is empty")
  outer_scale = float(_field(config, "outer_scale"))
  weight = float(_field(config, "class_score_weight"))
  nms_iou = float(_field(config, "nms_iou"))
  max_props = int(_field(config, "max_proposals_per_video"))
  contrast_on = str(_field(config, "contrast_on"))
  if contrast_on not in CONTRAST_ON:
    raise ValueError(f"inference config: contrast_on must be one of {CONTRAST_ON}, "
                     f"got {contrast_on!r}")
  class_score = str(_field(config, "class_score"))
  if class_score not in CLASS_SCORES:
    raise ValueError(f"inference config: class_score must be one of {CLASS_SCORES}, "
                     f"got {class_score!r}")
  video_score = s_a if class_score == "s_a" else p_a

  classes = select_classes(s_a, p_a, class_threshold=float(_field(config, "class_threshold")),
                           class_top_ratio=float(_field(config, "class_top_ratio")),
                           keep_top_class=bool(_field(config, "keep_top_class")))
  if classes.size == 0:
    return []
  cas = cas_a[:, classes].astype(np.float64).T  # (C, T)
  lo = cas.min(axis=1, keepdims=True)
  span = cas.max(axis=1, keepdims=True) - lo
  norm = np.divide(cas - lo, span, out=np.ones_like(cas), where=span > 0)
  above = norm[:, None, :] > thresholds[None, :, None]  # (C, L, T)
  row, t0, t1 = _runs(above.reshape(-1, num_t))
  cls_pos = row // thresholds.size  # position in `classes`

  detections = []
  for pos, c in enumerate(classes):
    sel = cls_pos == pos
    if not np.any(sel):
      continue
    a, b = t0[sel], t1[sel]
    contrast = cas[pos] if contrast_on == "raw" else norm[pos]
    scores = _oic_scores(contrast, a, b, outer_scale) + weight * video_score[c]
    start = np.minimum(a / feature_rate, duration)
    end = np.minimum(b / feature_rate, duration)
    valid = end > start
    segs = np.stack([start, end], axis=1)[valid]
    scores = scores[valid]
    for i in temporal_nms(segs, scores, nms_iou):
      detections.append((float(scores[i]), int(c), float(segs[i, 0]), float(segs[i, 1])))
  detections.sort(key=lambda d: -d[0])  # stable: ties keep class order
  return [{"label": c, "score": s, "segment": [t_s, t_e]}
          for s, c, t_s, t_e in detections[:max_props]]


# -------------------------------------------------------------------- predict


def predict(apply_fn: Callable[..., Mapping[str, Any]], variables: Any,
            batches: Iterable[Mapping[str, Any]], *, videos: Any,
            class_names: Sequence[str], config_inference: Any, topk_ratio: float,
            return_cas: bool | Collection[str] = False) -> dict:
  """Runs a model over eval batches; detections in ActivityNet result format.

  Args:
    apply_fn: ``apply_fn(variables, features, mask)`` -> the model output
      ``{"features", "cas_cls": (B, T, N), "cas_loc": (B, T, N)}`` in
      deterministic mode (typically a jitted ``SegmentModel.apply`` wrapper).
    variables: the model variables, passed through to ``apply_fn``.
    batches: eval batches (the batch pytree of docs/design.md) with
      ``"features" (B, T, D)``, ``"mask" (B, T) bool`` and the host-side
      ``"video_ids"`` list; row ``i`` is ``video_ids[i]``; rows past
      ``len(video_ids)`` are padding and ignored. ``"lengths"`` is used when
      present, else the mask's row sums.
    videos: ``{video_id: Video}`` (or a :class:`~jaxseg.data.video.Dataset`);
      gives each video's ``feature_rate`` and ``duration``.
    class_names: the ``N`` class names; detections carry the name as label.
    config_inference: ``config.inference``.
    topk_ratio: fixed ``r`` for the top-k of eq. 2 (``config.loss.topk_ratio``).
    return_cas: True to also return every video's CAS, or a collection of
      video ids to return only theirs (for plots).

  Returns:
    ``{"results": {vid: [{"label": str, "score": float, "segment": [s, e]}]},
    "s_a": {vid: (N,) float32}, "p_a": {vid: (N,) float32}}``, plus
    ``"cas": {vid: {"cas_cls", "cas_loc", "cas_a": (T_i, N) float32}}`` when
    asked. Videos in batch order.

  Raises:
    DataError: a video id is not in ``videos``.
    ValueError: a malformed batch or model output, a repeated video id, a
      class-count mismatch.
  """
  if hasattr(videos, "videos") and not isinstance(videos, Mapping):
    videos = {v.video_id: v for v in videos.videos}
  class_names = list(class_names)
  if return_cas is True:
    want_cas = None  # all
  elif not return_cas:
    want_cas = frozenset()
  else:
    want_cas = frozenset(return_cas)

  results, s_out, p_out, cas_out = {}, {}, {}, {}
  for b, batch in enumerate(batches):
    ids = list(batch["video_ids"])
    mask = np.asarray(batch["mask"]).astype(bool)
    if mask.ndim != 2:
      raise ValueError(f"predict: batch {b}: mask must be (B, T), got {mask.shape}")
    num_b, num_t = mask.shape
    if len(ids) > num_b:
      raise ValueError(f"predict: batch {b} has {len(ids)} video ids for {num_b} rows")
    if "lengths" in batch:
      lengths = np.asarray(batch["lengths"]).astype(np.int64).reshape(-1)
    else:
      lengths = mask.sum(axis=1)
    if lengths.shape[0] != num_b:
      raise ValueError(f"predict: batch {b}: lengths has {lengths.shape[0]} rows, mask {num_b}")
    out = apply_fn(variables, batch["features"], batch["mask"])
    for key in ("cas_cls", "cas_loc"):
      if key not in out:
        raise ValueError(f"predict: the model output has no {key!r} (keys: {sorted(out)})")
    if out["cas_cls"].shape[-1] != len(class_names):
      raise ValueError(f"predict: the model predicts {out['cas_cls'].shape[-1]} classes "
                       f"but {len(class_names)} class names were given")
    k = inference_topk(np.minimum(lengths, num_t), topk_ratio)
    scores = jax.device_get(video_scores(
        out["cas_cls"], out["cas_loc"], mask, k,
        score_source=str(_field(config_inference, "score_source"))))
    if want_cas is None or want_cas:
      raw = jax.device_get({"cas_cls": out["cas_cls"], "cas_loc": out["cas_loc"]})
    for i, vid in enumerate(ids):
      if vid in results:
        raise ValueError(f"predict: video {vid!r} appears twice in the eval batches")
      if vid not in videos:
        raise DataError(f"predict: batch {b}: video {vid!r} (field video_ids) "
                        f"is not in the dataset")
      video = videos[vid]
      n = int(min(lengths[i], num_t))
      dets = generate_proposals(
          scores["cas_a"][i, :n], scores["s_a"][i], scores["p_a"][i],
          feature_rate=float(video.feature_rate), duration=float(video.duration),
          config=config_inference, video_id=vid)
      results[vid] = [{"label": class_names[d["label"]], "score": d["score"],
                       "segment": d["segment"]} for d in dets]
      s_out[vid] = np.asarray(scores["s_a"][i], np.float32)
      p_out[vid] = np.asarray(scores["p_a"][i], np.float32)
      if want_cas is None or vid in want_cas:
        cas_out[vid] = {"cas_cls": np.asarray(raw["cas_cls"][i, :n], np.float32),
                        "cas_loc": np.asarray(raw["cas_loc"][i, :n], np.float32),
                        "cas_a": np.asarray(scores["cas_a"][i, :n], np.float32)}
  output = {"results": results, "s_a": s_out, "p_a": p_out}
  if want_cas is None or want_cas:
    output["cas"] = cas_out
  return output


# ---------------------------------------------------------------------- write


def write_detections(path: str | os.PathLike, results: Mapping[str, Any], *,
                     version: str = RESULTS_VERSION,
                     external_data: Mapping[str, Any] | None = None,
                     provenance: Mapping[str, Any] | None = None) -> None:
  """Writes detections as an ActivityNet result JSON, atomically.

  The file is ``{"version", "results": {vid: [{"label", "score", "segment"}]},
  "external_data"}``. It is written to a temporary file in the same folder and
  moved into place with ``os.replace``, so readers never see a partial file.

  Args:
    path: the output file; missing parent folders are created.
    results: ``{vid: [detection]}`` or the output of :func:`predict`.
    version: the ``"version"`` field.
    provenance: written as a ``"provenance"`` field when given (what produced
      the detections; the official evaluation ignores extra fields).
    external_data: the ``"external_data"`` field (default: features
      pretrained on external data).

  Raises:
    ValueError: a score or segment bound is not finite, or a detection misses
      a field (naming the video).
  """
  if "results" in results and isinstance(results["results"], Mapping):
    results = results["results"]
  clean = {}
  for vid, dets in results.items():
    rows = []
    for d in dets:
      try:
        seg = [float(d["segment"][0]), float(d["segment"][1])]
        row = {"label": str(d["label"]), "score": float(d["score"]), "segment": seg}
      except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"write_detections: {path}: video {vid!r}: malformed detection "
                         f"{d!r} ({e})") from None
      if not all(math.isfinite(x) for x in (row["score"], *seg)):
        raise ValueError(f"write_detections: {path}: video {vid!r}: field score/segment "
                         f"is not finite in {row}")
      rows.append(row)
    clean[str(vid)] = rows
  payload = {"version": version, "results": clean,
             "external_data": dict(DEFAULT_EXTERNAL_DATA if external_data is None
                                   else external_data)}
  if provenance is not None:
    payload["provenance"] = dict(provenance)
  with io.atomic_open(path, "w", make_dirs=True) as f:
    json.dump(payload, f, allow_nan=False)
