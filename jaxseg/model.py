"""The network of paper Fig. 3 (section 4.2) as a Flax linen module.

``x (B, T, D)`` -> FC ``D -> E`` + ReLU + dropout = the discriminative feature
``f`` -> two FC heads ``E -> N``: ``C_cls`` (classification module) and
``C_loc`` (localization module). The sphere loss (eq. 9) has its own weight
``W (N, E)``, the parameter ``"sphere_weight"``. The paper uses ``E = D``.

In Fig. 3 both heads read one ``f`` (``localization_embedding="shared"``);
jaxseg's default gives ``C_loc`` an embedding of its own (``"separate"``), so
that the localization losses do not reshape the features video
classification reads (docs/decisions.md#fig-3-the-localization-embedding has the measurements).

Usage::

  model = SegmentModel(num_classes=20, embed_dim=2048, dropout_rate=0.7,
                       compute_dtype="float32", localization_embedding="shared")
  variables = init_params(model, jax.random.key(0), feature_dim=2048)
  out = model.apply(variables, x, mask, deterministic=False,
                    rngs={"dropout": key})
  w = sphere_weight(variables)
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.config import COMPUTE_DTYPES, LOCALIZATION_EMBEDDINGS

Array = jax.Array


class SegmentModel(nn.Module):
  """Embedding + classification and localization heads (paper Fig. 3).

  Attributes:
    num_classes: ``N``.
    embed_dim: ``E``, the width of ``f``; ``<= 0`` means the input feature
      dimension ``D`` (the paper's ``D -> D``).
    dropout_rate: dropout on ``f`` (0.7 as in W-TALC), after the ReLU.
    compute_dtype: ``"float32"`` or ``"bfloat16"``: the dtype of the FC
      layers' inputs and arithmetic (mixed precision: parameters stay
      float32, and the outputs, on which every loss is computed, are float32).
    localization_embedding: the ``f`` the ``C_loc`` head sees: ``"shared"``
      (Fig. 3: one embedding for both heads), ``"detached"`` (the same ``f``
      under ``stop_gradient``, so the losses on ``C_loc`` train its head only;
      the outputs are those of ``"shared"``) or ``"separate"`` (an embedding
      of its own, ``"loc_embedding"``, with the same width and dropout: the
      classification branch is then trained by eq. 4 alone, the localization
      branch by eq. 6-13).
  """
  num_classes: int
  embed_dim: int
  dropout_rate: float
  compute_dtype: str
  localization_embedding: str

  @nn.compact
  def __call__(self, features: Array, mask: Array, *,
               deterministic: bool) -> dict[str, Array]:
    """Runs the network.

    Args:
      features: ``(B, T, D) float32`` fused segment features ``x``; padded
        steps may hold anything (they are zeroed first).
      mask: ``(B, T) bool``, True on real segments.
      deterministic: no dropout if True; otherwise needs a ``"dropout"`` rng.

    Returns:
      dict with ``"features"``: ``f (B, T, E) float32`` after ReLU and dropout
      (what the ``C_loc`` head sees, and what the sphere and propagation
      losses use; with a shared embedding the ``C_cls`` head sees it too);
      ``"cas_cls"``, ``"cas_loc"``: ``(B, T, N) float32``. All three are zero
      on padded steps; ``"clean_features"``: ``f`` before dropout (the
      propagation loss's ``S`` with ``loss.propagation_features = "clean"``).
    """
    if features.ndim != 3 or mask.shape != features.shape[:2]:
      raise ValueError(f"SegmentModel: expected features (B, T, D) and mask "
                       f"(B, T), got {features.shape} and {mask.shape}")
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise ValueError(f"SegmentModel: compute_dtype must be one of {COMPUTE_DTYPES}, "
                       f"got {self.compute_dtype!r}")
    if self.localization_embedding not in LOCALIZATION_EMBEDDINGS:
      raise ValueError(f"SegmentModel: localization_embedding must be one of "
                       f"{LOCALIZATION_EMBEDDINGS}, got {self.localization_embedding!r}")
    dtype = jnp.dtype(self.compute_dtype)
    dense = lambda width, name: nn.Dense(width, dtype=dtype, param_dtype=jnp.float32,
                                         name=name)
    embed_dim = self.embed_dim if self.embed_dim > 0 else features.shape[-1]
    valid = mask[..., None]
    x = jnp.where(valid, features, 0.0).astype(dtype)
    f = nn.relu(dense(embed_dim, "embedding")(x))
    clean = f.astype(jnp.float32)
    f = nn.Dropout(rate=self.dropout_rate)(f, deterministic=deterministic)
    cas_cls = dense(self.num_classes, "cls_head")(f).astype(jnp.float32)
    if self.localization_embedding == "separate":
      f = nn.relu(dense(embed_dim, "loc_embedding")(x))
      clean = f.astype(jnp.float32)
      f = nn.Dropout(rate=self.dropout_rate)(f, deterministic=deterministic)
    loc_in = jax.lax.stop_gradient(f) if self.localization_embedding == "detached" else f
    cas_loc = dense(self.num_classes, "loc_head")(loc_in).astype(jnp.float32)
    f = f.astype(jnp.float32)
    # W of eq. 9; created here so it lives in params with the rest.
    self.param("sphere_weight", nn.initializers.lecun_normal(),
               (self.num_classes, embed_dim), jnp.float32)
    return {
        "features": jnp.where(valid, f, 0.0),
        "cas_cls": jnp.where(valid, cas_cls, 0.0),
        "cas_loc": jnp.where(valid, cas_loc, 0.0),
        "clean_features": jnp.where(valid, clean, 0.0),
    }


def init_params(model: SegmentModel, rng: Array,
                feature_dim: int) -> dict[str, Any]:
  """Initial variables (``{"params": ...}``) for inputs of width ``feature_dim``."""
  x = jnp.zeros((1, 2, feature_dim), jnp.float32)
  mask = jnp.ones((1, 2), bool)
  return model.init({"params": rng}, x, mask, deterministic=True)


def sphere_weight(params: Mapping[str, Any]) -> Array:
  """``W (N, E)`` of eq. 9 from the variables or from their ``"params"``."""
  if "params" in params:
    params = params["params"]
  return params["sphere_weight"]
