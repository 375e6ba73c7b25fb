"""Training features kept on the accelerator: each step sends indices, not features.

At the paper's shapes a training batch is ``16 x 750 x 2048`` float32, 98 MB:
stacking it on the host and copying it costs far more than the jitted step
itself on a GPU (measurements in ``benchmarks/RESULTS.md``). A training set of
pre-extracted features is small next to a GPU's memory (THUMOS14's 200
validation videos with I3D features: about 2.5 GB), so :class:`FeatureBank` copies all training videos to the device once,
concatenated, and each step sends only :meth:`TrainLoader.plan` --
``(B, T) int32`` row indices and the mask, about 50 kB -- from which
:func:`gather_batch` rebuilds, inside the jitted step, exactly the batch
:meth:`TrainLoader.batch` would have stacked (same videos, same sampled
segments, bit-identical values).

``config.train.device_data``: ``"auto"`` (on for a GPU/TPU when the bank takes
at most a quarter of the device memory, off on a CPU, where there is nothing to
copy to), ``"on"`` or ``"off"``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.data.labels import check_segment_labels
from jaxseg.data.video import Dataset

# "auto" turns the bank on when it takes at most this fraction of device memory.
AUTO_MEMORY_FRACTION = 0.25


@dataclasses.dataclass
class FeatureBank:
  """All training videos concatenated along time.

  Attributes:
    features: ``(S, D) float32``, ``S`` the total number of segments.
    segment_labels: ``(S, N) uint8`` segment labels ``u``.
    offsets: ``(M,) int64`` host-side start row of each video.
  """
  features: Any
  segment_labels: Any
  offsets: np.ndarray

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.features.shape)) * 4 + int(np.prod(self.segment_labels.shape))

  def arrays(self) -> dict[str, Any]:
    """The pytree the jitted step takes (``features``, ``segment_labels``)."""
    return {"features": self.features, "segment_labels": self.segment_labels}


def bank_bytes(dataset: Dataset) -> int:
  """Bytes the bank of ``dataset`` would take on the device."""
  total = sum(v.num_segments for v in dataset.videos)
  return total * (dataset.feature_dim * 4 + dataset.num_classes)


def video_offsets(dataset: Dataset) -> np.ndarray:
  """``(M,) int64``: where each video of ``dataset`` starts in its bank."""
  lengths = np.array([v.num_segments for v in dataset.videos], np.int64)
  return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def build_bank(dataset: Dataset, segment_labels: Mapping[str, np.ndarray]) -> FeatureBank:
  """The host-side bank of ``dataset`` (videos in dataset order).

  Raises:
    DataError: naming the video whose segment labels are missing or misshapen.
  """
  check_segment_labels(dataset, segment_labels)
  lengths = np.array([v.num_segments for v in dataset.videos], np.int64)
  offsets = video_offsets(dataset)
  total = int(lengths.sum())
  if total >= 2 ** 31:
    raise ValueError(f"device_data: {total} training segments do not fit int32 indices; "
                     "set train.device_data='off'")
  feats = np.empty((total, dataset.feature_dim), np.float32)
  labels = np.empty((total, dataset.num_classes), np.uint8)
  for video, start, n in zip(dataset.videos, offsets, lengths):
    feats[start:start + n] = video.features
    labels[start:start + n] = segment_labels[video.video_id]
  return FeatureBank(feats, labels, offsets)


def device_memory_bytes(device=None) -> int | None:
  """The memory XLA may use on ``device`` (None where the backend does not say)."""
  device = device or jax.local_devices()[0]
  try:
    stats = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    return None
  limit = stats.get("bytes_limit")
  return int(limit) if limit else None


def use_device_data(mode: str, dataset: Dataset, *, backend: str | None = None,
                    memory: int | None = None) -> tuple[bool, str]:
  """Resolves ``config.train.device_data``; returns ``(on, why)`` for the log.

  Args:
    mode: ``"auto"``, ``"on"`` or ``"off"``.
    dataset: the training split.
    backend: ``jax.default_backend()`` unless given (for tests).
    memory: device memory in bytes, :func:`device_memory_bytes` unless given.
  """
  need = bank_bytes(dataset)
  size = f"{need / 2 ** 30:.2f} GiB" if need >= 2 ** 30 else f"{need / 2 ** 20:.1f} MiB"
  if mode == "on":
    return True, f"on (config), {size} of training features on the device"
  if mode == "off":
    return False, "off (config): batches are stacked on the host"
  if mode != "auto":
    raise ValueError(f"train.device_data must be 'auto', 'on' or 'off', got {mode!r}")
  backend = backend or jax.default_backend()
  if backend == "cpu":
    return False, "off (auto: CPU backend, batches are stacked on the host)"
  memory = device_memory_bytes() if memory is None else memory
  if memory is None or need > AUTO_MEMORY_FRACTION * memory:
    room = "unknown device memory" if memory is None else \
        f"more than {AUTO_MEMORY_FRACTION:.0%} of {memory / 2 ** 30:.1f} GiB"
    return False, f"off (auto: {size} of training features is {room})"
  return True, f"on (auto), {size} of training features on the device"


def gather_batch(bank: Mapping[str, jax.Array], plan: Mapping[str, jax.Array]) -> dict:
  """The batch pytree of ``docs/design.md`` from the bank and a step's plan (jittable).

  Args:
    bank: ``FeatureBank.arrays()``: ``features (S, D) float32``,
      ``segment_labels (S, N) uint8``.
    plan: :meth:`TrainLoader.plan`: ``index (B, T) int32``, ``mask (B, T)
      bool``, ``lengths (B,) int32``, ``video_labels (B, N) float32``.

  Returns:
    ``features (B, T, D)``, ``segment_labels (B, T, N)``, both float32 and zero
    on padded steps, ``num_labeled (B,) int32``, and ``mask``, ``lengths``,
    ``video_labels`` as given.
  """
  mask = plan["mask"]
  index = plan["index"]
  feats = jnp.take(bank["features"], index, axis=0, mode="clip")
  feats = jnp.where(mask[..., None], feats, jnp.zeros((), feats.dtype))
  seg = jnp.take(bank["segment_labels"], index, axis=0, mode="clip").astype(jnp.float32)
  seg = jnp.where(mask[..., None], seg, 0.0)
  num_labeled = jnp.sum(jnp.max(seg, axis=2) > 0, axis=1).astype(jnp.int32)
  return {"features": feats, "mask": mask, "lengths": plan["lengths"],
          "video_labels": plan["video_labels"], "segment_labels": seg,
          "num_labeled": num_labeled}
