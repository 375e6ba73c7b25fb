"""Tests of jaxseg.losses against the float64 NumPy references (paper eq. 1-13)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxseg import config as config_lib
from jaxseg import losses
from tests import reference_losses as ref
from tests.helpers import loss_kwargs

B, T, N, E = 5, 12, 4, 6
RTOL = 1e-5


def random_batch(seed, b=B, t=T, n=N, e=E, min_len=1, feature_sign="relu"):
  """Random lengths, CAS, features, multi-hot labels and segment labels."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(min_len, t + 1, size=b)
  lengths[0] = t  # one full video
  mask = np.arange(t)[None, :] < lengths[:, None]
  cas = rng.normal(0.0, 2.0, (b, t, n)).astype(np.float32)
  feats = rng.normal(0.0, 1.0, (b, t, e)).astype(np.float32)
  if feature_sign == "relu":
    feats = np.maximum(feats, 0.0)
  labels = (rng.random((b, n)) < 0.4).astype(np.float32)
  labels[np.arange(b), rng.integers(0, n, size=b)] = 1.0
  seg = ((rng.random((b, t, n)) < 0.15) & mask[..., None]
         & (labels[:, None, :] > 0)).astype(np.float32)
  seg[1] = 0.0  # a video with no labeled segment
  num_labeled = seg.max(axis=2).sum(axis=1).astype(np.int32)
  weight = rng.normal(0.0, 1.0, (n, e)).astype(np.float32)
  return dict(features=feats * mask[..., None], mask=mask, lengths=lengths.astype(np.int32),
              cas=cas * mask[..., None], video_labels=labels, segment_labels=seg,
              num_labeled=num_labeled, weight=weight)


def with_junk(batch, value):
  """The same batch with `value` written into every padded step."""
  out = dict(batch)
  pad = ~batch["mask"]
  for key in ("features", "cas", "segment_labels"):
    x = np.array(batch[key])
    x[pad] = value
    out[key] = x
  return out


# The equations as printed: dot similarity, sums not averaged, 1/N in eq. 4.
PRINTED = dict(classification_normalization="classes", propagation_similarity="dot",
               propagation_normalization="none", segment_normalization="none",
               topk_count="segments", loc_classification_weight=0.0)


def prop(features, cas, mask, method, *, grad_through_similarity=False, similarity="dot",
         normalization="none"):
  """``losses.propagation_loss`` with eq. 13 as printed unless told otherwise."""
  return losses.propagation_loss(features, cas, mask, method=method,
                                 grad_through_similarity=grad_through_similarity,
                                 similarity=similarity, normalization=normalization)


def sphere(features, cas, labels, mask, weight, margin):
  return losses.sphere_loss(features, cas, labels, mask, weight, margin=margin, classes="present")


def cls_printed(cas, labels, mask, k):
  return losses.classification_loss(cas, labels, mask, k, normalization="classes")


# ------------------------------------------------------------------ jitted fns
@pytest.fixture(scope="module")
def fns():
  return dict(
      topk_mean=jax.jit(losses.topk_mean),
      cls=jax.jit(cls_printed),
      norm=jax.jit(losses.normalized_cas),
      seg=jax.jit(functools.partial(losses.partial_segment_loss, normalization="none")),
      median=jax.jit(losses.masked_median),
      sphere=jax.jit(sphere, static_argnums=5),
      prop=jax.jit(prop, static_argnums=3,
                   static_argnames=("grad_through_similarity", "similarity",
                                    "normalization")),
      cls_labels=jax.jit(functools.partial(losses.classification_loss,
                                           normalization="labels")),
  )


