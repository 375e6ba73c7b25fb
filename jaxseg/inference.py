"""Inference (paper 4.7): CAS -> video scores -> proposals -> NMS -> results.

The pipeline for one batch of padded videos:

1. ``C_a = (C_cls + C_loc) / 2`` (paper 4.7), zero on padded steps.
2. Video class scores ``s_a`` by the top-k mean of ``C_a`` (eq. 2) with
   ``k_i = max(1, floor(T_i / r))`` and a *fixed* ratio ``r``
   (``config.loss.topk_ratio``): the number of labeled segments ``Q`` that sets
   ``r = 2 Q`` during training is unknown at test time. ``p_a`` is the softmax
   of ``s_a`` over classes (eq. 3). Jitted: :func:`video_scores`.
3. On the host, per video (:func:`jaxseg.proposals.generate_proposals`): keep the classes whose
   ``s_a`` exceeds ``config.inference.class_threshold`` (0 in the paper), always
   the top-1; threshold the min-max normalised CAS of each kept class (``C_a``
   in the paper, ``config.inference.proposal_cas``) at every value of
   ``config.inference.cas_thresholds`` (as BaSNet/LACP do); every run of
   consecutive segments above a threshold is a proposal, scored by an
   outer-inner contrast (AutoLoc/BaSNet) plus a weighted class score;
   class-wise greedy NMS (:func:`jaxseg.proposals.temporal_nms`) removes
   duplicates; with ``config.inference.extent = "localization"`` each kept
   proposal may grow to a container that fits ``C_loc`` better.
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
from jaxseg.config import SCORE_SOURCES
from jaxseg.proposals import generate_proposals
from jaxseg.rules import InferenceRules
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


@functools.partial(jax.jit, static_argnames=("score_source", "contrast_loc_weight"))
def video_scores(cas_cls: jax.Array, cas_loc: jax.Array, mask: jax.Array,
                 k: jax.Array, *, score_source: str,
                 contrast_loc_weight: float) -> dict[str, jax.Array]:
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
      no class evidence; see docs/decisions.md#section-47-video-level-scores).
    contrast_loc_weight: ``w`` of the CAS the proposals' outer-inner contrast
      is taken on, ``(1 - w) C_cls + w C_loc`` (0.5: ``C_a``).

  Returns:
    ``{"cas_a": (B, T, N) float32`` ``C_a = (C_cls + C_loc) / 2``, zero on
    padding; ``"cas_contrast": (B, T, N) float32`` ``(1 - w) C_cls + w C_loc``,
    zero on padding; ``"cas_cls"``, ``"cas_loc": (B, T, N) float32``
    ``C_cls`` and ``C_loc``, zero on padding; ``"s_a": (B, N) float32``
    top-k mean of ``C_a`` (eq. 2), 0 for a row without real segments;
    ``"p_a": (B, N) float32`` softmax of ``s_a`` over classes (eq. 3),
    uniform for such a row``}``.
  """
  w = float(contrast_loc_weight)
  if not 0.0 <= w <= 1.0:
    raise ValueError(f"contrast_loc_weight: expected a value in [0, 1], "
                     f"got {contrast_loc_weight!r}")
  mask = mask.astype(bool)
  # The masked top-k mean of eq. 2 is shared with the classification loss.
  cas_a = jnp.where(mask[..., None], (cas_cls + cas_loc) / 2, 0.0)
  cas_contrast = cas_a if w == 0.5 else jnp.where(
      mask[..., None], (1.0 - w) * cas_cls + w * cas_loc, 0.0)
  if score_source == "average":
    s_a = losses.topk_mean(cas_a, mask, k)
  elif score_source == "classification":
    s_a = losses.topk_mean(jnp.where(mask[..., None], cas_cls, 0.0), mask, k)
  else:
    raise ValueError(f"score_source: expected one of {SCORE_SOURCES}, got {score_source!r}")
  p_a = jax.nn.softmax(s_a, axis=-1)
  return {"cas_a": cas_a, "cas_contrast": cas_contrast,
          "cas_cls": jnp.where(mask[..., None], cas_cls, 0.0),
          "cas_loc": jnp.where(mask[..., None], cas_loc, 0.0), "s_a": s_a, "p_a": p_a}


# -------------------------------------------------------------------- predict


