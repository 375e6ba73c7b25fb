"""Inception-v1 I3D (Carreira & Zisserman 2017) in Flax, for snippet features.

The architecture and the parameter names follow the widely used PyTorch port
(``pytorch-i3d``, ``InceptionI3d``), so its ``rgb_imagenet.pt`` /
``flow_imagenet.pt`` state dicts map tensor for tensor
(:mod:`jaxseg.features.weights`):

* ``Unit3D`` = 3-D convolution without bias, BatchNorm (``eps = 1e-3``; the
  port's ``momentum = 0.01`` is Flax's ``0.99``, which only training would use),
  ReLU. TensorFlow "SAME" padding computed from the input size as the port's
  ``compute_pad`` does: along an axis of size ``s`` with kernel ``k`` and
  stride ``r`` the total padding is ``max(k - r, 0)`` if ``s % r == 0`` else
  ``max(k - s % r, 0)``, the smaller half in front.
* Max pooling pads the same way, with zeros (as the port's ``F.pad``; every
  pooled input follows a ReLU, so zeros and ``-inf`` give the same maximum).
* Inception modules with branches ``b0`` (1x1x1), ``b1a``/``b1b`` (1x1x1 then
  3x3x3), ``b2a``/``b2b`` (1x1x1 then 3x3x3), ``b3a``/``b3b`` (3x3x3 max pool,
  stride 1, then 1x1x1), concatenated on channels.
* Endpoints up to ``Mixed_5c``, then an average over the remaining time and
  space: the port's ``extract_features`` (its ``AvgPool3d(2, 7, 7)`` covers the
  whole ``(2, 7, 7)`` output of a 16 x 224 x 224 snippet, so the two agree
  there; a global mean also works for the small inputs the tests use).

BatchNorm runs in inference mode on the checkpoint's running statistics and is
kept as a separate step after each convolution (not folded into the kernel):
the converted file then holds the checkpoint's tensors unchanged, one for one,
and XLA fuses the per-channel affine into the convolution's output anyway.

``width_multiplier`` scales every channel count (``round(c * w)``, at least 1);
``1.0`` is I3D. The tests use ``1/8`` so that a reference fixture fits in the
repository.

Usage::

  model = I3D(in_channels=3)                       # the RGB stream; 2 for flow
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 224, 224, 3)))
  feats = model.apply(variables, clips)            # (S, 1024)
  fn = feature_fn(in_channels=3)                   # jitted, cached
  feats = snippet_features(fn, variables, clips, batch_size=8)
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

SNIPPET_FRAMES = 16
FEATURE_DIM = 1024  # at width 1.0

# (endpoint, kind, spec). "conv": (out channels, kernel, stride);
# "pool": (kernel, stride); "mixed": the six channel counts
# (b0, b1a, b1b, b2a, b2b, b3b) of the Inception module.
ENDPOINTS: tuple[tuple[str, str, Any], ...] = (
    ("Conv3d_1a_7x7", "conv", (64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "conv", (64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", "conv", (192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mixed", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", "mixed", (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mixed", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", "mixed", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", "mixed", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", "mixed", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", "mixed", (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mixed", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", "mixed", (384, 192, 384, 48, 128, 128)),
)

# The Inception branches: (name, index into the six counts, kernel).
BRANCHES = (("b0", 0, (1, 1, 1)), ("b1a", 1, (1, 1, 1)), ("b1b", 2, (3, 3, 3)),
            ("b2a", 3, (1, 1, 1)), ("b2b", 4, (3, 3, 3)), ("b3b", 5, (1, 1, 1)))


def scaled(channels: int, width_multiplier: float) -> int:
  """``channels`` at ``width_multiplier``: ``round(c * w)``, at least 1."""
  return max(1, int(round(channels * width_multiplier)))


def feature_dim(width_multiplier: float = 1.0) -> int:
  """Channels of ``Mixed_5c`` (the feature width): 1024 at width 1."""
  c = ENDPOINTS[-1][2]
  return sum(scaled(c[i], width_multiplier) for i in (0, 2, 4, 5))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF "SAME" padding ``(front, back)`` as pytorch-i3d's ``compute_pad``."""
  if size % stride == 0:
    total = max(kernel - stride, 0)
  else:
    total = max(kernel - size % stride, 0)
  return total // 2, total - total // 2


def _pads(shape: Sequence[int], kernel: Sequence[int],
          stride: Sequence[int]) -> list[tuple[int, int]]:
  return [same_padding(s, k, r) for s, k, r in zip(shape, kernel, stride)]