# ------------------------------------------------------------------ top-k
def test_topk_k_matches_reference_and_hand_cases():
  lengths = np.array([1, 7, 16, 100, 750, 3, 40])
  q = np.array([0, 1, 2, 3, 0, 5, 20])
  for mode in ("labeled", "fixed"):
    got = np.asarray(losses.topk_k(lengths, q, mode=mode, ratio=8.0))
    np.testing.assert_array_equal(got, ref.topk_k(lengths, q, mode, 8.0))
    assert got.dtype == np.int32
  # Hand-computed: r = 2Q, Q = 0 falls back to r = 8.
  np.testing.assert_array_equal(losses.topk_k(lengths, q, mode="labeled", ratio=8.0),
                                [1, 3, 4, 16, 93, 1, 1])
  np.testing.assert_array_equal(losses.topk_k(lengths, q, mode="fixed", ratio=8.0),
                                [1, 1, 2, 12, 93, 1, 5])
  with pytest.raises(ValueError, match="topk mode"):
    losses.topk_k(lengths, q, mode="bogus", ratio=8.0)


def test_topk_mean_matches_reference(fns):
  for seed in range(3):
    b = random_batch(seed)
    k = np.random.default_rng(seed).integers(1, T + 3, size=B)  # some k > l: clipped
    got = fns["topk_mean"](b["cas"], b["mask"], k)
    np.testing.assert_allclose(got, ref.class_scores(b["cas"], b["lengths"], k),
                               rtol=RTOL, atol=1e-6)


# ------------------------------------------------------------ losses vs refs
@pytest.mark.parametrize("mode", ["labeled", "fixed"])
def test_classification_loss_matches_reference(fns, mode):
  for seed in range(4):
    b = random_batch(seed)
    k = losses.topk_k(b["lengths"], b["num_labeled"], mode=mode, ratio=3.0)
    got = fns["cls"](b["cas"], b["video_labels"], b["mask"], k)
    want = ref.classification_loss(b["cas"], b["video_labels"], b["lengths"],
                                   ref.topk_k(b["lengths"], b["num_labeled"], mode, 3.0))
    np.testing.assert_allclose(got, want, rtol=RTOL)


def test_classification_loss_label_normalization_matches_reference(fns):
  for seed in range(3):
    b = random_batch(seed + 5)
    k = losses.topk_k(b["lengths"], b["num_labeled"], mode="labeled", ratio=3.0)
    got = fns["cls_labels"](b["cas"], b["video_labels"], b["mask"], k)
    want = ref.classification_loss(b["cas"], b["video_labels"], b["lengths"],
                                   np.asarray(k), normalization="labels")
    np.testing.assert_allclose(got, want, rtol=RTOL)


def test_normalized_cas_matches_reference(fns):
  b = random_batch(0)
  a = np.asarray(fns["norm"](b["cas"], b["mask"]))
  np.testing.assert_allclose(a, ref.normalized_cas(b["cas"], b["lengths"]),
                             rtol=RTOL, atol=1e-7)
  np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-5)
  assert np.all(a[~b["mask"]] == 0)


def test_partial_segment_loss_matches_reference(fns):
  for seed in range(4):
    b = random_batch(seed)
    got = fns["seg"](b["cas"], b["segment_labels"], b["mask"])
    want = ref.partial_segment_loss(b["cas"], b["segment_labels"], b["lengths"])
    assert want > 0
    np.testing.assert_allclose(got, want, rtol=RTOL)


def test_labeled_run_lengths_hand_built():
  # One video, T = 8 (7 real), 2 classes; the run at t = 6..7 is cut by padding.
  u = np.zeros((1, 8, 2), np.int32)
  u[0, [1, 2, 3, 5, 6, 7], 0] = 1
  u[0, [0, 4], 1] = 1
  mask = np.arange(8)[None] < 7
  want = np.zeros((1, 8, 2), np.int32)
  want[0, [1, 2, 3], 0] = 3
  want[0, [5, 6], 0] = 2
  want[0, [0, 4], 1] = 1
  np.testing.assert_array_equal(jax.jit(losses.labeled_run_lengths)(u, mask), want)


