"""The four losses of the paper (eq. 1-13) as pure functions over padded batches.

Every loss takes ``mask (B, T) bool`` (True on real segments), ignores padded
steps completely (their values, even NaN, never reach the result, and they get
exactly zero gradient), computes each video's loss as in the paper and returns
the mean over the videos of the batch that have at least one real segment (a
video with no real segment, e.g. batch padding, is left out of the mean; a batch
with none gives 0).

Shapes: ``B`` videos, ``T`` padded segments, ``E`` embedding dim (``D`` in the
paper), ``N`` classes. The choices where the paper is ambiguous are argued in
``docs/decisions.md``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from jaxseg.config import (CLASSIFICATION_NORMALIZATIONS, PROPAGATION_FEATURES,
                           PROPAGATION_METHODS, PROPAGATION_NORMALIZATIONS,
                           PROPAGATION_SIMILARITIES, SEGMENT_NORMALIZATIONS, SPHERE_CLASSES,
                           TOPK_COUNTS, TOPK_MODES)

Array = jax.Array


# ---------------------------------------------------------------- helpers
def _masked(x: Array, mask: Array) -> Array:
  """Zeroes ``x (B, T, ...)`` on padded steps with a ``where`` (NaN-safe)."""
  m = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
  return jnp.where(m, x, jnp.zeros((), x.dtype))


def _batch_mean(per_video: Array, mask: Array) -> Array:
  """Mean of ``per_video (B,)`` over the videos with at least one real step."""
  valid = jnp.any(mask, axis=1)
  total = jnp.sum(jnp.where(valid, per_video, 0.0))
  count = jnp.sum(valid.astype(per_video.dtype))
  return total / jnp.maximum(count, 1.0)


def _low_fill(dtype) -> Array:
  """A large finite negative number (a quarter of the dtype's minimum)."""
  return jnp.asarray(jnp.finfo(dtype).min / 4, dtype)


def _safe_norm(x: Array, axis: int = -1) -> tuple[Array, Array]:
  """``(||x||, ||x|| > 0)`` with a finite (zero) gradient at ``x = 0``."""
  sq = jnp.sum(x * x, axis=axis)
  pos = sq > 0
  norm = jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)
  return norm, pos


def _check_rank(name: str, x: Array, ndim: int) -> None:
  if jnp.ndim(x) != ndim:
    raise ValueError(f"{name}: expected {ndim} dimensions, got shape {jnp.shape(x)}")


# ------------------------------------------------------------- top-k (eq. 2)
def topk_k(lengths: Array, num_labeled: Array, *, mode: str, ratio: float) -> Array:
  """The per-video ``k`` of eq. 2: ``max(1, floor(l_i / r))``.

  Args:
    lengths: ``(B,) int`` real segments per video ``l_i``.
    num_labeled: ``(B,) int`` number of labeled segments ``Q_i``.
    mode: ``"labeled"``: ``r = 2 Q_i`` (paper 5.1), falling back to
      ``r = ratio`` for a video with ``Q_i = 0`` (video-level labels);
      ``"fixed"``: ``r = ratio`` (8 in W-TALC).
    ratio: the fixed ``r``.

  Returns:
    ``(B,) int32`` ``k``, at least 1 (and at most ``l_i`` when ``r >= 1``).
  """
  if not ratio > 0:
    raise ValueError(f"topk ratio: expected > 0, got {ratio!r}")
  lengths = jnp.asarray(lengths, jnp.int32)
  fixed = jnp.floor(lengths.astype(jnp.float32) / jnp.float32(ratio)).astype(jnp.int32)
  if mode == "fixed":
    k = fixed
  elif mode == "labeled":
    q = jnp.asarray(num_labeled, jnp.int32)
    labeled = lengths // jnp.maximum(2 * q, 1)  # exact integer floor(l / 2Q)
    k = jnp.where(q > 0, labeled, fixed)
  else:
    raise ValueError(f"topk mode: expected one of {TOPK_MODES}, got {mode!r}")
  return jnp.maximum(k, 1).astype(jnp.int32)


def labeled_count(segment_labels: Array, mask: Array, num_labeled: Array, *,
                  count: str) -> Array:
  """``Q`` of ``r = 2Q`` per video: ``(B,) int32``.

  Args:
    segment_labels: ``(B, T, N)`` ``u`` in {0, 1}.
    mask: ``(B, T) bool``.
    num_labeled: ``(B,) int`` labeled segments (``batch["num_labeled"]``).
    count: ``"segments"``: ``num_labeled`` as is (the paper's words);
      ``"instances"``: the number of runs of consecutive labeled segments of
      each class, summed over classes: one per labeled instance for
      one-segment, two-segment, point and full labels alike (two instances
      whose labels touch count once).
  """
  if count == "segments":
    return jnp.asarray(num_labeled, jnp.int32)
  if count != "instances":
    raise ValueError(f"topk count: expected one of {TOPK_COUNTS}, got {count!r}")
  u = jnp.where(mask[..., None], segment_labels, 0) > 0
  prev = jnp.pad(u, ((0, 0), (1, 0), (0, 0)))[:, :-1]
  return jnp.sum(u & ~prev, axis=(1, 2)).astype(jnp.int32)