def _precision(name: str | None):
  return None if name is None else jax.lax.Precision(name)


class Unit3D(nn.Module):
  """Conv3d (no bias) + BatchNorm (running statistics) + ReLU, "SAME" padded.

  Attributes:
    features: output channels.
    kernel: ``(kt, kh, kw)``.
    stride: ``(st, sh, sw)``.
    precision: ``None`` (the backend's default) or a ``jax.lax.Precision`` name
      (e.g. ``"highest"`` for full float32 convolutions on a GPU).
  """
  features: int
  kernel: tuple[int, int, int] = (1, 1, 1)
  stride: tuple[int, int, int] = (1, 1, 1)
  precision: str | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """``(S, T, H, W, C) float32`` -> ``(S, T', H', W', features) float32``."""
    pads = _pads(x.shape[1:4], self.kernel, self.stride)
    x = nn.Conv(self.features, self.kernel, strides=self.stride, padding=pads,
                use_bias=False, precision=_precision(self.precision), name="conv3d")(x)
    x = nn.BatchNorm(use_running_average=True, momentum=0.99, epsilon=1e-3,
                     name="bn")(x)
    return nn.relu(x)


def max_pool_same(x: Array, kernel: Sequence[int], stride: Sequence[int]) -> Array:
  """Zero-padded "SAME" max pool: ``(S, T, H, W, C)`` -> ``(S, T', H', W', C)``."""
  pads = [(0, 0)] + _pads(x.shape[1:4], kernel, stride) + [(0, 0)]
  x = jnp.pad(x, pads)
  return jax.lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), jax.lax.max,
                               (1, *kernel, 1), (1, *stride, 1), "VALID")


class InceptionModule(nn.Module):
  """The four-branch Inception block (branches ``b0``, ``b1a/b``, ``b2a/b``, ``b3b``).

  Attributes:
    channels: the six output counts ``(b0, b1a, b1b, b2a, b2b, b3b)``.
  """
  channels: tuple[int, int, int, int, int, int]
  precision: str | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """``(S, T, H, W, C)`` -> ``(S, T, H, W, b0 + b1b + b2b + b3b)``."""
    unit = {name: Unit3D(self.channels[i], k, precision=self.precision, name=name)
            for name, i, k in BRANCHES}
    b0 = unit["b0"](x)
    b1 = unit["b1b"](unit["b1a"](x))
    b2 = unit["b2b"](unit["b2a"](x))
    b3 = unit["b3b"](max_pool_same(x, (3, 3, 3), (1, 1, 1)))  # b3a: the pool
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class I3D(nn.Module):
  """Inception-v1 I3D up to ``Mixed_5c``, then a mean over time and space.

  Attributes:
    in_channels: 3 for the RGB stream, 2 for the optical-flow stream (checked
      against the input).
    width_multiplier: scales every channel count; 1.0 is I3D (1024-d output).
    precision: convolution precision, see :class:`Unit3D`.
    keep_map: return ``Mixed_5c`` itself, ``(S, T', H', W', F)``, instead of
      its mean (for the classifier's pooling, :mod:`jaxseg.features.classify`).
  """
  in_channels: int = 3
  width_multiplier: float = 1.0
  precision: str | None = None
  keep_map: bool = False

  @nn.compact
  def __call__(self, clips: Array) -> Array:
    """Features of a batch of snippets.

    Args:
      clips: ``(S, 16, H, W, C) float32`` in ``[-1, 1]``, ``C = in_channels``
        (RGB, or flow ``(dx, dy)``); 16 x 224 x 224 for the standard features.
        Any ``T, H, W`` works (the padding adapts).

    Returns:
      ``(S, F) float32``, ``F = feature_dim(width_multiplier)`` (1024 at width 1);
      with ``keep_map``, ``(S, T', H', W', F)``.
    """
    if clips.ndim != 5 or clips.shape[-1] != self.in_channels:
      raise ValueError(f"I3D: expected clips (S, T, H, W, {self.in_channels}), "
                       f"got shape {clips.shape}")
    x = clips.astype(jnp.float32)
    w = self.width_multiplier
    for name, kind, spec in ENDPOINTS:
      if kind == "conv":
        out, kernel, stride = spec
        x = Unit3D(scaled(out, w), kernel, stride, precision=self.precision, name=name)(x)
      elif kind == "pool":
        x = max_pool_same(x, *spec)
      else:
        x = InceptionModule(tuple(scaled(c, w) for c in spec), precision=self.precision,
                            name=name)(x)
    return x if self.keep_map else jnp.mean(x, axis=(1, 2, 3))