def test_partial_segment_loss_per_instance_matches_reference():
  seg = jax.jit(functools.partial(losses.partial_segment_loss, normalization="instances"))
  for seed in range(4):
    b = random_batch(seed)
    # Widen every label into a run, so instances have several labeled segments.
    seed_labels = np.asarray(b["segment_labels"]) > 0
    u = seed_labels.copy()
    for shift in (1, 2):
      u[:, shift:] |= seed_labels[:, :-shift]
    u = np.where(np.asarray(b["mask"])[..., None], u, False).astype(np.float32)
    got = seg(b["cas"], u, b["mask"])
    want = ref.partial_segment_loss(b["cas"], u, b["lengths"], "instances")
    summed = ref.partial_segment_loss(b["cas"], u, b["lengths"], "none")
    assert 0 < want < summed
    np.testing.assert_allclose(got, want, rtol=RTOL)
    # Isolated labels (one-segment, points): both readings are the printed sum.
    one = np.where(np.arange(u.shape[1])[None, :, None] % 3 == 0, seed_labels, False)
    one = one.astype(np.float32)
    np.testing.assert_allclose(seg(b["cas"], one, b["mask"]),
                               ref.partial_segment_loss(b["cas"], one, b["lengths"], "none"),
                               rtol=RTOL)


def test_masked_median_is_numpy_median(fns):
  rng = np.random.default_rng(3)
  x = rng.random((B, T, N)).astype(np.float32)
  lengths = np.array([T, 1, 2, 5, 8])  # odd and even counts
  mask = np.arange(T)[None] < lengths[:, None]
  got = np.asarray(fns["median"](x, mask))
  for i, l in enumerate(lengths):
    np.testing.assert_allclose(got[i], np.median(x[i, :l], axis=0), rtol=1e-6)


def test_sphere_psi_matches_sphereface_definition():
  thetas = np.linspace(0.0, math.pi, 181)
  for m in (1, 2, 3, 4):
    got = np.asarray(losses.sphere_psi(jnp.cos(jnp.asarray(thetas, jnp.float32)), m))
    want = np.array([ref.sphere_psi(t, m) for t in thetas])
    np.testing.assert_allclose(got, want, atol=2e-4)
    assert np.all(np.diff(got) <= 1e-5)  # monotonically decreasing
    np.testing.assert_allclose([got[0], got[-1]], [1.0, 1.0 - 2 * m], atol=1e-5)


@pytest.mark.parametrize("margin", [1, 2, 4])
def test_sphere_loss_matches_reference(fns, margin):
  for seed in range(3):
    b = random_batch(seed + 10, feature_sign="any")
    got = fns["sphere"](b["features"], b["cas"], b["video_labels"], b["mask"],
                        b["weight"], margin)
    want = ref.sphere_loss(b["features"], b["cas"], b["video_labels"], b["lengths"],
                           b["weight"], margin)
    np.testing.assert_allclose(got, want, rtol=RTOL)


def test_sphere_loss_zero_features_is_log_n(fns):
  b = random_batch(1)
  zeros = np.zeros_like(b["features"])
  got = fns["sphere"](zeros, b["cas"], b["video_labels"], b["mask"], b["weight"], 4)
  per_video = b["video_labels"].sum(axis=1) * math.log(N)
  np.testing.assert_allclose(got, per_video.mean(), rtol=RTOL)
  grads = jax.jit(jax.grad(sphere, argnums=(0, 1, 4)), static_argnums=5)(
      zeros, b["cas"], b["video_labels"], b["mask"], b["weight"], 4)
  for g in grads:
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("method", losses.PROPAGATION_METHODS)
def test_propagation_loss_matches_reference(fns, method):
  for seed in range(3):
    b = random_batch(seed + 20)
    got = fns["prop"](b["features"], b["cas"], b["mask"], method)
    want = ref.propagation_loss(b["features"], b["cas"], b["lengths"])
    np.testing.assert_allclose(got, want, rtol=RTOL)


@pytest.mark.parametrize("method", losses.PROPAGATION_METHODS)
@pytest.mark.parametrize("similarity,normalization", [("cosine", "pairs"), ("cosine", "none"),
                                                      ("dot", "pairs")])