def topk_mean(cas: Array, mask: Array, k: Array) -> Array:
  """Eq. 2: per class, the mean of the ``k`` largest CAS values of each video.

  Sorts along time with padded steps pushed to the bottom by a large finite
  negative fill, then averages the first ``k`` entries through an index mask
  (no Python loop; ``k`` may differ per video). ``k`` is clipped to
  ``[1, l_i]``. A video with no real step gets 0.

  Args:
    cas: ``(B, T, N) float`` class activation sequence.
    mask: ``(B, T) bool``.
    k: ``(B,) int``.

  Returns:
    ``(B, N) float`` class scores ``s``.
  """
  _check_rank("cas", cas, 3)
  lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
  k = jnp.clip(jnp.asarray(k, jnp.int32), 1, jnp.maximum(lengths, 1))
  filled = jnp.where(mask[..., None], cas, _low_fill(cas.dtype))
  top = -jnp.sort(-filled, axis=1)  # descending along T
  steps = jnp.arange(cas.shape[1])
  take = steps[None, :, None] < k[:, None, None]
  s = jnp.sum(jnp.where(take, top, 0.0), axis=1) / k[:, None].astype(cas.dtype)
  return jnp.where((lengths > 0)[:, None], s, 0.0)


# ------------------------------------------------- classification (eq. 2-4)
def classification_loss(cas: Array, labels: Array, mask: Array, k: Array, *,
                        normalization: str) -> Array:
  """Eq. 2-4: ``(1/N) sum_n -y_n log softmax_n(s)``, batch mean.

  Args:
    cas: ``(B, T, N) float`` ``C_cls``.
    labels: ``(B, N) float`` multi-hot ``y``.
    mask: ``(B, T) bool``.
    k: ``(B,) int`` see :func:`topk_k`.
    normalization: ``"classes"``: eq. 4 as printed, ``y`` used as is and the
      sum divided by ``N``; ``"labels"``: W-TALC's multiple-instance loss the
      paper builds on, ``sum_n -(y_n / sum y) log p_n`` (no ``1/N``), which
      keeps the term's scale independent of the number of classes (see
      docs/decisions.md#eq-4-the-label-vector-and-its-scale-against-eq-6).

  Returns:
    scalar float.
  """
  s = topk_mean(cas, mask, k)
  log_p = jax.nn.log_softmax(s, axis=-1)  # eq. 3
  y = labels.astype(cas.dtype)
  if normalization == "classes":
    per_video = -jnp.sum(y * log_p, axis=-1) / cas.shape[-1]  # eq. 4
  elif normalization == "labels":
    count = jnp.sum(y, axis=-1)
    denom = jnp.where(count > 0, count, 1.0)
    per_video = -jnp.sum(y * log_p, axis=-1) / denom
  else:
    raise ValueError(f"classification_loss: normalization must be one of "
                     f"{CLASSIFICATION_NORMALIZATIONS}, got {normalization!r}")
  return _batch_mean(per_video, mask)


# -------------------------------------------------- partial segment (eq. 5-6)
def _log_normalized_cas(cas: Array, mask: Array) -> Array:
  """``log a`` of eq. 5 on real steps, 0 on padded steps. ``(B, T, N)``."""
  valid = mask[..., None]
  peak = jnp.max(jnp.where(valid, cas, _low_fill(cas.dtype)), axis=1, keepdims=True)
  peak = jax.lax.stop_gradient(peak)
  shifted = jnp.where(valid, cas - peak, 0.0)
  total = jnp.sum(jnp.where(valid, jnp.exp(shifted), 0.0), axis=1, keepdims=True)
  # total >= 1 whenever the video has a real step (its peak gives exp(0) = 1).
  log_total = jnp.log(jnp.where(total > 0, total, 1.0))
  return jnp.where(valid, shifted - log_total, 0.0)


def normalized_cas(cas: Array, mask: Array) -> Array:
  """Eq. 5: ``a(t, n)``, softmax of ``cas`` over the real steps of each class.

  Args:
    cas: ``(B, T, N) float`` ``C_loc``.
    mask: ``(B, T) bool``.

  Returns:
    ``(B, T, N) float``, each class column sums to 1 over the real steps; 0 on
    padded steps.
  """
  _check_rank("cas", cas, 3)
  return jnp.where(mask[..., None], jnp.exp(_log_normalized_cas(cas, mask)), 0.0)


def labeled_run_lengths(segment_labels: Array, mask: Array) -> Array:
  """The length of the labeled run each labeled ``(t, n)`` belongs to.

  A run is a maximal stretch of consecutive labeled segments of one class:
  one per labeled instance for one-segment, two-segment (which mark the
  segments between the two), point and full labels (two instances whose
  labels touch form one run).

  Args:
    segment_labels: ``(B, T, N)`` ``u`` in {0, 1} (ignored on padded steps).
    mask: ``(B, T) bool``.

  Returns:
    ``(B, T, N) int32``: the run length where ``u = 1``, 0 elsewhere.
  """
  u = (jnp.where(mask[..., None], segment_labels, 0) > 0).astype(jnp.int32)
  count = jnp.cumsum(u, axis=1)  # labeled steps up to and including t
  prev = jnp.pad(u, ((0, 0), (1, 0), (0, 0)))[:, :-1]
  nxt = jnp.pad(u, ((0, 0), (0, 1), (0, 0)))[:, 1:]
  start = (u == 1) & (prev == 0)
  end = (u == 1) & (nxt == 0)
  # Labeled steps before the run's first step, carried forward from its start
  # (non-decreasing in t, so a running max), and up to its last step, carried
  # back from its end (a reversed running min).
  before = jax.lax.cummax(jnp.where(start, count - u, 0), axis=1)
  big = jnp.iinfo(jnp.int32).max
  upto = jax.lax.cummin(jnp.where(end, count, big), axis=1, reverse=True)
  return jnp.where(u == 1, upto - before, 0)