def variable_shapes(in_channels: int, width_multiplier: float = 1.0) -> dict[str, Any]:
  """The variables' shapes (``jax.ShapeDtypeStruct`` tree), computed, no memory used."""
  model = I3D(in_channels=in_channels, width_multiplier=width_multiplier)
  x = jax.ShapeDtypeStruct((1, SNIPPET_FRAMES, 224, 224, in_channels), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype)))


def init_variables(seed: int, in_channels: int,
                   width_multiplier: float = 1.0) -> dict[str, Any]:
  """Random variables, drawn with NumPy from the traced shapes (nothing compiled).

  Kernels He-normal (``std = sqrt(2 / fan_in)``), BatchNorm scale 1, bias 0,
  mean 0, variance 1. For timing and tests; real features need converted
  weights (:func:`jaxseg.features.weights.load_weights`).
  """
  rng = np.random.default_rng(seed)

  def draw(path, spec):
    name = path[-1].key
    if name == "kernel":
      fan_in = math.prod(spec.shape[:-1])
      return (rng.standard_normal(spec.shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)
    return np.full(spec.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

  shapes = variable_shapes(in_channels, width_multiplier)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def conv_flops(in_channels: int, width_multiplier: float = 1.0,
               clip_shape: Sequence[int] = (SNIPPET_FRAMES, 224, 224)) -> float:
  """FLOPs of the convolutions for one snippet (2 per multiply-add).

  Counted from the shapes each convolution sees when the network is traced
  (``jax.eval_shape``, nothing computed): ``2 x output elements x kernel volume
  x input channels`` summed over the 57 convolutions. BatchNorm, ReLU, pooling
  and the mean add well under 1% and are left out. Full width, 16 x 224 x 224:
  55.6 GFLOP per snippet for RGB, 51.2 for flow (27.8 and 25.6 G multiply-adds;
  ``tests/test_features_i3d.py`` pins them).
  """
  model = I3D(in_channels=in_channels, width_multiplier=width_multiplier)
  variables = variable_shapes(in_channels, width_multiplier)
  total = [0.0]

  def count(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, nn.Conv) and context.method_name == "__call__":
      cin = args[0].shape[-1]
      total[0] += 2.0 * math.prod(out.shape) * math.prod(context.module.kernel_size) * cin
    return out

  x = jax.ShapeDtypeStruct((1, *clip_shape, in_channels), jnp.float32)
  with nn.intercept_methods(count):
    jax.eval_shape(model.apply, variables, x)
  return total[0]


def feature_fn(in_channels: int, width_multiplier: float = 1.0,
               precision: str | None = None, keep_map: bool = False
               ) -> Callable[[Any, Array], Array]:
  """The jitted ``(variables, clips (S, 16, H, W, C)) -> (S, F)`` of one stream
  (``keep_map``: the ``Mixed_5c`` map, see :class:`I3D`).

  Cached per configuration, so every caller in a process shares its compiled
  executables (one per input shape).
  """
  return _feature_fn(int(in_channels), float(width_multiplier), precision, bool(keep_map))


@functools.lru_cache(maxsize=None)
def _feature_fn(in_channels: int, width_multiplier: float, precision: str | None,
                keep_map: bool):
  model = I3D(in_channels=in_channels, width_multiplier=width_multiplier,
              precision=precision, keep_map=keep_map)
  return jax.jit(model.apply)


def snippet_features(fn: Callable[[Any, Array], Array], variables: Any,
                     clips: np.ndarray, batch_size: int = 8) -> np.ndarray:
  """Features of any number of snippets, in batches of a fixed size.

  The last batch is padded with zeros to ``batch_size`` so one compiled
  executable serves every video.

  Args:
    fn: from :func:`feature_fn`.
    variables: the stream's ``{"params", "batch_stats"}``.
    clips: ``(S, 16, H, W, C) float32``.
    batch_size: snippets per call.

  Returns:
    ``(S, F) float32``.
  """
  outs = []
  for start in range(0, clips.shape[0], batch_size):
    chunk = clips[start:start + batch_size]
    n = chunk.shape[0]
    if n < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]),
                                              chunk.dtype)])
    outs.append((fn(variables, chunk), n))
  if not outs:
    raise ValueError("snippet_features: no snippets")
  return np.concatenate([np.asarray(o)[:n] for o, n in outs]).astype(np.float32)