def test_propagation_loss_options_match_reference(fns, method, similarity, normalization):
  b = random_batch(31)
  b["features"][0, 1] = 0.0  # a zero row: cosine similarity 0, finite gradient
  got = fns["prop"](b["features"], b["cas"], b["mask"], method, similarity=similarity,
                    normalization=normalization)
  want = ref.propagation_loss(b["features"], b["cas"], b["lengths"], similarity,
                              normalization)
  np.testing.assert_allclose(got, want, rtol=RTOL)
  grad = jax.grad(lambda f: fns["prop"](f, b["cas"], b["mask"], method,
                                        grad_through_similarity=True,
                                        similarity=similarity,
                                        normalization=normalization))(b["features"])
  assert np.all(np.isfinite(grad))


def test_propagation_methods_agree_in_value_and_gradient():
  b = random_batch(7, feature_sign="any")
  # An offset in the CAS stresses the cancellation of the identity.
  cas = b["cas"] + 5.0 * b["mask"][..., None]
  results = {}
  for method in losses.PROPAGATION_METHODS:
    for through in (False, True):
      fn = jax.jit(jax.value_and_grad(
          functools.partial(prop, method=method,
                            grad_through_similarity=through),
          argnums=(0, 1)))
      results[method, through] = fn(b["features"], cas, b["mask"])
  for through in (False, True):
    v0, (gf0, gc0) = results["naive", through]
    np.testing.assert_allclose(v0, ref.propagation_loss(b["features"], cas, b["lengths"]),
                               rtol=RTOL)
    for method in ("dense", "factorized", "fused"):
      v, (gf, gc) = results[method, through]
      np.testing.assert_allclose(v, v0, rtol=RTOL)
      np.testing.assert_allclose(gc, gc0, rtol=1e-4, atol=1e-3 * np.abs(gc0).max())
      np.testing.assert_allclose(gf, gf0, rtol=1e-4, atol=1e-3 * np.abs(gf0).max())
    if not through:  # S is a constant: no gradient into f
      assert np.all(np.asarray(gf0) == 0)
    else:
      assert np.abs(gf0).max() > 0


def test_propagation_memory_factorized_linear_naive_quadratic():
  def temp_bytes(method, t):
    rng = np.random.default_rng(0)
    f = jnp.asarray(rng.random((2, t, 8)), jnp.float32)
    c = jnp.asarray(rng.normal(size=(2, t, 4)), jnp.float32)
    mask = jnp.ones((2, t), bool)
    fn = jax.value_and_grad(functools.partial(prop, method=method),
                            argnums=1)
    compiled = jax.jit(fn).lower(f, c, mask).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  naive = [temp_bytes("naive", t) for t in (64, 256)]
  fact = [temp_bytes("factorized", t) for t in (64, 256)]
  # 4x the length: quadratic -> ~16x, linear -> ~4x.
  assert naive[1] >= 10 * naive[0] > 0, naive
  assert fact[1] <= 5 * fact[0] + 1024, fact
  assert fact[1] * 20 < naive[1], (fact, naive)


def test_propagation_memory_fused_holds_no_feature_sized_temporary():
  """Gradient through cosine ``S``: ``factorized`` holds ``(B, T, E)`` intermediates
  (unit rows, their cotangents), ``fused`` only ``(B, T, N + 2)`` ones."""
  def temp_bytes(method, t):
    f = jnp.zeros((2, t, 256), jnp.float32)
    c = jnp.zeros((2, t, 4), jnp.float32)
    fn = jax.value_and_grad(functools.partial(
        prop, method=method, grad_through_similarity=True,
        similarity="cosine"), argnums=(0, 1))
    compiled = jax.jit(fn).lower(f, c, jnp.ones((2, t), bool)).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  f_growth = 2 * (8192 - 2048) * 256 * 4  # bytes of f added by 4x the length
  fact = temp_bytes("factorized", 8192) - temp_bytes("factorized", 2048)
  fused = temp_bytes("fused", 8192) - temp_bytes("fused", 2048)
  assert fact >= f_growth, (fact, f_growth)
  # (B, T, N + 2) arrays are (4 + 2) / 256 of f each; a copy of f would be 1.0.
  assert fused < 0.15 * f_growth, (fused, f_growth)