def partial_segment_loss(cas: Array, segment_labels: Array, mask: Array, *,
                         normalization: str) -> Array:
  """Eq. 6: ``sum_{(t,n): u(t,n)=1} -log a(t, n)`` per video, batch mean.

  Args:
    cas: ``(B, T, N) float`` ``C_loc``.
    segment_labels: ``(B, T, N)`` ``u`` in {0, 1} (ignored on padded steps).
    mask: ``(B, T) bool``.
    normalization: ``"none"``: the sum over labeled ``(t, n)`` as printed (it
      grows with the labeled segments per instance: two-segment and full labels
      weigh an instance up to its length times a one-segment label);
      ``"instances"``: each labeled instance (a run of consecutive labeled
      segments of a class, :func:`labeled_run_lengths`) contributes the mean of
      ``-log a`` over its segments, so the term counts instances, whatever the
      label mode (equal to ``"none"`` for one-segment and point labels).

  Returns:
    scalar float. A video with no labeled segment contributes 0.
  """
  _check_rank("cas", cas, 3)
  log_a = _log_normalized_cas(cas, mask)
  u = jnp.where(mask[..., None], segment_labels, 0).astype(cas.dtype)
  if normalization == "instances":
    runs = labeled_run_lengths(segment_labels, mask)
    u = jnp.where(runs > 0, u / jnp.maximum(runs, 1).astype(cas.dtype), 0.0)
  elif normalization != "none":
    raise ValueError(f"partial_segment_loss: normalization must be one of "
                     f"{SEGMENT_NORMALIZATIONS}, got {normalization!r}")
  per_video = -jnp.sum(u * log_a, axis=(1, 2))
  return _batch_mean(per_video, mask)


