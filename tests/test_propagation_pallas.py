"""The Pallas kernels of the propagation loss (paper eq. 13, fused form), in
interpret mode on the CPU, against the XLA ``fused`` form and the float64
reference of ``tests/reference_losses.py``.

Tolerances: ``pallas`` and ``fused`` evaluate the same float32 sums
(``M = f^T W``, ``gw = f G``) in a different order (tile by tile here, one
product there), so they differ by a few float32 roundings: rtol 1e-5 on the
value (observed ~3e-7), and on the gradients rtol 1e-5 plus an atol of 1e-5 of
the largest entry, since the entries near zero are differences of O(max)
terms. Against the float64 reference: rtol 1e-4, room for the float32
rounding of the identity ``2 s.r - 2 ||P||^2`` (its two terms cancel partly,
more so with the CAS offset these tests add; the XLA forms meet 1e-5 here too).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg import config_checks
from jaxseg import losses
from jaxseg import propagation_pallas as pp
from tests import reference_losses as ref

# End-to-end: trains, runs subprocesses or full-size networks (pytest -m "not slow"
# skips the module).
pytestmark = pytest.mark.slow


N = 3


def make_batch(t, d, seed=0, lengths=None):
  rng = np.random.default_rng(seed)
  # Default: a full video, a shorter one, an empty one (left out of the batch mean).
  lengths = np.array(lengths if lengths is not None else [t, max(1, (2 * t) // 3), 0])
  mask = np.arange(t)[None, :] < lengths[:, None]
  f = rng.normal(size=(len(lengths), t, d)).astype(np.float32)
  f[0, min(2, t - 1)] = 0.0  # a zero row: cosine S is 0 there, finite gradient
  # An offset in the CAS stresses the cancellation of the identity.
  c = (rng.normal(0.0, 2.0, (len(lengths), t, N)) + 3.0).astype(np.float32)
  return f * mask[..., None], c * mask[..., None], mask, lengths


@functools.lru_cache(maxsize=None)
def loss_and_grads(method, through, similarity="cosine"):
  def loss(f, c, mask):
    return losses.propagation_loss(f, c, mask, method=method,
                                   grad_through_similarity=through,
                                   similarity=similarity, normalization="none")
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def assert_grad_close(got, want, rtol=1e-5):
  got, want = np.asarray(got), np.asarray(want)
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(np.abs(want).max(), 1e-30))


# T in {7, 64, 130} (130: not a multiple of the 64-row tile) and E in {8, 24}
# (24: padded to 32 columns), each with and without gradient through S across
# the cases; the other tests reuse these shapes (and so these compilations).
@pytest.mark.parametrize("t,d,through", [(7, 8, True), (64, 24, False), (130, 8, False),
                                         (130, 24, True)])
def test_value_and_gradients_equal_fused_and_reference(t, d, through):
  f, c, mask, lengths = make_batch(t, d, seed=t + d)
  v, (gf, gc) = loss_and_grads("pallas", through)(f, c, mask)
  v0, (gf0, gc0) = loss_and_grads("fused", through)(f, c, mask)
  np.testing.assert_allclose(v, v0, rtol=1e-5)
  assert_grad_close(gc, gc0)
  assert_grad_close(gf, gf0)
  np.testing.assert_allclose(v, ref.propagation_loss(f, c, lengths, "cosine"), rtol=1e-4)
  assert np.abs(gc).max() > 0
  if through:
    assert np.abs(gf).max() > 0
  else:  # S is a constant: no gradient into f
    assert np.all(np.asarray(gf) == 0)
  # Padded steps get exactly zero gradient.
  assert np.all(np.asarray(gf)[~mask] == 0) and np.all(np.asarray(gc)[~mask] == 0)


def test_gradients_equal_float64_reference_by_central_differences():
  """Eq. 13 is quadratic in C (central differences exact up to rounding) and
  smooth in f away from zero rows; both checked against the reference."""
  f, c, mask, lengths = make_batch(7, 8, seed=3, lengths=[7, 5, 0])
  f[0, 2] = 0.5  # no zero row: the reference's cosine is not differentiable there
  _, (gf, gc) = loss_and_grads("pallas", True)(f, c, mask)
  h = 1e-4

  def numeric(which):
    x = {"f": f, "c": c}[which].astype(np.float64)
    g = np.zeros(x.shape)
    for idx in zip(*np.nonzero(mask)):
      for k in range(x.shape[-1]):
        side = []
        for step in (h, -h):
          y = x.copy()
          y[idx + (k,)] += step
          args = (y, c) if which == "f" else (f, y)
          side.append(ref.propagation_loss(*args, lengths, "cosine"))
        g[idx + (k,)] = (side[0] - side[1]) / (2 * h)
    return g

  for got, want in ((gc, numeric("c")), (gf, numeric("f"))):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_padding_values_change_nothing():
  f, c, mask, _ = make_batch(130, 24, seed=5, lengths=[100, 17, 0])
  fn = loss_and_grads("pallas", True)
  v, (gf, gc) = fn(f, c, mask)
  for junk in (np.nan, 1e30, -7.0):
    fj, cj = f.copy(), c.copy()
    fj[~mask] = junk
    cj[~mask] = junk
    vj, (gfj, gcj) = fn(fj, cj, mask)
    np.testing.assert_array_equal(vj, v)
    np.testing.assert_array_equal(gfj, gf)
    np.testing.assert_array_equal(gcj, gc)
    assert np.all(np.asarray(gfj)[~mask] == 0) and np.all(np.asarray(gcj)[~mask] == 0)


@pytest.mark.parametrize("tiles,cosine", [
    (dict(block_t=16, block_d=16, time_tile=32), True),
    (dict(block_t=16, block_d=16, time_tile=32), False),
    (dict(block_t=32, block_d=8, time_tile=1000), True)])
def test_tiles_that_do_not_divide_the_shapes(tiles, cosine):
  """Several forward programs per video, several column blocks, padded T and E
  (130 = 8 x 16 + 2 steps, E = 24 on 16-column blocks): per-video values equal
  the reference's, gradients the ``fused`` form's (the loss is a batch mean
  over the two non-empty videos; centering C changes no gradient)."""
  f, c, mask, lengths = make_batch(130, 24, seed=11)
  lay = pp.layout(130, 24, N, pp.Tiles(**tiles))
  assert lay.t_pad > 130 and (lay.splits > 1 or lay.nd > 1)
  sim = "cosine" if cosine else "dot"

  def loss(f, c):
    per_video = pp.pallas_propagation(f, c, jnp.asarray(mask), cosine, True, **tiles)
    return jnp.sum(per_video) / 2, per_video

  (_, per_video), (gf, gc) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1),
                                                        has_aux=True))(f, c)
  for b, l in enumerate(lengths):
    expect = ref.propagation_loss(f[b:b + 1], c[b:b + 1], [l], sim) if l else 0.0
    np.testing.assert_allclose(per_video[b], expect, rtol=1e-4)
  _, (gf0, gc0) = loss_and_grads("fused", True, sim)(f, c, mask)
  assert_grad_close(gf, gf0)
  assert_grad_close(gc, gc0)
  assert np.all(np.asarray(gf)[~mask] == 0) and np.all(np.asarray(gc)[~mask] == 0)


def test_the_config_choice():
  assert "pallas" in config_lib.PROPAGATION_METHODS
  assert config_lib.base_config().loss.propagation_method == "fused"
  config_checks.validate(config_lib.with_overrides(
      config_lib.base_config(), **{"loss.propagation_method": "pallas"}))


def test_interpret_mode_is_chosen_on_cpu_and_tiles_are_checked():
  assert not pp.on_gpu()  # the CPU CI: the kernels run in interpret mode
  f, c, mask, lengths = make_batch(7, 8)
  # Compiled (interpret=False), pallas_call refuses the CPU; the default runs.
  got = pp.pallas_propagation(f, c, mask, True, False)
  np.testing.assert_allclose(got[0], ref.propagation_loss(f[:1], c[:1], lengths[:1], "cosine"),
                             rtol=1e-4)
  with pytest.raises(ValueError, match="block_t"):
    pp.pallas_propagation(f, c, mask, block_t=48)
  with pytest.raises(ValueError, match="expected f"):
    pp.pallas_propagation(f[0], c, mask)


def test_loss_throughput_quick_runs_pallas_in_interpret_mode(tmp_path, monkeypatch):
  from benchmarks import common
  from benchmarks import loss_throughput
  skipped = loss_throughput.run(1, [16], 8, 3, 1, ["pallas"], include_total=False)
  assert skipped["note"][0].startswith("skipped: no GPU")
  monkeypatch.setattr(common, "plot_scaling", lambda *a, **k: None)  # tested elsewhere
  df = loss_throughput.main(["--quick", "--methods", "pallas", "--no-total",
                             "--out", str(tmp_path)])
  assert list(df["loss"]) == ["pallas", "pallas"] and np.all(np.isfinite(df["median_ms"]))
  for note in df["note"]:
    assert note.endswith("interpret mode (no GPU): not a speed"), note
    diffs = [float(part.split()[-1]) for part in note.split(";")[0][len("vs fused: "):]
             .split(", ")]
    assert len(diffs) == 3 and max(diffs) < 1e-4, note
  assert (tmp_path / "loss_throughput.md").exists()