def test_similarity_matrix():
  rng = np.random.default_rng(0)
  f = rng.normal(size=(9, 5)).astype(np.float32)
  want = np.zeros((9, 9))
  want[:6, :6] = f[:6].astype(np.float64) @ f[:6].T.astype(np.float64)
  np.testing.assert_allclose(losses.similarity_matrix(f, 6, similarity="dot"), want,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(losses.similarity_matrix(f, np.arange(9) < 6, similarity="dot"), want,
                             rtol=1e-5, atol=1e-5)


# ------------------------------------------------------- padding invariance
PAD_BATCH = random_batch(5, feature_sign="any")


@pytest.fixture(scope="module")
def padding_fns():
  """name -> (jitted value_and_grad over (features, cas), its vmap), compiled once."""
  b = PAD_BATCH
  k = losses.topk_k(b["lengths"], b["num_labeled"], mode="labeled", ratio=8.0)
  raw = {
      "cls": lambda f, c, u, m: cls_printed(c, b["video_labels"], m, k),
      "seg": lambda f, c, u, m: losses.partial_segment_loss(c, u, m, normalization="none"),
      "sphere": lambda f, c, u, m: sphere(f, c, b["video_labels"], m,
                                                      b["weight"], 4),
      "prop": lambda f, c, u, m: prop(
          f, c, m, "factorized", grad_through_similarity=True),
      "prop_naive": lambda f, c, u, m: prop(
          f, c, m, "naive", grad_through_similarity=True),
      "prop_fused_cosine": lambda f, c, u, m: prop(
          f, c, m, "fused", grad_through_similarity=True, similarity="cosine"),
      "total": lambda f, c, u, m: losses.total_loss(
          {"features": f, "cas_cls": c, "cas_loc": 0.5 * c},
          {**b, "segment_labels": u, "mask": m}, weight=b["weight"],
          **loss_kwargs(**PRINTED, propagation_grad_through_similarity=True))[0],
  }
  out = {}
  for name, fn in raw.items():
    vg = jax.value_and_grad(fn, argnums=(0, 1))
    out[name] = (jax.jit(vg), jax.jit(jax.vmap(vg)))
  return out


@pytest.mark.parametrize("junk", [1e30, -3e38, np.nan])
@pytest.mark.slow
def test_padding_invariance_jit_and_vmap(padding_fns, junk):
  b = PAD_BATCH
  bad = with_junk(b, junk)
  args = lambda x: (x["features"], x["cas"], x["segment_labels"], b["mask"])
  stack = lambda key: np.stack([b[key], bad[key]])
  for name, (vg, vmapped) in padding_fns.items():
    v_clean, g_clean = vg(*args(b))
    v_bad, g_bad = vg(*args(bad))
    np.testing.assert_allclose(v_bad, v_clean, rtol=1e-6, err_msg=name)
    assert np.isfinite(v_clean), name
    for gc, gb in zip(g_clean, g_bad):
      gb = np.asarray(gb)
      assert np.all(gb[~b["mask"]] == 0), name
      np.testing.assert_allclose(gb, gc, rtol=1e-5, atol=1e-6, err_msg=name)
    # vmap over a stack of (clean, junk) copies of the batch.
    vv, vgr = vmapped(stack("features"), stack("cas"), stack("segment_labels"),
                      np.stack([b["mask"], b["mask"]]))
    # The junk copy gives the clean copy's value; against the unbatched value
    # only the order of a float32 sum differs (vmap reduces in another order).
    np.testing.assert_allclose(vv[1], vv[0], rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(vv, [v_clean, v_clean], rtol=1e-5, err_msg=name)
    for g, gc in zip(vgr, g_clean):
      g = np.asarray(g)
      assert np.all(g[:, ~b["mask"]] == 0), name
      np.testing.assert_allclose(g[1], gc, rtol=1e-5, atol=1e-6, err_msg=name)


def test_empty_video_is_left_out_of_the_mean(fns):
  b = random_batch(2)
  lengths = b["lengths"].copy()
  lengths[-1] = 0
  mask = np.arange(T)[None] < lengths[:, None]
  keep = slice(0, B - 1)
  got = fns["seg"](b["cas"], b["segment_labels"] * mask[..., None], mask)
  want = fns["seg"](b["cas"][keep], b["segment_labels"][keep], b["mask"][keep])
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert losses.topk_mean(b["cas"], mask, np.ones(B, np.int32))[-1].tolist() == [0.0] * N


# ------------------------------------------------------------ total (eq. 1)
@pytest.mark.slow
def test_total_loss_weights_and_switches():
  b = random_batch(9)
  rng = np.random.default_rng(1)
  out = {"features": b["features"], "cas_cls": b["cas"],
         "cas_loc": (rng.normal(size=b["cas"].shape) * b["mask"][..., None]).astype(np.float32)}
  k = ref.topk_k(b["lengths"], b["num_labeled"])
  want = {
      "classification": ref.classification_loss(b["cas"], b["video_labels"], b["lengths"], k),
      "segment": ref.partial_segment_loss(out["cas_loc"], b["segment_labels"], b["lengths"]),
      "sphere": ref.sphere_loss(b["features"], out["cas_loc"], b["video_labels"],
                                b["lengths"], b["weight"], 4),
      "propagation": ref.propagation_loss(b["features"], out["cas_loc"], b["lengths"]),
  }
  scale = {"classification": 1.0, "segment": 0.1, "sphere": 1e-4, "propagation": 0.02}
  printed = loss_kwargs(**PRINTED)
  total, terms = jax.jit(functools.partial(losses.total_loss, weight=b["weight"],
                                           **printed))(out, b)
  for name, value in want.items():
    np.testing.assert_allclose(terms[name], value, rtol=RTOL, err_msg=name)
  np.testing.assert_allclose(total, sum(scale[n] * want[n] for n in want), rtol=RTOL)
  np.testing.assert_allclose(terms["total"], total)

  # Weight from the outputs dict, and every switch.
  flags = {"classification": "use_classification", "segment": "use_segment",
           "sphere": "use_sphere", "propagation": "use_propagation"}
  for off in flags:
    kwargs = {**printed, flags[off]: False}
    t_off, terms_off = jax.jit(functools.partial(losses.total_loss, **kwargs))(
        {**out, "sphere_weight": b["weight"]}, b)
    assert float(terms_off[off]) == 0.0
    np.testing.assert_allclose(
        t_off, sum(scale[n] * want[n] for n in want if n != off), rtol=RTOL)
    # Logged but not trained on.
    t_log, terms_log = jax.jit(functools.partial(
        losses.total_loss, weight=b["weight"], log_disabled_terms=True, **kwargs))(out, b)
    np.testing.assert_allclose(terms_log[off], want[off], rtol=RTOL)
    np.testing.assert_allclose(t_log, t_off, rtol=1e-6)
  # Classification alone: no gradient reaches C_loc or f.
  g = jax.jit(jax.grad(lambda o: losses.total_loss(
      o, b, **{**printed, "use_segment": False, "use_sphere": False,
               "use_propagation": False})[0]))(out)
  assert np.all(np.asarray(g["cas_loc"]) == 0) and np.all(np.asarray(g["features"]) == 0)
  assert np.abs(g["cas_cls"]).max() > 0
  with pytest.raises(ValueError, match="sphere"):
    losses.total_loss(out, b, **printed)


def test_classification_on_both_heads():
  """``loc_classification_weight = w``: eq. 2-4 on ``C_cls`` plus ``w`` times eq.
  2-4 on ``C_loc``, each against the float64 reference; its gradient reaches both."""
  b = random_batch(4)
  rng = np.random.default_rng(7)
  out = {"features": b["features"], "cas_cls": b["cas"],
         "cas_loc": (rng.normal(size=b["cas"].shape) * b["mask"][..., None]).astype(np.float32)}
  k = ref.topk_k(b["lengths"], b["num_labeled"])
  w = 0.3
  want = (ref.classification_loss(b["cas"], b["video_labels"], b["lengths"], k)
          + w * ref.classification_loss(out["cas_loc"], b["video_labels"], b["lengths"], k))
  only_cls = {**PRINTED, "use_segment": False, "use_sphere": False, "use_propagation": False}
  fn = lambda o, weight: losses.total_loss(o, b, **loss_kwargs(
      **{**only_cls, "loc_classification_weight": weight}))
  total, terms = jax.jit(lambda o: fn(o, w))(out)
  np.testing.assert_allclose(terms["classification"], want, rtol=RTOL)
  np.testing.assert_allclose(total, want, rtol=RTOL)
  g = jax.jit(jax.grad(lambda o: fn(o, w)[0]))(out)
  # The C_loc gradient is w times that of eq. 4 on C_loc alone.
  g_loc = jax.grad(lambda c: losses.classification_loss(
      c, b["video_labels"], b["mask"], k, normalization="classes"))(out["cas_loc"])
  np.testing.assert_allclose(g["cas_loc"], w * g_loc, rtol=1e-5, atol=1e-9)
  assert np.abs(np.asarray(g["cas_loc"])).max() > 0
  # loc_classification_topk_ratio = r: C_loc's top-k takes k = max(1, floor(l / r)).
  k_half = ref.topk_k(b["lengths"], b["num_labeled"], mode="fixed", ratio=2.0)
  assert np.any(k_half != k)  # the two k differ on this batch
  _, terms_r = losses.total_loss(out, b, **loss_kwargs(
      **{**only_cls, "loc_classification_weight": w, "loc_classification_topk_ratio": 2.0}))
  np.testing.assert_allclose(terms_r["classification"], ref.classification_loss(
      b["cas"], b["video_labels"], b["lengths"], k) + w * ref.classification_loss(
          out["cas_loc"], b["video_labels"], b["lengths"], k_half), rtol=RTOL)
  # Weight 0: eq. 4 on C_cls alone, and C_loc gets no gradient from it.
  _, terms0 = fn(out, 0.0)
  np.testing.assert_allclose(terms0["classification"], want - w * ref.classification_loss(
      out["cas_loc"], b["video_labels"], b["lengths"], k), rtol=RTOL)


def test_total_loss_takes_the_loss_config_by_its_field_names():
  c = config_lib.base_config()
  c.loss.use_sphere = False
  b = random_batch(0)
  out = {"features": b["features"], "cas_cls": b["cas"], "cas_loc": b["cas"]}
  _, terms = losses.total_loss(out, b, **c.loss)  # no weight needed without the sphere term
  assert float(terms["sphere"]) == 0.0
  # A config missing a field fails naming it; no default runs in its place.
  del c.loss["propagation_similarity"]
  with pytest.raises(TypeError, match="propagation_similarity"):
    losses.total_loss(out, b, **c.loss)
  # Unknown choices are rejected where they are used.
  with pytest.raises(ValueError, match="propagation method"):
    losses.total_loss(out, b, **loss_kwargs(propagation_method="sparse", use_sphere=False))


# ------------------------------------------------ numerical gradient checks
def edge_batch():
  """float64 edge cases in one batch of T = 40.

  video 0: one segment; 1: all-zero features; 2: no labeled segment (Q = 0);
  3: two classes; 4: T >> k (l = 40, Q = 20 -> k = 1).
  """
  t, n, e = 40, 3, 4
  rng = np.random.default_rng(42)
  lengths = np.array([1, 7, 12, 20, 40])
  mask = np.arange(t)[None] < lengths[:, None]
  cas = rng.normal(0, 1.5, (5, t, n)) * mask[..., None]
  feats = np.abs(rng.normal(0, 1, (5, t, e))) * mask[..., None]
  feats[1] = 0.0
  labels = np.zeros((5, n))
  labels[[0, 1, 2, 3, 3, 4], [0, 1, 2, 0, 2, 1]] = 1.0
  seg = np.zeros((5, t, n))
  seg[0, 0, 0] = 1
  seg[1, [2, 5], 1] = 1
  seg[3, [3, 4, 15], [0, 0, 2]] = 1
  seg[4, np.arange(0, 40, 2), 1] = 1
  num_labeled = seg.max(axis=2).sum(axis=1).astype(np.int32)
  weight = rng.normal(0, 1, (n, e))
  return dict(features=feats, cas=cas, mask=mask, lengths=lengths, video_labels=labels,
              segment_labels=seg, num_labeled=num_labeled, weight=weight)


@pytest.mark.slow
def test_gradients_numerically_on_edge_cases():
  b = edge_batch()
  def check(fn, args):
    check_grads(jax.jit(fn), args, order=1, modes=("rev",), eps=1e-6)

  with jax.enable_x64(True):
    f, c, w = (jnp.asarray(b[k], jnp.float64) for k in ("features", "cas", "weight"))
    mask = jnp.asarray(b["mask"])
    y = jnp.asarray(b["video_labels"])
    u = jnp.asarray(b["segment_labels"])
    k = losses.topk_k(b["lengths"], b["num_labeled"], mode="labeled", ratio=8.0)
    np.testing.assert_array_equal(k, [1, 1, 1, 3, 1])

    check(lambda c: cls_printed(c, y, mask, k), (c,))
    check(lambda c: losses.partial_segment_loss(c, u, mask, normalization="none"), (c,))
    # F^n = 0 for video 1: smooth in (C_loc, W) there; f checked on the others.
    check(lambda c, w: sphere(f, c, y, mask, w, 4), (c, w))
    others = np.array([0, 2, 3, 4])
    check(lambda f: sphere(f, c[others], y[others], mask[others], w, 4),
          (f[others],))
    for method in losses.PROPAGATION_METHODS:
      check(lambda f, c: prop(f, c, mask, method,
                                                 grad_through_similarity=True), (f, c))
    sphere_jit = jax.jit(sphere, static_argnums=5)
    g = jax.jit(jax.grad(lambda f: sphere_jit(f, c, y, mask, w, 4)))(f)
    assert np.all(np.isfinite(g)) and np.abs(g[0]).max() > 0
    # float64 values against the references, too.
    np.testing.assert_allclose(sphere_jit(f, c, y, mask, w, 4),
                               ref.sphere_loss(f, c, y, b["lengths"], w, 4), rtol=1e-10)
    np.testing.assert_allclose(jax.jit(functools.partial(
        losses.partial_segment_loss, normalization="none"))(c, u, mask),
                               ref.partial_segment_loss(c, u, b["lengths"]), rtol=1e-10)
    cls = jax.jit(cls_printed)
    np.testing.assert_allclose(cls(c, y, mask, k),
                               ref.classification_loss(c, y, b["lengths"], np.asarray(k)),
                               rtol=1e-10)
    # T >> k: only the top-1 step of each class of video 4 gets gradient.
    gc = jax.jit(jax.grad(cls))(c, y, mask, k)
    assert np.all(np.count_nonzero(np.asarray(gc[4]), axis=0) == 1)
    # One-segment video: a = 1, so its labeled segment costs nothing.
    np.testing.assert_allclose(losses.normalized_cas(c, mask)[0, 0], 1.0)


def test_similarity_matrix_cosine():
  rng = np.random.default_rng(4)
  f = rng.normal(size=(7, 5)).astype(np.float32)
  f[2] = 0.0  # a zero row has similarity 0 with everything
  got = np.asarray(losses.similarity_matrix(f, 5, similarity="cosine"))
  want = np.zeros((7, 7))
  for i in range(5):
    for j in range(5):
      ni, nj = np.linalg.norm(f[i]), np.linalg.norm(f[j])
      if ni > 0 and nj > 0:
        want[i, j] = float(np.dot(f[i], f[j])) / (ni * nj)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="similarity"):
    losses.similarity_matrix(f, 5, similarity="bogus")