# --------------------------------------------------------- sphere (eq. 7-10)
def masked_median(x: Array, mask: Array) -> Array:
  """``numpy.median`` over the real steps, per video and class.

  For an even count, the mean of the two middle values. Sort + gather, no loop.

  Args:
    x: ``(B, T, N) float``.
    mask: ``(B, T) bool``.

  Returns:
    ``(B, N) float`` (0 for a video with no real step).
  """
  lengths = jnp.sum(mask, axis=1).astype(jnp.int32)  # (B,)
  high = jnp.asarray(jnp.finfo(x.dtype).max / 4, x.dtype)
  srt = jnp.sort(jnp.where(mask[..., None], x, high), axis=1)  # ascending
  lo = jnp.maximum((lengths - 1) // 2, 0)
  hi = jnp.maximum(lengths // 2, 0)
  hi = jnp.minimum(hi, jnp.maximum(lengths - 1, 0))
  pick = lambda i: jnp.take_along_axis(srt, i[:, None, None], axis=1)[:, 0]
  med = 0.5 * pick(lo) + 0.5 * pick(hi)
  return jnp.where((lengths > 0)[:, None], med, 0.0)


def attention(cas: Array, mask: Array) -> Array:
  """Eq. 7: ``A = a * [a >= median(a)]`` with ``a`` of eq. 5. ``(B, T, N)``."""
  a = normalized_cas(cas, mask)
  tau = jax.lax.stop_gradient(masked_median(a, mask))
  keep = (a >= tau[:, None, :]) & mask[..., None]
  return jnp.where(keep, a, 0.0)


def _chebyshev(c: Array, m: int) -> Array:
  """``cos(m theta)`` from ``c = cos(theta)`` (Chebyshev recurrence, static m)."""
  prev, cur = jnp.ones_like(c), c
  if m == 0:
    return prev
  for _ in range(m - 1):
    prev, cur = cur, 2.0 * c * cur - prev
  return cur


def sphere_psi(cos_theta: Array, margin: int) -> Array:
  """SphereFace's ``psi(theta) = (-1)^k cos(m theta) - 2k``, from ``cos(theta)``.

  ``theta`` in ``[k pi/m, (k+1) pi/m]``, ``k in [0, m-1]`` (the paper prints
  ``- 2``, a typo for ``- 2k``). ``k`` is found by comparing ``cos(theta)``
  with ``cos(j pi / m)`` (piecewise constant: no gradient), ``cos(m theta)``
  by the Chebyshev polynomial, so no ``arccos`` (infinite slope at +-1).

  Args:
    cos_theta: float array in ``[-1, 1]``.
    margin: static int ``m >= 1``.

  Returns:
    ``psi``, same shape, decreasing from 1 (theta = 0) to ``1 - 2m`` (pi).
  """
  c = jnp.clip(cos_theta, -1.0, 1.0)
  k = jnp.zeros(c.shape, jnp.int32)
  for j in range(1, margin):
    k = k + (c <= math.cos(j * math.pi / margin)).astype(jnp.int32)
  sign = jnp.where(k % 2 == 0, 1.0, -1.0).astype(c.dtype)
  return sign * _chebyshev(c, margin) - 2.0 * k.astype(c.dtype)


def sphere_loss(features: Array, cas: Array, labels: Array, mask: Array,
                weight: Array, *, margin: int, classes: str) -> Array:
  """Eq. 7-10: the A-Softmax loss of the attention-pooled class features.

  ``a`` is eq. 5 of ``cas`` (``C_loc``), ``tau_n`` its median over the real
  steps, ``A`` eq. 7, ``F^n = f^T A(:, n)`` eq. 8. For each class with
  ``y_n = 1`` one A-Softmax term (eq. 9 with the ``1/D`` sum read as a single
  term, see the notes) with target ``n``: logits ``||F^n|| cos(theta_j)``
  for ``j != n`` and ``||F^n|| psi(theta_n)``, ``theta_j`` the angle between
  ``F^n`` and row ``W_j`` (rows normalized, no bias, as A-Softmax). A
  video's loss is the sum over its present classes (eq. 10), batch mean.
  ``F^n = 0`` gives all logits 0 (loss ``log N``) with finite gradients.

  Args:
    features: ``(B, T, E) float`` ``f``.
    cas: ``(B, T, N) float`` ``C_loc``.
    labels: ``(B, N) float`` multi-hot ``y``.
    mask: ``(B, T) bool``.
    weight: ``(N, E) float`` ``W``.
    margin: static int ``m >= 1``.
    classes: ``"present"``: the classes with ``y_n = 1`` (jaxseg's reading);
      ``"all"``: every class, as eq. 10 prints it.

  Returns:
    scalar float.
  """
  if classes not in SPHERE_CLASSES:
    raise ValueError(f"sphere classes: expected one of {SPHERE_CLASSES}, got {classes!r}")
  _check_rank("features", features, 3)
  _check_rank("cas", cas, 3)
  margin = int(margin)  # validated by config_checks.validate (loss.margin)
  n = cas.shape[-1]
  if weight.shape != (n, features.shape[-1]):
    raise ValueError(f"sphere weight: expected shape {(n, features.shape[-1])}, "
                     f"got {weight.shape}")
  f = _masked(features, mask)
  att = attention(cas, mask)  # (B, T, N)
  big_f = jnp.einsum("bte,btn->bne", f, att)  # F^n, (B, N, E)
  w_norm, w_pos = _safe_norm(weight)
  w_hat = weight / jnp.where(w_pos, w_norm, 1.0)[:, None]  # (N, E)
  f_norm, f_pos = _safe_norm(big_f)  # (B, N)
  # logits[b, n, j] = ||F^n|| cos(theta_{j}) = W_hat_j . F^n
  logits = jnp.einsum("bne,je->bnj", big_f, w_hat)
  cos_target = jnp.einsum("bne,ne->bn", big_f, w_hat)
  cos_target = jnp.where(f_pos, cos_target / jnp.where(f_pos, f_norm, 1.0), 1.0)
  target = f_norm * sphere_psi(cos_target, margin)  # (B, N)
  eye = jnp.eye(n, dtype=bool)
  logits = jnp.where(eye[None], target[..., None], logits)
  per_class = jax.nn.logsumexp(logits, axis=-1) - target  # (B, N)
  if classes == "all":
    per_video = jnp.sum(per_class, axis=-1)
  else:
    y = labels.astype(per_class.dtype)
    per_video = jnp.sum(jnp.where(y > 0, y * per_class, 0.0), axis=-1)
  return _batch_mean(per_video, mask)


# ------------------------------------------------------ propagation (eq. 13)
def _is_cosine(similarity: str) -> bool:
  if similarity == "cosine":
    return True
  if similarity == "dot":
    return False
  raise ValueError(f"similarity must be one of {PROPAGATION_SIMILARITIES}, got {similarity!r}")


def _similarity_features(f: Array, similarity: str) -> Array:
  """Rows whose Gram matrix is ``S``: ``f`` itself or its unit-norm rows (zero rows stay 0)."""
  if not _is_cosine(similarity):
    return f
  norm, pos = _safe_norm(f, axis=-1)
  return jnp.where(pos[..., None], f / jnp.where(pos, norm, 1.0)[..., None], 0.0)


def similarity_matrix(features: Array, mask_or_length: Array | int, *,
                      similarity: str) -> Array:
  """``S = f f^T`` (paper 4.2) of one video, zero outside the real steps.

  Args:
    features: ``(T, E) float`` one video's ``f``.
    mask_or_length: ``(T,) bool`` mask or an int number of real steps.
    similarity: ``"dot"`` (as printed) or ``"cosine"`` (the propagation loss's
      ``loss.propagation_similarity``).

  Returns:
    ``(T, T) float``.
  """
  _check_rank("features", features, 2)
  t = features.shape[0]
  mask = jnp.asarray(mask_or_length)
  if mask.ndim == 0:
    mask = jnp.arange(t) < mask
  f = _similarity_features(jnp.where(mask[:, None], features, 0.0), similarity)
  return f @ f.T


def _per_video_propagation(f: Array, c: Array, method: str) -> Array:
  """``sum_n sum_ij S_ij (c_in - c_jn)^2`` per video; f, c already masked."""
  if method == "naive":
    s = jnp.einsum("bte,bse->bts", f, f)
    diff = c[:, :, None, :] - c[:, None, :, :]  # (B, T, T, N)
    return jnp.sum(s[..., None] * diff * diff, axis=(1, 2, 3))
  if method == "dense":
    s = jnp.einsum("bte,bse->bts", f, f)  # (B, T, T)
    d = jnp.sum(s, axis=2)  # (B, T)
    quad = jnp.einsum("btn,bts,bsn->b", c, s, c)
    return 2.0 * jnp.sum(d[..., None] * c * c, axis=(1, 2)) - 2.0 * quad
  if method == "factorized":
    d = jnp.einsum("bte,be->bt", f, jnp.sum(f, axis=1))  # d = f (f^T 1)
    proj = jnp.einsum("bte,btn->ben", f, c)  # f^T c, (B, E, N)
    return (2.0 * jnp.sum(d[..., None] * c * c, axis=(1, 2))
            - 2.0 * jnp.sum(proj * proj, axis=(1, 2)))
  raise ValueError(
      f"propagation method: expected one of {PROPAGATION_METHODS}, got {method!r}")


def _fused_weights(f: Array, c: Array, mask: Array, cosine: bool):
  """Masked ``f``, row scales and ``W = [inv, q inv, c inv]`` of :func:`_fused_propagation`.

  ``inv (B, T)`` is ``1 / ||f_t||`` for cosine similarity (0 on zero rows and
  padded steps) or the mask for dot similarity; ``q = ||c_t||^2``.
  Returns ``(fm (B, T, E), inv (B, T), q (B, T), w (B, T, N + 2))``.
  """
  fm = jnp.where(mask[..., None], f, jnp.zeros((), f.dtype))
  if cosine:
    # From f, not fm, and masked after the reduction: fm then feeds only the
    # products, into which the compiler can fuse it instead of storing it.
    sq = jnp.where(mask, jnp.sum(f * f, axis=-1), jnp.zeros((), f.dtype))
    pos = sq > 0
    inv = jnp.where(pos, jax.lax.rsqrt(jnp.where(pos, sq, 1.0)), 0.0)
  else:
    inv = mask.astype(f.dtype)
  inv = inv.astype(c.dtype)
  q = jnp.sum(c * c, axis=-1)
  w = jnp.concatenate([inv[..., None], (q * inv)[..., None], c * inv[..., None]], axis=-1)
  return fm, inv, q, w


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _fused_propagation(f: Array, c: Array, mask: Array, cosine: bool,
                       grad_f: bool) -> Array:
  """Eq. 13 summed over classes, per video: ``sum_ij S_ij ||c_i - c_j||^2``; ``(B,)``.

  Computed as one product ``f^T W``.

  With ``u_t = f_t inv_t`` (unit rows for cosine ``S``), ``s = sum_t u_t``,
  ``r = sum_t q_t u_t`` and ``P = sum_t u_t c_t^T`` the loss is
  ``2 s.r - 2 ||P||^2``, and ``[s, r, P] = f^T W`` with
  ``W = [inv, q inv, c inv] (T, N + 2)``: the scaled rows ``u`` are never
  formed. The hand-written gradient (``_fused_bwd``) reads ``f`` twice more
  (``f G`` and the norm term) and writes ``df`` once. The masked ``f``
  (NaN-safe padding) feeds only the two products, where a compiler can fuse
  it; the norms and the norm term of ``df`` read ``f`` and mask after, so no
  ``(B, T, E)`` intermediate need be stored; ``grad_f=False`` skips ``df``
  (``S`` is a constant).

  Args:
    f: ``(B, T, E) float`` features (padded steps may hold anything).
    c: ``(B, T, N) float`` CAS, zero on padded steps (centering is the caller's).
    mask: ``(B, T) bool``.
    cosine: cosine (True) or dot (False) similarity.
    grad_f: whether a gradient flows into ``f``.
  """
  return _fused_fwd(f, c, mask, cosine, grad_f)[0]


def _fused_fwd(f, c, mask, cosine, grad_f):
  fm, _, _, w = _fused_weights(f, c, mask, cosine)
  m = jnp.einsum("bte,btk->bek", fm, w.astype(fm.dtype)).astype(c.dtype)  # (B, E, N+2)
  s, r, p = m[..., 0], m[..., 1], m[..., 2:]
  per_video = 2.0 * jnp.sum(s * r, axis=-1) - 2.0 * jnp.sum(p * p, axis=(1, 2))
  return per_video, (f, c, mask, m)


def _fused_bwd(cosine, grad_f, res, g):
  f, c, mask, m = res
  fm, inv, q, w = _fused_weights(f, c, mask, cosine)
  g = g[:, None, None]
  # dL/dM for L = 2 s.r - 2 ||P||^2, M = [s, r, P] = f^T W.
  gm = jnp.concatenate([2.0 * g * m[..., 1:2], 2.0 * g * m[..., 0:1],
                        -4.0 * g * m[..., 2:]], axis=-1)  # (B, E, N+2)
  gw = jnp.einsum("bte,bek->btk", fm, gm.astype(fm.dtype)).astype(c.dtype)  # f G
  a, b, pc = gw[..., 0], gw[..., 1], gw[..., 2:]
  # W = [inv, q inv, c inv] with q = ||c||^2.
  dc = inv[..., None] * (pc + 2.0 * b[..., None] * c)
  df = None
  if grad_f:
    df = jnp.einsum("btk,bek->bte", w.astype(fm.dtype), gm.astype(fm.dtype))
    if cosine:  # inv = (f.f)^(-1/2): d inv / d f = -inv^3 f
      dinv = a + b * q + jnp.sum(pc * c, axis=-1)
      # f rather than fm, masked by the where: one elementwise pass, no stored fm.
      df = jnp.where(mask[..., None],
                     df - (inv ** 3 * dinv).astype(fm.dtype)[..., None] * f,
                     jnp.zeros((), fm.dtype))
  return df, dc, None


_fused_propagation.defvjp(_fused_fwd, _fused_bwd)


def _centered(c: Array, mask: Array) -> Array:
  """``c (B, T, N)`` (zero on padded steps) minus each class's mean over the real
  steps (a constant: the loss of eq. 13 is shift invariant), zero on padded steps."""
  count = jnp.maximum(jnp.sum(mask, axis=1), 1).astype(c.dtype)
  mean = jax.lax.stop_gradient(jnp.sum(c, axis=1) / count[:, None])
  return _masked(c - mean[:, None, :], mask)


def _normalized_per_video(per_video: Array, mask: Array, normalization: str) -> Array:
  """``per_video (B,)`` as is (``"none"``) or over the ``l_i^2`` pairs of each
  video (``"pairs"``), see :func:`propagation_loss`."""
  if normalization == "pairs":
    count = jnp.sum(mask, axis=1).astype(per_video.dtype)
    return per_video / jnp.maximum(count, 1.0) ** 2
  if normalization != "none":
    raise ValueError(f"propagation_loss: normalization must be one of "
                     f"{PROPAGATION_NORMALIZATIONS}, got {normalization!r}")
  return per_video


def propagation_loss(features: Array, cas: Array, mask: Array, *, method: str,
                     grad_through_similarity: bool, similarity: str,
                     normalization: str) -> Array:
  """Eq. 13 summed over classes (eq. 12): ``sum_n sum_ij S_ij (C(i,n) - C(j,n))^2``.

  ``S = f f^T`` over the real pairs ``(i, j)`` of each video; batch mean.

  Methods (equal up to float rounding):
    * ``"naive"``: the broadcast the equation reads like, ``(B, T, T, N)``.
    * ``"dense"``: materializes ``S (B, T, T)`` and uses the identity below.
    * ``"factorized"``: never forms ``S``:
      ``sum_ij S_ij (c_i - c_j)^2 = 2 sum_i d_i c_i^2 - 2 ||f^T c||^2`` with
      ``d = f (f^T 1)``; cost and memory linear in ``T``; gradient by autodiff,
      which holds ``(B, T, E)`` intermediates (the unit-norm rows and their
      cotangents).
    * ``"fused"`` (the config's default): the same identity as one product ``f^T W``,
      ``W = [1/||f||, ||c||^2/||f||, c/||f||] (B, T, N + 2)``, with a
      hand-written gradient: reads ``f`` twice forward and twice backward and
      holds no ``(B, T, E)`` intermediate but the masked ``f`` (see
      ``_fused_propagation``).
    * ``"pallas"``: the ``fused`` form as Pallas kernels
      (:mod:`jaxseg.propagation_pallas`: the row norms folded into the ``f^T W``
      reduction, ``f G`` and ``df`` in one pass); every similarity and
      ``grad_through_similarity``. Compiled (Triton) on a GPU; elsewhere in
      Pallas interpret mode, which is correct but slow (a check, not a speed).
  All but ``naive`` subtract each class's mean over the real steps from ``c``
  first (the loss is shift invariant) to limit cancellation.

  Args:
    features: ``(B, T, E) float`` ``f``.
    cas: ``(B, T, N) float`` ``C_loc``.
    mask: ``(B, T) bool``.
    method: ``"naive"``, ``"dense"``, ``"factorized"``, ``"fused"`` or ``"pallas"``.
    grad_through_similarity: if False (the config's default), ``S`` is a constant
      (``stop_gradient`` on ``f``): eq. 12 treats it as the given similarity
      ``W_ij`` of eq. 11, and letting the loss shrink ``f`` collapses it.
    similarity: ``"dot"``: ``S = f f^T`` as printed; ``"cosine"``: rows of
      ``f`` scaled to unit norm first (zero rows stay zero), so ``S_ij`` is in
      ``[-1, 1]`` whatever the feature norms.
    normalization: ``"none"``: the sum over pairs as printed (it grows as
      ``l^2``); ``"pairs"``: divided by ``l_i^2``, the number of pairs of
      video ``i``, so long and short videos weigh alike.

  Returns:
    scalar float.
  """
  _check_rank("features", features, 3)
  _check_rank("cas", cas, 3)
  c = _masked(cas, mask)
  if method != "naive":
    c = _centered(c, mask)
  if method in ("fused", "pallas"):
    f = features if grad_through_similarity else jax.lax.stop_gradient(features)
    fused = _fused_propagation
    if method == "pallas":
      from jaxseg.propagation_pallas import pallas_propagation as fused  # pylint: disable=g-import-not-at-top
    per_video = fused(f, c, jnp.asarray(mask, bool), _is_cosine(similarity),
                      bool(grad_through_similarity))
  else:
    f = _similarity_features(_masked(features, mask), similarity)
    if not grad_through_similarity:
      f = jax.lax.stop_gradient(f)
    per_video = _per_video_propagation(f, c, method)
  return _batch_mean(_normalized_per_video(per_video, mask, normalization), mask)


# ------------------------------------------------------------- total (eq. 1)
def _classification_term(cas_cls: Array, cas_loc: Array, batch: Mapping[str, Any],
                         mask: Array, *, topk_count: str, topk_mode: str, topk_ratio: float,
                         classification_normalization: str, loc_classification_weight: float,
                         loc_classification_topk_ratio: float) -> Array:
  """``L_cls`` of eq. 1: eq. 2-4 on ``C_cls``, plus ``w`` times eq. 2-4 on ``C_loc``.

  Args:
    cas_cls, cas_loc: ``(B, T, N) float`` ``C_cls`` and ``C_loc``.
    batch: gives ``lengths``, ``video_labels``, ``segment_labels``, ``num_labeled``.
    mask: ``(B, T) bool``.
    topk_count: ``count`` of :func:`labeled_count` (``Q`` of ``r = 2Q``).
    topk_mode, topk_ratio: ``mode`` and ``ratio`` of :func:`topk_k`.
    classification_normalization: ``normalization`` of :func:`classification_loss`.
    loc_classification_weight: ``w`` (0: ``C_cls`` only, as printed).
    loc_classification_topk_ratio: the ``r`` of the top-k on ``C_loc``: 0 uses
      ``C_cls``'s ``k``; ``> 0`` a fixed ``k = max(1, floor(l / r))``.

  Returns:
    scalar float.
  """
  q = labeled_count(batch["segment_labels"], mask, batch["num_labeled"],
                    count=str(topk_count))
  k = topk_k(batch["lengths"], q, mode=str(topk_mode), ratio=float(topk_ratio))
  loss = classification_loss(cas_cls, batch["video_labels"], mask, k,
                             normalization=str(classification_normalization))
  if float(loc_classification_weight) != 0.0:
    r_loc = float(loc_classification_topk_ratio)
    k_loc = topk_k(batch["lengths"], q, mode="fixed", ratio=r_loc) if r_loc > 0 else k
    loss = loss + float(loc_classification_weight) * classification_loss(
        cas_loc, batch["video_labels"], mask, k_loc,
        normalization=str(classification_normalization))
  return loss


def _sphere_term(f: Array, cas_loc: Array, batch: Mapping[str, Any], mask: Array,
                 weight: Array | None, outputs: Mapping[str, Array], *, margin: int,
                 sphere_classes: str) -> Array:
  """``L_sphere`` of eq. 1 (eq. 7-10): :func:`sphere_loss` of ``f (B, T, E)`` and
  ``C_loc (B, T, N)`` with ``W (N, E)`` = ``weight``, else ``outputs["sphere_weight"]``."""
  w = weight if weight is not None else outputs.get("sphere_weight")
  if w is None:
    raise ValueError("total_loss: the sphere term needs `weight` "
                     "(params['sphere_weight']) or outputs['sphere_weight']")
  return sphere_loss(f, cas_loc, batch["video_labels"], mask, w, margin=int(margin),
                     classes=str(sphere_classes))


def _propagation_term(f: Array, cas_loc: Array, outputs: Mapping[str, Array], mask: Array, *,
                      propagation_features: str, propagation_method: str,
                      propagation_grad_through_similarity: bool, propagation_similarity: str,
                      propagation_normalization: str) -> Array:
  """``L_prop`` of eq. 1: :func:`propagation_loss` (eq. 12-13) on ``C_loc``.

  Args:
    f: ``(B, T, E) float`` ``outputs["features"]``.
    cas_loc: ``(B, T, N) float`` ``C_loc``.
    outputs: the model output dict (gives ``clean_features``).
    mask: ``(B, T) bool``.
    propagation_features: ``"dropout"``: ``S`` from ``outputs["features"]``
      (post-dropout ``f``); ``"clean"``: from ``outputs["clean_features"]``
      (pre-dropout ``f``; the same at evaluation).
    propagation_method, propagation_grad_through_similarity,
      propagation_similarity, propagation_normalization: ``method``,
      ``grad_through_similarity``, ``similarity`` and ``normalization`` of
      :func:`propagation_loss`.

  Returns:
    scalar float.
  """
  if propagation_features not in PROPAGATION_FEATURES:
    raise ValueError(f"propagation features: expected one of {PROPAGATION_FEATURES}, "
                     f"got {propagation_features!r}")
  f_s = outputs["clean_features"] if propagation_features == "clean" else f
  return propagation_loss(
      f_s, cas_loc, mask, method=str(propagation_method),
      grad_through_similarity=bool(propagation_grad_through_similarity),
      similarity=str(propagation_similarity),
      normalization=str(propagation_normalization))


def _switched(use: bool, fn, zero: Array, *, log_disabled_terms: bool) -> Array:
  """A term of eq. 1: ``fn()`` when switched on; when off, ``fn()`` under
  ``stop_gradient`` with ``log_disabled_terms`` (for logging), else ``zero``
  (not computed)."""
  if use:
    return fn()
  if log_disabled_terms:
    return jax.lax.stop_gradient(fn())
  return zero


def total_loss(outputs: Mapping[str, Array], batch: Mapping[str, Any], *,
               use_classification: bool, use_segment: bool, use_sphere: bool,
               use_propagation: bool, alpha: float, beta: float, gamma: float,
               margin: int, topk_mode: str, topk_ratio: float, propagation_method: str,
               propagation_grad_through_similarity: bool,
               classification_normalization: str, propagation_similarity: str,
               propagation_normalization: str, topk_count: str, sphere_classes: str,
               propagation_features: str, segment_normalization: str,
               loc_classification_weight: float, loc_classification_topk_ratio: float,
               weight: Array | None = None,
               log_disabled_terms: bool = False) -> tuple[Array, dict[str, Array]]:
  """Eq. 1: ``L = L_cls + alpha L_segment + beta L_sphere + gamma L_prop``.

  The keyword arguments but ``weight`` and ``log_disabled_terms`` are the
  fields of ``config.loss`` under their own names (``jaxseg/config.py`` says
  what each means and holds their defaults), so the call reads
  ``total_loss(outputs, batch, weight=w, **config.loss)``; a config missing a
  field fails naming it.

  Args:
    outputs: the :class:`jaxseg.model.SegmentModel` output dict (``features``,
      ``cas_cls``, ``cas_loc``; optionally ``clean_features``, ``sphere_weight``).
    batch: the batch pytree of ``docs/design.md`` (``mask``, ``lengths``,
      ``video_labels``, ``segment_labels``, ``num_labeled``).
    use_classification, use_segment, use_sphere, use_propagation: static
      switches; a switched-off term is not computed and reported as 0, unless
      ``log_disabled_terms`` (then computed under ``stop_gradient``, for
      logging only).
    alpha, beta, gamma: eq. 1 trade-offs.
    topk_mode, topk_ratio, topk_count, classification_normalization,
      loc_classification_weight, loc_classification_topk_ratio: ``L_cls``,
      eq. 2-4 on ``C_cls`` plus ``loc_classification_weight`` times eq. 2-4 on
      ``C_loc`` (:func:`topk_k`, :func:`labeled_count`, :func:`classification_loss`).
    segment_normalization: ``normalization`` of :func:`partial_segment_loss`.
    margin, sphere_classes: SphereFace ``m`` (static int) and ``classes`` of
      :func:`sphere_loss`.
    propagation_method, propagation_grad_through_similarity,
      propagation_similarity, propagation_normalization, propagation_features:
      :func:`propagation_loss`; ``propagation_features`` picks the ``f`` of ``S``
      (``"dropout"``: ``outputs["features"]``, ``"clean"``: ``outputs["clean_features"]``).
    weight: ``(N, E)`` sphere weight ``W`` (``params["sphere_weight"]``);
      defaults to ``outputs["sphere_weight"]``. Needed when the sphere term is
      computed.
    log_disabled_terms: compute the switched-off terms for logging.

  Returns:
    ``(total, terms)``: scalar total and a dict of the unweighted terms
    ``classification``, ``segment``, ``sphere``, ``propagation`` plus
    ``total``.
  """
  mask = jnp.asarray(batch["mask"], bool)
  cas_cls, cas_loc, f = outputs["cas_cls"], outputs["cas_loc"], outputs["features"]
  zero = jnp.zeros((), cas_loc.dtype)
  compute = {
      "classification": lambda: _classification_term(
          cas_cls, cas_loc, batch, mask, topk_count=topk_count, topk_mode=topk_mode,
          topk_ratio=topk_ratio, classification_normalization=classification_normalization,
          loc_classification_weight=loc_classification_weight,
          loc_classification_topk_ratio=loc_classification_topk_ratio),
      "segment": lambda: partial_segment_loss(cas_loc, batch["segment_labels"], mask,
                                              normalization=str(segment_normalization)),
      "sphere": lambda: _sphere_term(f, cas_loc, batch, mask, weight, outputs, margin=margin,
                                     sphere_classes=sphere_classes),
      "propagation": lambda: _propagation_term(
          f, cas_loc, outputs, mask, propagation_features=propagation_features,
          propagation_method=propagation_method,
          propagation_grad_through_similarity=propagation_grad_through_similarity,
          propagation_similarity=propagation_similarity,
          propagation_normalization=propagation_normalization),
  }
  switches = {"classification": bool(use_classification), "segment": bool(use_segment),
              "sphere": bool(use_sphere), "propagation": bool(use_propagation)}
  terms = {name: _switched(switches[name], fn, zero, log_disabled_terms=log_disabled_terms)
           for name, fn in compute.items()}
  total = zero
  for name, scale in (("classification", 1.0), ("segment", float(alpha)),
                      ("sphere", float(beta)), ("propagation", float(gamma))):
    if switches[name]:
      total = total + scale * terms[name]
  terms["total"] = total
  return total, terms
