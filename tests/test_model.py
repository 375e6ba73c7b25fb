"""Tests of jaxseg.model.SegmentModel (paper Fig. 3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import losses
from jaxseg import model as model_lib
from tests.helpers import loss_kwargs

B, T, D, E, N = 3, 10, 7, 6, 5


@pytest.fixture(scope="module")
def setup():
  m = model_lib.SegmentModel(num_classes=N, embed_dim=E, dropout_rate=0.5,
                             compute_dtype="float32", localization_embedding="shared")
  variables = model_lib.init_params(m, jax.random.key(0), D)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(B, T, D)).astype(np.float32)
  lengths = np.array([T, 4, 1])
  mask = np.arange(T)[None] < lengths[:, None]
  x = x * mask[..., None]
  apply = jax.jit(m.apply, static_argnames="deterministic")
  return m, variables, x, mask, apply


def test_parameter_shapes(setup):
  _, variables, *_ = setup
  shapes = jax.tree.map(jnp.shape, variables["params"])
  assert shapes == {
      "embedding": {"kernel": (D, E), "bias": (E,)},
      "cls_head": {"kernel": (E, N), "bias": (N,)},
      "loc_head": {"kernel": (E, N), "bias": (N,)},
      "sphere_weight": (N, E),
  }
  assert model_lib.sphere_weight(variables).shape == (N, E)
  assert model_lib.sphere_weight(variables["params"]) is variables["params"]["sphere_weight"]


def test_outputs_match_hand_computation(setup):
  _, variables, x, mask, apply = setup
  out = apply(variables, x, mask, deterministic=True)
  assert set(out) == {"features", "cas_cls", "cas_loc", "clean_features"}
  assert out["features"].shape == (B, T, E)
  assert out["cas_cls"].shape == out["cas_loc"].shape == (B, T, N)
  p = jax.tree.map(np.asarray, variables["params"])
  f = np.maximum(x @ p["embedding"]["kernel"] + p["embedding"]["bias"], 0.0)
  m = mask[..., None]
  np.testing.assert_allclose(out["features"], f * m, rtol=1e-5, atol=1e-6)
  for head in ("cls", "loc"):
    want = (f @ p[f"{head}_head"]["kernel"] + p[f"{head}_head"]["bias"]) * m
    np.testing.assert_allclose(out[f"cas_{head}"], want, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(out[f"cas_{head}"])[~mask] == 0)


def test_padding_junk_changes_nothing_and_gets_no_gradient(setup):
  _, variables, x, mask, apply = setup
  bad = x.copy()
  bad[~mask] = np.nan
  key = jax.random.key(3)
  clean = apply(variables, x, mask, deterministic=False, rngs={"dropout": key})
  junk = apply(variables, bad, mask, deterministic=False, rngs={"dropout": key})
  for name in clean:
    np.testing.assert_array_equal(clean[name], junk[name])
    assert np.all(np.asarray(junk[name])[~mask] == 0)

  def loss(params, feats):
    out = apply({"params": params}, feats, mask, deterministic=True)
    return (jnp.sum(out["cas_cls"] ** 2) + jnp.sum(out["cas_loc"])
            + jnp.sum(out["features"] ** 2))

  g_clean = jax.grad(loss, argnums=(0, 1))(variables["params"], x)
  g_junk = jax.grad(loss, argnums=(0, 1))(variables["params"], bad)
  for a, b in zip(jax.tree.leaves(g_clean), jax.tree.leaves(g_junk)):
    np.testing.assert_array_equal(a, b)
  assert np.all(np.asarray(g_junk[1])[~mask] == 0)


def test_dropout(setup):
  _, variables, x, mask, apply = setup
  det = apply(variables, x, mask, deterministic=True)["features"]
  a = apply(variables, x, mask, deterministic=False, rngs={"dropout": jax.random.key(1)})
  b = apply(variables, x, mask, deterministic=False, rngs={"dropout": jax.random.key(2)})
  fa = np.asarray(a["features"])
  # Kept units are scaled by 1 / (1 - rate), the others zeroed.
  kept = fa != 0
  np.testing.assert_allclose(fa[kept], 2.0 * np.asarray(det)[kept], rtol=1e-5)
  assert np.any((np.asarray(det) != 0) & ~kept)
  assert not np.array_equal(fa, np.asarray(b["features"]))


def test_embed_dim_default_and_loss_pipeline():
  m = model_lib.SegmentModel(num_classes=N, embed_dim=-1, dropout_rate=0.7,
                             compute_dtype="float32", localization_embedding="shared")
  variables = model_lib.init_params(m, jax.random.key(1), D)
  assert model_lib.sphere_weight(variables).shape == (N, D)
  assert variables["params"]["embedding"]["kernel"].shape == (D, D)
  rng = np.random.default_rng(1)
  mask = np.arange(T)[None] < np.array([T, 3])[:, None]
  batch = dict(features=rng.normal(size=(2, T, D)).astype(np.float32) * mask[..., None],
               mask=mask, lengths=mask.sum(1).astype(np.int32),
               video_labels=np.eye(N, dtype=np.float32)[[0, 2]],
               segment_labels=np.zeros((2, T, N), np.float32),
               num_labeled=np.array([1, 1], np.int32))
  batch["segment_labels"][0, 2, 0] = batch["segment_labels"][1, 1, 2] = 1

  def loss(params):
    out = m.apply({"params": params}, batch["features"], batch["mask"],
                  deterministic=False, rngs={"dropout": jax.random.key(0)})
    return losses.total_loss(out, batch, weight=model_lib.sphere_weight(params),
                             **loss_kwargs())[0]

  value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
  assert np.isfinite(value)
  for name, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)), name
  assert np.abs(grads["sphere_weight"]).max() > 0
  with pytest.raises(ValueError, match="SegmentModel"):
    m.apply(variables, batch["features"], batch["mask"][:, :3], deterministic=True)


def test_bfloat16_compute_matches_float32_and_keeps_float32_interfaces(setup):
  """Mixed precision: same parameters (float32), bf16 matmuls, float32 outputs."""
  _, variables, x, mask, apply = setup
  m16 = model_lib.SegmentModel(num_classes=N, embed_dim=E, dropout_rate=0.5,
                               compute_dtype="bfloat16", localization_embedding="shared")
  v16 = model_lib.init_params(m16, jax.random.key(0), D)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(v16)):
    assert b.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)  # the same init: a checkpoint serves both
  want = apply(variables, x, mask, deterministic=True)
  got = jax.jit(m16.apply, static_argnames="deterministic")(variables, x, mask,
                                                            deterministic=True)
  # float64 NumPy forward pass: bf16 keeps 8 bits of mantissa, ~0.4% per rounding.
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  f = np.maximum(x @ p["embedding"]["kernel"] + p["embedding"]["bias"], 0) * mask[..., None]
  ref = {"features": f,
         "cas_cls": (f @ p["cls_head"]["kernel"] + p["cls_head"]["bias"]) * mask[..., None],
         "cas_loc": (f @ p["loc_head"]["kernel"] + p["loc_head"]["bias"]) * mask[..., None]}
  for key in ("features", "cas_cls", "cas_loc"):
    assert got[key].dtype == jnp.float32, key
    scale = np.abs(ref[key]).max()
    np.testing.assert_allclose(want[key], ref[key], atol=1e-5 * scale, err_msg=key)
    err = np.abs(np.asarray(got[key]) - ref[key]).max()
    assert 0 < err <= 2e-2 * scale, (key, err, scale)  # rounded, but only by bf16
    assert not np.asarray(got[key])[~mask].any(), key


def test_bad_compute_dtype_is_rejected():
  m = model_lib.SegmentModel(num_classes=N, embed_dim=E, dropout_rate=0.5,
                             compute_dtype="float16", localization_embedding="shared")
  with pytest.raises(ValueError, match="compute_dtype"):
    model_lib.init_params(m, jax.random.key(0), D)


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_dropout_rng_impls_drop_at_the_configured_rate(impl):
  """model.dropout_rng: either key impl drops about dropout_rate of f, with its own bits."""
  m = model_lib.SegmentModel(num_classes=N, embed_dim=64, dropout_rate=0.7,
                             compute_dtype="float32", localization_embedding="shared")
  variables = model_lib.init_params(m, jax.random.key(0), D)
  x = np.abs(np.random.default_rng(1).normal(size=(4, 50, D))).astype(np.float32)
  mask = np.ones((4, 50), bool)
  clean = m.apply(variables, x, mask, deterministic=True)["features"]
  outs = [m.apply(variables, x, mask, deterministic=False,
                  rngs={"dropout": jax.random.key(s, impl=impl)})["features"] for s in (0, 1)]
  alive = np.asarray(clean) > 0
  kept = (np.asarray(outs[0]) != 0)[alive].mean()
  assert 0.25 < kept < 0.35  # keep rate 1 - 0.7
  # Kept units are scaled by 1 / keep rate; different keys give different masks.
  np.testing.assert_allclose(np.asarray(outs[0])[np.asarray(outs[0]) != 0],
                             (np.asarray(clean) / 0.3)[np.asarray(outs[0]) != 0], rtol=1e-5)
  assert np.any((np.asarray(outs[0]) != 0) != (np.asarray(outs[1]) != 0))


def _loc_grads(mode, x, mask):
  m = model_lib.SegmentModel(num_classes=N, embed_dim=E, dropout_rate=0.0,
                             compute_dtype="float32", localization_embedding=mode)
  params = model_lib.init_params(m, jax.random.key(3), D)["params"]
  out = m.apply({"params": params}, x, mask, deterministic=True)
  grads = {}
  for head in ("cas_loc", "cas_cls", "features"):
    loss = lambda p, head=head: jnp.sum(
        m.apply({"params": p}, x, mask, deterministic=True)[head] ** 2)
    grads[head] = jax.tree.map(np.asarray, jax.grad(loss)(params))
  return params, out, grads


def test_localization_embedding_routes_the_gradients():
  """model.localization_embedding: "detached" gives the outputs of "shared",
  but a loss on C_loc trains the loc head only; "separate" gives C_loc (and
  the features the localization losses use) an embedding of its own, which a
  loss on C_cls never reaches, and C_cls is the shared model's C_cls."""
  rng = np.random.default_rng(2)
  x = np.abs(rng.normal(size=(2, 12, D))).astype(np.float32)
  mask = np.ones((2, 12), bool)
  mask[1, 7:] = False
  p_sh, out_sh, g_sh = _loc_grads("shared", x, mask)
  p_de, out_de, g_de = _loc_grads("detached", x, mask)
  p_se, out_se, g_se = _loc_grads("separate", x, mask)
  for key in ("features", "cas_cls", "cas_loc", "clean_features"):
    np.testing.assert_array_equal(out_sh[key], out_de[key])
  assert np.abs(g_sh["cas_loc"]["embedding"]["kernel"]).max() > 0
  assert not g_de["cas_loc"]["embedding"]["kernel"].any()
  np.testing.assert_allclose(g_de["cas_loc"]["loc_head"]["kernel"],
                             g_sh["cas_loc"]["loc_head"]["kernel"], rtol=1e-6)
  np.testing.assert_array_equal(g_de["cas_cls"]["embedding"]["kernel"],
                                g_sh["cas_cls"]["embedding"]["kernel"])
  # "separate": a second embedding of the same shape; C_cls as the shared model's
  # from the same first embedding, C_loc and f from the second (NumPy reference).
  assert set(p_se) == set(p_sh) | {"loc_embedding"}
  relu = lambda v: np.maximum(v, 0.0)
  dense = lambda v, p: v @ np.asarray(p["kernel"]) + np.asarray(p["bias"])
  xm = np.where(mask[..., None], x, 0.0)
  f_cls = relu(dense(xm, p_se["embedding"]))
  f_loc = relu(dense(xm, p_se["loc_embedding"]))
  np.testing.assert_allclose(out_se["cas_cls"][mask],
                             dense(f_cls, p_se["cls_head"])[mask], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out_se["cas_loc"][mask],
                             dense(f_loc, p_se["loc_head"])[mask], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out_se["features"][mask], f_loc[mask], rtol=1e-5, atol=1e-6)
  assert not g_se["cas_cls"]["loc_embedding"]["kernel"].any()
  assert not g_se["cas_loc"]["embedding"]["kernel"].any()
  assert not g_se["features"]["embedding"]["kernel"].any()
  assert np.abs(g_se["cas_loc"]["loc_embedding"]["kernel"]).max() > 0


def test_bad_localization_embedding_is_rejected():
  m = model_lib.SegmentModel(num_classes=N, embed_dim=E, dropout_rate=0.5,
                             compute_dtype="float32", localization_embedding="own")
  with pytest.raises(ValueError, match="localization_embedding"):
    model_lib.init_params(m, jax.random.key(0), D)
