"""What a run trains: the model, the optimizer and the train state, built from a config.

Both training (:mod:`jaxseg.train`) and reading a run back
(:func:`jaxseg.workdir.load_run`) build these the same way, so a checkpoint
restores into exactly the tree it was saved from.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxseg import model as model_lib


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training. One pytree, donated to the step.

  Attributes:
    step: () int32, number of optimizer steps taken (batches consumed).
    params: model parameters.
    opt_state: Optax state.
    num_skipped: () int32, batches skipped for non-finite values.
    first_bad_step: () int32, first step with a non-finite value, -1 if none.
    bad_terms: () int32, bit i set when term ``TERM_NAMES[i]`` was non-finite.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  num_skipped: jax.Array
  first_bad_step: jax.Array
  bad_terms: jax.Array


TERM_NAMES = ("classification", "segment", "sphere", "propagation", "total", "grad_norm")


def make_model(config: ml_collections.ConfigDict, feature_dim: int,
               num_classes: int) -> model_lib.SegmentModel:
  """The :class:`SegmentModel` of ``config.model`` for ``D = feature_dim`` and ``N`` classes."""
  embed = feature_dim if config.model.embed_dim == -1 else config.model.embed_dim
  return model_lib.SegmentModel(num_classes=num_classes, embed_dim=embed,
                                dropout_rate=config.model.dropout_rate,
                                compute_dtype=config.model.compute_dtype,
                                localization_embedding=config.model.localization_embedding)


def learning_rate(config: ml_collections.ConfigDict) -> optax.ScalarOrSchedule:
  """``config.train``'s learning rate: a constant, or a schedule of the update count."""
  t = config.train
  if t.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, t.learning_rate, max(t.warmup_steps, 1), t.num_steps)
  if t.warmup_steps > 0:
    return optax.linear_schedule(0.0, t.learning_rate, t.warmup_steps)
  return t.learning_rate


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with L2 weight decay added to the gradient, as PyTorch's ``Adam``.

  W-TALC and BaSNet use ``torch.optim.Adam(lr, weight_decay=5e-4)``, which adds
  ``wd * w`` to the gradient before the Adam moments (not AdamW).
  """
  t = config.train
  lr = learning_rate(config)
  parts = []
  if t.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(t.grad_clip_norm))
  if t.weight_decay > 0:
    parts.append(optax.add_decayed_weights(t.weight_decay))
  parts.append(optax.adam(lr))
  return optax.chain(*parts)


def init_state(config, model, optimizer, feature_dim: int) -> TrainState:
  """The state before the first step: parameters from ``config.seed``, zero counters."""
  variables = model_lib.init_params(model, jax.random.key(config.seed), feature_dim)
  params = variables["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
      num_skipped=jnp.zeros((), jnp.int32), first_bad_step=-jnp.ones((), jnp.int32),
      bad_terms=jnp.zeros((), jnp.int32))