def predict(apply_fn: Callable[..., Mapping[str, Any]], variables: Any,
            batches: Iterable[Mapping[str, Any]], *, videos: Any,
            class_names: Sequence[str], rules: InferenceRules, topk_ratio: float,
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
    rules: the :class:`jaxseg.rules.InferenceRules` to detect with.
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
  want_cas = _wanted_cas(return_cas)

  results, s_out, p_out, cas_out = {}, {}, {}, {}
  for b, batch in enumerate(batches):
    ids, mask, lengths = _batch_rows(batch, b)
    num_t = mask.shape[1]
    out = apply_fn(variables, batch["features"], batch["mask"])
    _check_model_output(out, len(class_names))
    k = inference_topk(np.minimum(lengths, num_t), topk_ratio)
    scores = jax.device_get(video_scores(
        out["cas_cls"], out["cas_loc"], mask, k,
        score_source=rules.score_source, contrast_loc_weight=rules.contrast_loc_weight))
    if want_cas is None or want_cas:
      raw = jax.device_get({"cas_cls": out["cas_cls"], "cas_loc": out["cas_loc"]})
    for i, vid in enumerate(ids):
      video = _batch_video(vid, b, videos, seen=results)
      n = int(min(lengths[i], num_t))
      results[vid] = _video_detections(scores, i, n, video=video, vid=vid, rules=rules,
                                       class_names=class_names)
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


def _wanted_cas(return_cas: bool | Collection[str]) -> frozenset | None:
  """The videos whose CAS :func:`predict` returns: None for all, else their ids."""
  if return_cas is True:
    return None  # all
  if not return_cas:
    return frozenset()
  return frozenset(return_cas)


def _batch_rows(batch: Mapping[str, Any], b: int) -> tuple[list, np.ndarray, np.ndarray]:
  """``(video_ids, mask (B, T) bool, lengths (B,) int)`` of eval batch ``b``, checked.

  ``lengths`` is ``batch["lengths"]`` when present, else the mask's row sums.
  """
  ids = list(batch["video_ids"])
  mask = np.asarray(batch["mask"]).astype(bool)
  if mask.ndim != 2:
    raise ValueError(f"predict: batch {b}: mask must be (B, T), got {mask.shape}")
  num_b = mask.shape[0]
  if len(ids) > num_b:
    raise ValueError(f"predict: batch {b} has {len(ids)} video ids for {num_b} rows")
  if "lengths" in batch:
    lengths = np.asarray(batch["lengths"]).astype(np.int64).reshape(-1)
  else:
    lengths = mask.sum(axis=1)
  if lengths.shape[0] != num_b:
    raise ValueError(f"predict: batch {b}: lengths has {lengths.shape[0]} rows, mask {num_b}")
  return ids, mask, lengths


def _check_model_output(out: Mapping[str, Any], num_classes: int) -> None:
  """The model output has ``cas_cls`` and ``cas_loc`` of ``num_classes`` classes."""
  for key in ("cas_cls", "cas_loc"):
    if key not in out:
      raise ValueError(f"predict: the model output has no {key!r} (keys: {sorted(out)})")
  if out["cas_cls"].shape[-1] != num_classes:
    raise ValueError(f"predict: the model predicts {out['cas_cls'].shape[-1]} classes "
                     f"but {num_classes} class names were given")


def _batch_video(vid: str, b: int, videos: Mapping[str, Any], *, seen: Collection[str]):
  """The video ``vid`` of batch ``b``; a repeat (in ``seen``) or an unknown id fails."""
  if vid in seen:
    raise ValueError(f"predict: video {vid!r} appears twice in the eval batches")
  if vid not in videos:
    raise DataError(f"predict: batch {b}: video {vid!r} (field video_ids) "
                    f"is not in the dataset")
  return videos[vid]


def _video_detections(scores: Mapping[str, np.ndarray], i: int, n: int, *, video: Any,
                      vid: str, rules: InferenceRules, class_names: list[str]) -> list[dict]:
  """Detections of row ``i`` of a batch's :func:`video_scores` (its first ``n``
  segments), labeled with the class names (ActivityNet result format)."""
  dets = generate_proposals(
      scores["cas_a"][i, :n], scores["s_a"][i], scores["p_a"][i],
      cas_cls=scores["cas_cls"][i, :n], cas_contrast=scores["cas_contrast"][i, :n],
      cas_extent=scores["cas_loc"][i, :n],
      feature_rate=float(video.feature_rate), duration=float(video.duration),
      rules=rules, video_id=vid)
  return [{"label": class_names[d["label"]], "score": d["score"], "segment": d["segment"]}
          for d in dets]


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
