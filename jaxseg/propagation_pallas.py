"""The propagation loss (paper eq. 13, the fused form) as two Pallas kernels.

Eq. 13 summed over classes, per video, ``sum_ij S_ij ||c_i - c_j||^2`` with
``S = u u^T`` (``u_t = f_t / ||f_t||`` for cosine ``S``, ``u = f`` for dot
``S``), computed as in :func:`jaxseg.losses._fused_propagation`: with
``cw_t = [1, ||c_t||^2, c_t]`` and ``inv_t = 1 / ||f_t||`` (0 on zero rows and
padded steps; the mask for dot ``S``),

  ``M = f^T W``, ``W = inv * cw`` ``(T, N + 2)``,  ``M = [s, r, P]``,
  ``loss = 2 s.r - 2 ||P||^2``,

and its gradient, with ``G = dloss/dM`` ``(E, N + 2)`` and ``gw = f G``
``(T, N + 2)`` (``gw_t . cw_t`` is ``dloss/dinv_t``),

  ``dC = inv * (gw[:, 2:] + 2 gw[:, 1:2] * c)``,
  ``df = W G^T - inv^3 (gw . cw) f``   (the second term for cosine ``S`` only).

The kernels (``jax.experimental.pallas``; Triton on a GPU, interpret mode
elsewhere):

* forward, grid ``(B, S)``: program ``(b, s)`` owns ``time_tile`` steps of
  video ``b`` and walks them in sub-tiles of ``block_t`` rows. Per sub-tile it
  reads the rows ``block_d`` columns at a time twice in a row: first for the
  squared norms (the cosine normalization, folded in: no separate norm pass
  over ``f``), then for ``M[cols] += f[rows, cols]^T (inv * cw[rows])``
  accumulated in its own ``(E, K)`` block of the output (``K`` = ``N + 2``
  padded to a power of two >= 16). The ``S`` partial ``M`` are summed by XLA.
  ``f`` is read once from memory if a sub-tile (``block_t x E``) is still in
  the cache for its second read.
* backward, grid ``(B, T / block_t)``: per sub-tile, one sweep over the
  columns accumulates ``||f_t||^2`` and ``gw = f G`` together, then (gradient
  into ``f`` only) a second sweep writes ``df`` column block by column block.
  It writes ``inv * gw`` ``(B, T, K)``, from which XLA forms ``dC``.

Padded steps (``mask`` False) contribute nothing and get exactly zero
gradient: ``f`` is masked with ``where`` after every load (NaN in padding
never reaches a product), ``inv`` uses a double ``where`` on the squared norm,
``cw`` is built masked, ``df`` and ``dC`` are masked with ``where``. Shapes
that the tiles do not divide are padded (a copy of ``f``) with masked steps
and zero columns, which change nothing.

Memory traffic at ``B=16, T=8192, E=2048`` float32 (``f`` is 1 GiB), ``N=20``:
forward reads ``f`` once (if each 64-row sub-tile's second read hits the
cache) plus 64 MiB of partial ``M``; backward reads ``f`` once and writes
``df`` once (1 GiB each; ``df`` only with gradient through ``S``). About
3.2 GiB in all, or 2.1 GiB without gradient through ``S`` (XLA's ``fused``:
8.2 GiB). No two-pass scheme reads ``f`` only once: ``G`` needs all of ``M``.
Not yet compiled or timed on a GPU (``benchmarks/loss_throughput.py --methods
fused pallas`` does both and checks the values against ``fused``).

Use it through ``loss.propagation_method="pallas"``
(:func:`jaxseg.losses.propagation_loss`); equal to ``"fused"`` up to float
rounding, for both similarities and with or without gradient through ``S``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

Array = jax.Array

# Defaults for an H100 / H200 (Triton): a sub-tile load is block_t x block_d
# float32 = 64 KiB per program; the forward program's time_tile of 512 rows
# gives B * T / 512 = 256 programs at B=16, T=8192 (about two per SM).
BLOCK_T = 64
BLOCK_D = 256
TIME_TILE = 512


def _pow2(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def on_gpu() -> bool:
  """Whether the default backend is a GPU (the kernels are compiled there)."""
  return jax.default_backend() in ("gpu", "cuda", "rocm")


@dataclasses.dataclass(frozen=True)
class Tiles:
  """Static kernel parameters (hashable: a ``nondiff_argnums`` of the custom VJP).

  Attributes:
    block_t: rows of ``f`` per sub-tile (a power of two; clamped to the video).
    block_d: columns of ``f`` per load (a power of two; clamped to ``E``).
    time_tile: rows per forward program (rounded to a multiple of ``block_t``).
    interpret: run the kernels in interpret mode (CPU) instead of compiling them.
    num_warps, num_stages: Triton's, on a GPU (None: Triton's defaults).
    precision: of the in-kernel products (None: the default, TF32 on a GPU as
      XLA's ``fused``; ``lax.Precision.HIGHEST`` for IEEE float32).
  """
  block_t: int = BLOCK_T
  block_d: int = BLOCK_D
  time_tile: int = TIME_TILE
  interpret: bool = True
  num_warps: int | None = None
  num_stages: int | None = None
  precision: Any = None

  def __post_init__(self):
    for name in ("block_t", "block_d"):
      v = getattr(self, name)
      if not (isinstance(v, int) and v >= 1 and v & (v - 1) == 0):
        raise ValueError(f"propagation_pallas: {name} must be a power of two, got {v!r}")
    if not (isinstance(self.time_tile, int) and self.time_tile >= 1):
      raise ValueError(f"propagation_pallas: time_tile must be a positive int, "
                       f"got {self.time_tile!r}")


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Padded sizes: ``t_pad = splits * per * bt``, ``e_pad = nd * bd``, ``k`` columns."""
  bt: int
  bd: int
  per: int
  splits: int
  nd: int
  k: int
  t_pad: int
  e_pad: int


def layout(t: int, e: int, n: int, tiles: Tiles) -> _Layout:
  """The tile sizes and padded shapes for ``(T, E)`` features and ``N`` classes.

  Blocks stay powers of two of at least 16 (Triton's loads and products need
  it); the forward's time tiles are balanced so that padding adds less than
  one sub-tile per program.
  """
  bt = min(tiles.block_t, max(16, _pow2(t)))
  bd = min(tiles.block_d, max(16, _pow2(e)))
  n_sub = -(-t // bt)
  per = max(1, min(n_sub, tiles.time_tile // bt))
  splits = -(-n_sub // per)
  per = -(-n_sub // splits)
  e_pad = _round_up(e, bd)
  return _Layout(bt=bt, bd=bd, per=per, splits=splits, nd=e_pad // bd,
                 k=max(16, _pow2(n + 2)), t_pad=splits * per * bt, e_pad=e_pad)


# ------------------------------------------------------------------ kernels
def _rows_loaded(f_ref, rows, j, bd, live, dtype):
  """Columns ``[j bd, (j+1) bd)`` of rows ``rows``, zero on padded rows (NaN-safe)."""
  x = f_ref[rows, pl.ds(pl.multiple_of(j * bd, bd), bd)].astype(dtype)
  return jnp.where(live[:, None], x, jnp.zeros((), dtype))


def _inv_norm(sq, live):
  """``1 / sqrt(sq)`` on live rows with ``sq > 0``, else 0 (double where)."""
  pos = live & (sq > 0)
  return jnp.where(pos, lax.rsqrt(jnp.where(pos, sq, jnp.ones((), sq.dtype))),
                   jnp.zeros((), sq.dtype))


def _dot(a, b, contract, precision, dtype):
  return lax.dot_general(a, b, (contract, ((), ())), precision=precision,
                         preferred_element_type=dtype)


def _forward_kernel(f_ref, cw_ref, m_ref, o_ref, *, lay: _Layout, cosine: bool,
                    precision, dtype):
  """One program: ``o = sum_t f_t^T (inv_t cw_t)`` over its ``per * bt`` rows.

  Refs: ``f (per*bt, e_pad)``, ``cw (per*bt, k)``, ``mask (per*bt,)`` float,
  ``o (e_pad, k)`` (this program's partial ``M``).
  """
  bt, bd, nd = lay.bt, lay.bd, lay.nd

  def zero(j, carry):
    o_ref[pl.ds(pl.multiple_of(j * bd, bd), bd), :] = jnp.zeros((bd, lay.k), o_ref.dtype)
    return carry

  lax.fori_loop(0, nd, zero, 0)

  def sub_tile(i, carry):
    rows = pl.ds(pl.multiple_of(i * bt, bt), bt)
    live = m_ref[rows] > 0
    w = jnp.where(live[:, None], cw_ref[rows, :].astype(dtype), jnp.zeros((), dtype))
    if cosine:
      def norms(j, sq):
        x = _rows_loaded(f_ref, rows, j, bd, live, dtype)
        return sq + jnp.sum(x * x, axis=1)
      sq = lax.fori_loop(0, nd, norms, jnp.zeros((bt,), dtype))
      w = w * _inv_norm(sq, live)[:, None]

    def accumulate(j, carry):
      x = _rows_loaded(f_ref, rows, j, bd, live, dtype)
      cols = pl.ds(pl.multiple_of(j * bd, bd), bd)
      o_ref[cols, :] = o_ref[cols, :] + _dot(x, w, ((0,), (0,)), precision, dtype)
      return carry

    lax.fori_loop(0, nd, accumulate, 0)
    return carry

  lax.fori_loop(0, lay.per, sub_tile, 0)


def _backward_kernel(f_ref, cw_ref, m_ref, gm_ref, gwi_ref, *df_ref, lay: _Layout,
                     cosine: bool, precision, dtype):
  """One sub-tile of rows: ``inv * (f G)`` and, if ``df_ref``, ``df``.

  Refs: ``f (bt, e_pad)``, ``cw (bt, k)``, ``mask (bt,)`` float, ``G (e_pad, k)``,
  outputs ``inv * gw (bt, k)`` and optionally ``df (bt, e_pad)``.
  """
  bt, bd, nd, k = lay.bt, lay.bd, lay.nd, lay.k
  rows = pl.ds(0, bt)
  live = m_ref[...] > 0
  cw = jnp.where(live[:, None], cw_ref[...].astype(dtype), jnp.zeros((), dtype))

  def sweep(j, carry):
    sq, gw = carry
    x = _rows_loaded(f_ref, rows, j, bd, live, dtype)
    g = gm_ref[pl.ds(pl.multiple_of(j * bd, bd), bd), :].astype(dtype)
    if cosine:
      sq = sq + jnp.sum(x * x, axis=1)
    return sq, gw + _dot(x, g, ((1,), (0,)), precision, dtype)

  sq, gw = lax.fori_loop(0, nd, sweep, (jnp.zeros((bt,), dtype), jnp.zeros((bt, k), dtype)))
  inv = _inv_norm(sq, live) if cosine else live.astype(dtype)
  gwi_ref[...] = (gw * inv[:, None]).astype(gwi_ref.dtype)
  if not df_ref:
    return
  (df_ref,) = df_ref
  w = cw * inv[:, None]
  coef = inv * inv * inv * jnp.sum(gw * cw, axis=1)  # inv^3 dloss/dinv

  def write(j, carry):
    cols = pl.ds(pl.multiple_of(j * bd, bd), bd)
    d = _dot(w, gm_ref[cols, :].astype(dtype), ((1,), (1,)), precision, dtype)
    if cosine:  # d inv / d f = -inv^3 f
      d = d - coef[:, None] * _rows_loaded(f_ref, rows, j, bd, live, dtype)
    df_ref[:, cols] = jnp.where(live[:, None], d, jnp.zeros((), dtype)).astype(df_ref.dtype)
    return carry

  lax.fori_loop(0, nd, write, 0)


# ----------------------------------------------------------------- wrappers
def _compute_dtype(f, c):
  return jnp.result_type(f.dtype, c.dtype, jnp.float32)


def _call_kwargs(tiles: Tiles, name: str) -> dict:
  kwargs: dict = {"interpret": tiles.interpret, "name": name}
  if not tiles.interpret:
    from jax.experimental.pallas import triton as pltriton  # pylint: disable=g-import-not-at-top
    kwargs["compiler_params"] = pltriton.CompilerParams(num_warps=tiles.num_warps,
                                                        num_stages=tiles.num_stages)
  return kwargs


def _padded(f, c, mask, lay: _Layout, dtype):
  """``f (B, t_pad, e_pad)``, ``cw = [1, |c|^2, c, 0] (B, t_pad, k)`` and the mask as
  ``dtype (B, t_pad)``, all zero on padded steps (``f`` there is masked in the kernels)."""
  b, t, e = f.shape
  n = c.shape[-1]
  live = mask[..., None]
  cd = jnp.where(live, c.astype(dtype), jnp.zeros((), dtype))
  q = jnp.sum(cd * cd, axis=-1, keepdims=True)
  ones = live.astype(dtype)
  cw = jnp.concatenate([ones, q, cd, jnp.zeros((b, t, lay.k - n - 2), dtype)], axis=-1)
  maskf = mask.astype(dtype)
  dt, de = lay.t_pad - t, lay.e_pad - e
  if dt or de:
    f = jnp.pad(f, ((0, 0), (0, dt), (0, de)))
  if dt:
    cw = jnp.pad(cw, ((0, 0), (0, dt), (0, 0)))
    maskf = jnp.pad(maskf, ((0, 0), (0, dt)))
  return f, cw, maskf


def _forward_m(f, c, mask, cosine: bool, tiles: Tiles) -> Array:
  """``M = f^T W`` per video, ``(B, e_pad, k)`` (zero beyond ``E`` and ``N + 2``)."""
  b, t, e = f.shape
  lay = layout(t, e, c.shape[-1], tiles)
  dtype = _compute_dtype(f, c)
  fp, cw, maskf = _padded(f, c, mask, lay, dtype)
  rows = lay.per * lay.bt
  kernel = functools.partial(_forward_kernel, lay=lay, cosine=cosine,
                             precision=tiles.precision, dtype=dtype)
  partial = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((b, lay.splits, lay.e_pad, lay.k), dtype),
      grid=(b, lay.splits),
      in_specs=[pl.BlockSpec((None, rows, lay.e_pad), lambda i, s: (i, s, 0)),
                pl.BlockSpec((None, rows, lay.k), lambda i, s: (i, s, 0)),
                pl.BlockSpec((None, rows), lambda i, s: (i, s))],
      out_specs=pl.BlockSpec((None, None, lay.e_pad, lay.k), lambda i, s: (i, s, 0, 0)),
      **_call_kwargs(tiles, "propagation_forward"),
  )(fp, cw, maskf)
  return jnp.sum(partial, axis=1)


def _backward_gw(f, c, mask, gm, cosine: bool, grad_f: bool, tiles: Tiles):
  """``(inv * f G) (B, T, k)`` and ``df (B, T, E)`` (None unless ``grad_f``)."""
  b, t, e = f.shape
  lay = layout(t, e, c.shape[-1], tiles)
  dtype = _compute_dtype(f, c)
  fp, cw, maskf = _padded(f, c, mask, lay, dtype)
  bt = lay.bt
  out_shape = [jax.ShapeDtypeStruct((b, lay.t_pad, lay.k), dtype)]
  out_specs = [pl.BlockSpec((None, bt, lay.k), lambda i, s: (i, s, 0))]
  if grad_f:
    out_shape.append(jax.ShapeDtypeStruct((b, lay.t_pad, lay.e_pad), f.dtype))
    out_specs.append(pl.BlockSpec((None, bt, lay.e_pad), lambda i, s: (i, s, 0)))
  kernel = functools.partial(_backward_kernel, lay=lay, cosine=cosine,
                             precision=tiles.precision, dtype=dtype)
  outs = pl.pallas_call(
      kernel,
      out_shape=tuple(out_shape),
      grid=(b, lay.t_pad // bt),
      in_specs=[pl.BlockSpec((None, bt, lay.e_pad), lambda i, s: (i, s, 0)),
                pl.BlockSpec((None, bt, lay.k), lambda i, s: (i, s, 0)),
                pl.BlockSpec((None, bt), lambda i, s: (i, s)),
                pl.BlockSpec((None, lay.e_pad, lay.k), lambda i, s: (i, 0, 0))],
      out_specs=tuple(out_specs),
      **_call_kwargs(tiles, "propagation_backward"),
  )(fp, cw, maskf, gm.astype(dtype))
  gwi = outs[0][:, :t]
  df = outs[1][:, :t, :e] if grad_f else None
  return gwi, df


def _loss_from_m(m: Array) -> Array:
  s, r, p = m[..., 0], m[..., 1], m[..., 2:]  # p: P and zero padding columns
  return 2.0 * jnp.sum(s * r, axis=-1) - 2.0 * jnp.sum(p * p, axis=(1, 2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _pallas_propagation(f: Array, c: Array, mask: Array, cosine: bool, grad_f: bool,
                        tiles: Tiles) -> Array:
  return _pallas_fwd(f, c, mask, cosine, grad_f, tiles)[0]


def _pallas_fwd(f, c, mask, cosine, grad_f, tiles):
  m = _forward_m(f, c, mask, cosine, tiles)
  return _loss_from_m(m).astype(c.dtype), (f, c, mask, m)


def _pallas_bwd(cosine, grad_f, tiles, res, g):
  f, c, mask, m = res
  g = g.astype(m.dtype)[:, None, None]
  # dloss/dM for loss = 2 s.r - 2 ||P||^2, M = [s, r, P, 0...]; (B, e_pad, k).
  gm = jnp.concatenate([2.0 * g * m[..., 1:2], 2.0 * g * m[..., 0:1], -4.0 * g * m[..., 2:]],
                       axis=-1)
  gwi, df = _backward_gw(f, c, mask, gm, cosine, grad_f, tiles)
  n = c.shape[-1]
  dc = gwi[..., 2:2 + n] + 2.0 * gwi[..., 1:2] * c.astype(gwi.dtype)
  dc = jnp.where(mask[..., None], dc, jnp.zeros((), dc.dtype)).astype(c.dtype)
  return df, dc, None


_pallas_propagation.defvjp(_pallas_fwd, _pallas_bwd)


def pallas_propagation(f: Array, c: Array, mask: Array, cosine: bool = True,
                       grad_f: bool = False, *, block_t: int = BLOCK_T,
                       block_d: int = BLOCK_D, time_tile: int = TIME_TILE,
                       interpret: bool | None = None, num_warps: int | None = None,
                       num_stages: int | None = None, precision: Any = None) -> Array:
  """Eq. 13 summed over classes, per video: ``sum_ij S_ij ||c_i - c_j||^2``; ``(B,)``.

  The arguments and semantics of :func:`jaxseg.losses._fused_propagation`
  (same value and custom gradient), computed by Pallas kernels (module
  docstring): the forward folds the row norms of cosine ``S`` into the
  ``f^T W`` reduction over time tiles, the backward computes ``f G`` and
  ``df`` in one pass over each tile of ``f``.

  Args:
    f: ``(B, T, E) float32`` (or bfloat16 / float64) features; padded steps may
      hold anything (NaN included).
    c: ``(B, T, N) float32`` CAS, zero on padded steps (centering is the caller's).
    mask: ``(B, T) bool``, True on real steps.
    cosine: cosine (True) or dot (False) similarity.
    grad_f: whether a gradient flows into ``f`` (through ``S``); if False, ``f``
      gets none (the caller's ``stop_gradient`` makes ``S`` a constant).
    block_t, block_d, time_tile: tile sizes (:class:`Tiles`); any ``T`` and ``E``
      work (padded and masked).
    interpret: None (default): interpret mode unless the default backend is a
      GPU, where the kernels are compiled with Triton.
    num_warps, num_stages, precision: see :class:`Tiles`.

  Returns:
    ``(B,)`` in ``c``'s dtype (the computation runs in at least float32).
  """
  if f.ndim != 3 or c.ndim != 3 or mask.shape != f.shape[:2] or c.shape[:2] != f.shape[:2]:
    raise ValueError(f"propagation_pallas: expected f (B, T, E), c (B, T, N), mask (B, T); "
                     f"got {f.shape}, {c.shape}, {mask.shape}")
  tiles = Tiles(block_t=block_t, block_d=block_d, time_tile=time_tile,
                interpret=(not on_gpu()) if interpret is None else bool(interpret),
                num_warps=num_warps, num_stages=num_stages, precision=precision)
  return _pallas_propagation(f, c, jnp.asarray(mask, bool), bool(cosine), bool(grad_f),
                             tiles)
