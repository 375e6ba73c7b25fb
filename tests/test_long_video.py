"""A single 20,000-segment video: evaluation and the four losses in bounded memory.

With ``D = E = 16`` features and ``N = 4`` classes, a ``T x T`` float32 matrix
at ``T = 20,000`` would take 1.6 GB; nothing here may come near it. The model
is per-segment and the losses are factorized (eq. 13 never forms ``S``), so
the video is evaluated whole, without chunking. Memory is measured with XLA's
own accounting of the compiled programs (``memory_analysis()``), values are
checked against float64 NumPy references.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from jaxseg import evaluate
from jaxseg import rules as rules_lib
from jaxseg import inference
from jaxseg import losses
from jaxseg import state as state_lib
from jaxseg import train
from jaxseg.data import batching
from jaxseg.data.video import Dataset, Instance, Video
from tests import reference_losses as ref

# End-to-end: trains, runs subprocesses or full-size networks (pytest -m "not slow"
# skips the module).
pytestmark = pytest.mark.slow


T = 20_000  # segments of the video
LENGTH = 19_990  # real segments of the loss input (the rest is padding)
E, N = 16, 4
SQUARE_BYTES = 4 * T * T  # one float32 T x T matrix


def _loss_kwargs():
  return test_config.get_config().loss.to_dict()


def _make_loss_inputs():
  """``f, C_cls, C_loc, W`` and the batch of one 20,000-step video (10 padded steps)."""
  rng = np.random.default_rng(0)
  f = np.maximum(rng.standard_normal((1, T, E)), 0).astype(np.float32)  # after ReLU
  cas_cls = rng.standard_normal((1, T, N)).astype(np.float32)
  cas_loc = rng.standard_normal((1, T, N)).astype(np.float32)
  mask = np.zeros((1, T), bool)
  mask[0, :LENGTH] = True
  u = np.zeros((1, T, N), np.float32)
  u[0, 123, 0] = u[0, 15_000, 2] = 1.0
  batch = {"mask": mask, "lengths": np.array([LENGTH], np.int32),
           "video_labels": np.array([[1, 0, 1, 0]], np.float32), "segment_labels": u,
           "num_labeled": np.array([2], np.int32)}
  weight = rng.standard_normal((N, E)).astype(np.float32)
  return f, cas_cls, cas_loc, weight, batch


@pytest.fixture(scope="module")
def loss_inputs():
  return _make_loss_inputs()


@pytest.fixture(scope="module")
def compiled_loss(loss_inputs):
  """The jitted value_and_grad of the four-term loss at T = 20,000, compiled once."""
  f, cas_cls, cas_loc, weight, batch = loss_inputs
  return jax.jit(_loss_fn(**_loss_kwargs())).lower(f, cas_cls, cas_loc, weight, batch).compile()


def _loss_fn(**kwargs):
  """``(f, C_cls, C_loc, W, batch) -> ((total, terms), grads of the first four)``."""
  def fn(f, cas_cls, cas_loc, weight, batch):
    out = {"features": f, "cas_cls": cas_cls, "cas_loc": cas_loc}
    return losses.total_loss(out, batch, weight=weight, **kwargs)
  return jax.value_and_grad(fn, argnums=(0, 1, 2, 3), has_aux=True)


def _propagation_reference(f, c, similarity, normalization):
  """Eq. 13 summed over classes, float64, ``S`` formed block by block from its rows.

  ``sum_ij S_ij (c_i - c_j)^2`` with the square expanded per row ``i``:
  ``c_i^2 sum_j S_ij - 2 c_i sum_j S_ij c_j + sum_j S_ij c_j^2`` (blocks of
  rows keep the ``S`` slice at 500 x l).
  """
  f = np.asarray(f, np.float64)
  c = np.asarray(c, np.float64)
  if similarity == "cosine":
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    f = np.divide(f, norm, out=np.zeros_like(f), where=norm > 0)
  total = 0.0
  for start in range(0, f.shape[0], 500):
    s = f[start:start + 500] @ f.T  # (500, l) rows of S
    ci = c[start:start + 500]
    total += np.sum(ci ** 2 * s.sum(axis=1, keepdims=True) - 2 * ci * (s @ c) + s @ (c ** 2))
  if normalization == "pairs":
    total /= f.shape[0] ** 2
  return total


def test_four_term_loss_and_gradient_at_20k_in_linear_memory(loss_inputs, compiled_loss):
  f, cas_cls, cas_loc, weight, batch = loss_inputs
  kwargs = _loss_kwargs()
  assert kwargs["propagation_method"] == "fused"
  compiled = compiled_loss
  temp = compiled.memory_analysis().temp_size_in_bytes
  # Far below one T x T matrix (the dense form of eq. 13 needs ~1.5 GiB here);
  # measured: 3.9 MiB, 204 bytes per segment, the sorts of eq. 2 and of the
  # median of eq. 7 included.
  assert temp < SQUARE_BYTES / 100, f"XLA temp {temp / 2**20:.1f} MiB"
  assert temp < 1024 * T, f"XLA temp {temp / T:.0f} bytes per segment"

  (total, terms), grads = compiled(f, cas_cls, cas_loc, weight, batch)
  lengths = [LENGTH]
  real = slice(0, LENGTH)
  q = (batch["num_labeled"] if kwargs["topk_count"] == "segments"
       else ref.labeled_instances(batch["segment_labels"], lengths))
  k = ref.topk_k(lengths, q, mode=kwargs["topk_mode"],
                 ratio=kwargs["topk_ratio"])
  expected = {
      "classification": ref.classification_loss(
          cas_cls, batch["video_labels"], lengths, k,
          normalization=kwargs["classification_normalization"]),
      "segment": ref.partial_segment_loss(cas_loc, batch["segment_labels"], lengths,
                                          kwargs["segment_normalization"]),
      "sphere": ref.sphere_loss(f, cas_loc, batch["video_labels"], lengths, weight,
                                kwargs["margin"]),
      "propagation": _propagation_reference(
          f[0, real], cas_loc[0, real], kwargs["propagation_similarity"],
          kwargs["propagation_normalization"]),
  }
  for name, value in expected.items():
    # float32 sums over 20k steps (measured: within 1e-7 relative).
    assert float(terms[name]) == pytest.approx(value, rel=1e-5), name
  want_total = (expected["classification"] + kwargs["alpha"] * expected["segment"]
                + kwargs["beta"] * expected["sphere"] + kwargs["gamma"] * expected["propagation"])
  assert float(total) == pytest.approx(want_total, rel=1e-5)
  for g in grads:
    g = np.asarray(g)
    assert np.all(np.isfinite(g))
  for g in grads[:3]:  # f, C_cls, C_loc: padded steps get exactly zero gradient
    assert not np.any(np.asarray(g)[0, LENGTH:])
    assert np.any(np.asarray(g)[0, :LENGTH])


def test_loss_memory_grows_linearly_with_length(loss_inputs, compiled_loss):
  f, cas_cls, cas_loc, weight, batch = loss_inputs
  quarter = T // 4
  small = {k: (v[:, :quarter] if np.ndim(v) >= 2 and np.shape(v)[1] == T else v)
           for k, v in batch.items()}
  small["lengths"] = np.array([quarter], np.int32)
  small["mask"] = np.ones((1, quarter), bool)
  small["num_labeled"] = np.array([int(small["segment_labels"].max(axis=2).sum())], np.int32)
  args = (f[:, :quarter], cas_cls[:, :quarter], cas_loc[:, :quarter], weight)
  temp_small = jax.jit(_loss_fn(**_loss_kwargs())).lower(
      *args, small).compile().memory_analysis().temp_size_in_bytes
  temp_full = compiled_loss.memory_analysis().temp_size_in_bytes
  # 4x the length: 4x the memory (16x if anything were quadratic).
  assert 3.5 < temp_full / temp_small < 4.5, (temp_small, temp_full)


def _long_video(rng):
  """One 20,000-segment test video (I3D rate: 3.6 hours) with three actions."""
  feats = rng.standard_normal((T, E)).astype(np.float32) * 0.1
  instances = [Instance(100.0, 160.0, 0), Instance(5000.0, 5100.0, 1),
               Instance(9000.0, 9050.0, 0)]
  rate = 25.0 / 16.0
  for inst in instances:  # give the actions a feature signature
    feats[int(inst.start * rate):int(inst.end * rate), inst.label] += 2.0
  return Video("long", "test", feats, rate, T / rate, instances)


def test_evaluating_one_20k_segment_video():
  config = test_config.get_config()
  rng = np.random.default_rng(1)
  video = _long_video(rng)
  dataset = Dataset([f"class{i}" for i in range(N)], [video])
  model = state_lib.make_model(config, E, N)
  params = state_lib.init_state(config, model, state_lib.make_optimizer(config), E).params
  apply_fn = evaluate.make_apply_fn(model)

  # The whole video is one padded row; no chunking: XLA's temporaries stay
  # a small multiple of the (T, D + 3N) inputs and outputs.
  t_pad = batching.bucket_length(T, config.train.length_buckets)
  x = jnp.zeros((1, t_pad, E))
  m = jnp.ones((1, t_pad), bool)
  fwd = apply_fn.lower({"params": params}, x, m).compile().memory_analysis()
  out = jax.eval_shape(apply_fn, {"params": params}, x, m)
  scores = inference.video_scores.lower(
      out["cas_cls"], out["cas_loc"], m, jnp.ones((1,), jnp.int32),
      score_source=config.inference.score_source,
      contrast_loc_weight=config.inference.contrast_loc_weight).compile().memory_analysis()
  for mem in (fwd, scores):
    assert mem.temp_size_in_bytes < 16 * t_pad * (E + 3 * N) * 4

  res = evaluate.evaluate_params(config, model, params, dataset, apply_fn=apply_fn,
                                rules=rules_lib.from_config(config.inference, "jaxseg"),
                              with_cas=True)
  dets = res["predictions"]["results"]["long"]
  assert 0 < len(dets) <= config.inference.max_proposals_per_video
  for d in dets:
    assert math.isfinite(d["score"])
    assert 0.0 <= d["segment"][0] < d["segment"][1] <= video.duration
    assert d["label"] in dataset.class_names
  assert all(math.isfinite(v) for v in res["summary"].values())

  # The CAS of the whole video against a float64 forward pass of the same params.
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  relu_fc = lambda name: np.maximum(video.features @ p[name]["kernel"] + p[name]["bias"], 0)
  f = relu_fc("embedding")
  # model.localization_embedding: C_loc reads the shared f or its own embedding's.
  f_loc = relu_fc("loc_embedding") if config.model.localization_embedding == "separate" else f
  cas = res["predictions"]["cas"]["long"]
  assert cas["cas_cls"].shape == (T, N)
  np.testing.assert_allclose(cas["cas_cls"], f @ p["cls_head"]["kernel"] + p["cls_head"]["bias"],
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(cas["cas_loc"],
                             f_loc @ p["loc_head"]["kernel"] + p["loc_head"]["bias"],
                             rtol=1e-4, atol=1e-5)
