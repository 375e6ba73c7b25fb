"""Batches: bucketed padding, deterministic training batches, eval batches.

Every batch is the pytree of ``docs/design.md`` (a ``dict`` of numpy arrays):

  ``features``        ``(B, T, D) float32``  zero on padded steps
  ``mask``            ``(B, T) bool``        True on real segments
  ``lengths``         ``(B,) int32``         real segments per video
  ``video_labels``    ``(B, N) float32``     multi-hot ``y`` (section 4.1)
  ``segment_labels``  ``(B, T, N) float32``  ``u`` in {0, 1}, zero on padding
  ``num_labeled``     ``(B,) int32``         ``Q``: labeled segments (any class)

``T`` is a bucket of ``buckets`` (or a multiple of the largest), so a jitted
step compiles once per bucket. All per-video work (cropping, sampling,
padding) happens here in numpy, never inside compiled code.
"""

from __future__ import annotations

import math
from typing import Iterator, Mapping, Sequence

import numpy as np

from jaxseg.data.labels import check_segment_labels
from jaxseg.data.video import Dataset

def bucket_length(length: int, buckets: Sequence[int]) -> int:
  """The padded length for ``length`` segments.

  Returns:
    The smallest bucket ``>= length``; past the largest bucket, the next
    multiple of the largest.
  """
  if not buckets:
    raise ValueError("buckets must not be empty")
  ordered = sorted(int(b) for b in buckets)
  if ordered[0] <= 0:
    raise ValueError(f"buckets must be positive, got {list(buckets)}")
  length = max(int(length), 1)
  for b in ordered:
    if b >= length:
      return b
  largest = ordered[-1]
  return int(math.ceil(length / largest)) * largest


def pad_video(array: np.ndarray, length: int) -> np.ndarray:
  """Zero-pads ``(T, ...)`` to ``(length, ...)`` along axis 0."""
  if array.shape[0] > length:
    raise ValueError(f"cannot pad {array.shape[0]} segments to {length}")
  out = np.zeros((length,) + array.shape[1:], array.dtype)
  out[:array.shape[0]] = array
  return out


def stack_batch(features: Sequence[np.ndarray], segment_labels: Sequence[np.ndarray],
                video_labels: Sequence[np.ndarray], *, batch_size: int,
                buckets: Sequence[int], feature_dim: int,
                num_classes: int) -> dict[str, np.ndarray]:
  """Pads and stacks up to ``batch_size`` videos into the batch pytree.

  Rows past ``len(features)`` are padding rows: all-False mask, zero length.

  Args:
    features: per video ``(T_i, D)``.
    segment_labels: per video ``(T_i, N)`` in {0, 1}.
    video_labels: per video ``(N,)``.
    batch_size: ``B``.
    buckets: the length buckets.
    feature_dim: ``D`` (for an all-padding batch).
    num_classes: ``N``.
  """
  n = len(features)
  if n > batch_size:
    raise ValueError(f"{n} videos for a batch of {batch_size}")
  lengths = np.zeros((batch_size,), np.int32)
  for i, f in enumerate(features):
    lengths[i] = f.shape[0]
  t_pad = bucket_length(int(lengths.max()) if n else 1, buckets)
  feats = np.zeros((batch_size, t_pad, feature_dim), np.float32)
  seg = np.zeros((batch_size, t_pad, num_classes), np.float32)
  vlab = np.zeros((batch_size, num_classes), np.float32)
  for i in range(n):
    t = lengths[i]
    feats[i, :t] = features[i]
    seg[i, :t] = segment_labels[i]
    vlab[i] = video_labels[i]
  mask = np.arange(t_pad)[None, :] < lengths[:, None]
  num_labeled = (seg.max(axis=2) > 0).sum(axis=1).astype(np.int32)
  return {"features": feats, "mask": mask, "lengths": lengths,
          "video_labels": vlab, "segment_labels": seg, "num_labeled": num_labeled}


def sample_indices(num_segments: int, max_length: int, mode: str,
                   rng: np.random.Generator) -> np.ndarray:
  """Which segments of a long video a training batch keeps (sorted, unique).

  Args:
    num_segments: ``T`` of the video.
    max_length: ``L``; a video with ``T <= L`` keeps all its segments.
    mode: "uniform": ``floor((i + o) * T / L)`` for ``i < L`` with one random
      offset ``o`` in [0, 1) (W-TALC / BaSNet-style uniform sampling; the
      indices are strictly increasing since ``T / L > 1``); "crop": a random
      contiguous window of ``L`` segments.
    rng: the generator of this draw.

  Returns:
    ``(min(T, L),) int64`` indices.
  """
  if num_segments <= max_length:
    return np.arange(num_segments)
  if mode == "uniform":
    offset = rng.random()
    idx = np.floor((np.arange(max_length) + offset) * (num_segments / max_length))
    return np.minimum(idx.astype(np.int64), num_segments - 1)
  if mode == "crop":
    start = int(rng.integers(num_segments - max_length + 1))
    return np.arange(start, start + max_length)
  raise ValueError(f"crop_mode must be 'uniform' or 'crop' (config.train.crop_mode), "
                   f"got {mode!r}")


def sample_keeping_labeled(labeled: np.ndarray, max_length: int,
                           rng: np.random.Generator) -> np.ndarray:
  """``train.subsample = "keep_labeled"``: uniform sampling that keeps the labels.

  Every labeled segment is kept (if there are more than ``L``, ``L`` of them
  uniformly) and the rest of the ``L`` slots are filled by uniform sampling
  (as :func:`sample_indices`, one random offset) of the unlabeled segments.

  Args:
    labeled: ``(T,) bool`` whether each segment carries a segment label.
    max_length: ``L``.
    rng: the generator of this draw.

  Returns:
    ``(min(T, L),) int64`` sorted unique indices.
  """
  num_segments = labeled.shape[0]
  if num_segments <= max_length:
    return np.arange(num_segments)
  pos = np.flatnonzero(labeled)
  if pos.size >= max_length:
    return pos[sample_indices(pos.size, max_length, "uniform", rng)]
  rest = np.flatnonzero(~labeled)
  fill = max_length - pos.size
  picked = rest[sample_indices(rest.size, fill, "uniform", rng)] if fill else rest[:0]
  return np.sort(np.concatenate([pos, picked]))


class TrainLoader:
  """Deterministic training batches: ``batch(step)`` depends on (seed, step) only.

  The videos form an endless stream of epochs, each a permutation drawn from
  ``(seed, epoch)``; batch ``step`` holds stream positions
  ``step * B .. step * B + B - 1`` (position ``p`` is video
  ``perm[p // M][p % M]``, ``M`` videos), so every batch is full and a resumed
  run gets exactly the same batches. Videos longer than ``max_length`` are
  reduced to ``max_length`` segments (see :func:`sample_indices`) with a draw
  from ``(seed, step, row)``; their segment labels follow the kept indices
  and ``num_labeled`` counts what remains.
  """

  def __init__(self, dataset: Dataset, segment_labels: Mapping[str, np.ndarray], *,
               batch_size: int, max_length: int, buckets: Sequence[int], seed: int,
               crop_mode: str, subsample: str):
    if not dataset.videos:
      raise ValueError("TrainLoader: the dataset has no video")
    if batch_size <= 0 or max_length <= 0:
      raise ValueError("batch_size and max_length must be positive")
    sample_indices(2, 1, crop_mode, np.random.default_rng(0))  # validates crop_mode
    if subsample != "uniform" and subsample != "keep_labeled":
      raise ValueError(f"subsample must be 'uniform' or 'keep_labeled' "
                       f"(config.train.subsample), got {subsample!r}")
    if subsample == "keep_labeled" and crop_mode != "uniform":
      raise ValueError("subsample='keep_labeled' needs crop_mode='uniform'")
    check_segment_labels(dataset, segment_labels)
    bucket_length(1, buckets)  # validates buckets
    self.dataset = dataset
    self.batch_size = int(batch_size)
    self.max_length = int(max_length)
    self.buckets = tuple(int(b) for b in buckets)
    self.seed = int(seed)
    self.crop_mode = crop_mode
    self.subsample = subsample
    self.num_videos = len(dataset.videos)
    self._features = [v.features for v in dataset.videos]
    self._labels = [np.asarray(segment_labels[v.video_id], np.uint8) for v in dataset.videos]
    self._video_labels = [v.video_labels(dataset.num_classes) for v in dataset.videos]
    self._perm_cache: dict[int, np.ndarray] = {}

  @property
  def steps_per_epoch(self) -> int:
    """``ceil(M / B)``: steps to see every video at least once."""
    return int(math.ceil(self.num_videos / self.batch_size))

  def epoch_of(self, step: int) -> int:
    return (int(step) * self.batch_size) // self.num_videos

  def permutation(self, epoch: int) -> np.ndarray:
    """``(M,)`` the video order of ``epoch``, from ``(seed, epoch)``."""
    perm = self._perm_cache.get(epoch)
    if perm is None:
      rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 0, int(epoch)])
      perm = rng.permutation(self.num_videos)
      if len(self._perm_cache) > 4:
        self._perm_cache.clear()
      self._perm_cache[epoch] = perm
    return perm

  def video_indices(self, step: int) -> np.ndarray:
    """``(B,)`` the dataset indices of batch ``step``."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    pos = int(step) * self.batch_size + np.arange(self.batch_size)
    return np.array([self.permutation(int(p) // self.num_videos)[int(p) % self.num_videos]
                     for p in pos])

  def rows(self, step: int) -> list[tuple[int, np.ndarray]]:
    """``(video index, kept segment indices)`` of each row of batch ``step``.

    The one place a batch's videos and segments are drawn: :meth:`batch`
    stacks them on the host, :meth:`plan` turns them into indices for a
    device-resident copy of the features (``jaxseg/data/device_data.py``).
    """
    idx = self.video_indices(step)
    rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 1, int(step)])
    if self.subsample == "keep_labeled":
      return [(int(i), sample_keeping_labeled(self._labels[i].max(axis=1) > 0,
                                              self.max_length, rng)) for i in idx]
    return [(int(i), sample_indices(self._features[i].shape[0], self.max_length,
                                    self.crop_mode, rng)) for i in idx]

  def plan(self, step: int, offsets: np.ndarray) -> dict[str, np.ndarray]:
    """Batch ``step`` as row indices into the concatenated training features.

    Args:
      step: the global step.
      offsets: ``(M,) int64`` where each video starts in the concatenation
        (``device_data.FeatureBank.offsets``).

    Returns:
      ``{"index": (B, T) int32, "mask": (B, T) bool, "lengths": (B,) int32,
      "video_labels": (B, N) float32}``; ``T`` is the bucket :meth:`batch`
      pads to; padded steps index row 0 (the mask hides them).
    """
    rows = self.rows(step)
    lengths = np.zeros((self.batch_size,), np.int32)
    for r, (_, keep) in enumerate(rows):
      lengths[r] = keep.shape[0]
    t_pad = bucket_length(int(lengths.max()), self.buckets)
    index = np.zeros((self.batch_size, t_pad), np.int32)
    vlab = np.zeros((self.batch_size, self.dataset.num_classes), np.float32)
    for r, (i, keep) in enumerate(rows):
      index[r, :keep.shape[0]] = offsets[i] + keep
      vlab[r] = self._video_labels[i]
    mask = np.arange(t_pad)[None, :] < lengths[:, None]
    return {"index": index, "mask": mask, "lengths": lengths, "video_labels": vlab}

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """The batch of global step ``step`` (the pytree of the module docstring)."""
    feats, labs, ys = [], [], []
    for i, keep in self.rows(step):
      if keep.shape[0] == self._features[i].shape[0]:
        feats.append(self._features[i])
        labs.append(self._labels[i])
      else:
        feats.append(self._features[i][keep])
        labs.append(self._labels[i][keep])
      ys.append(self._video_labels[i])
    return stack_batch(feats, labs, ys, batch_size=self.batch_size, buckets=self.buckets,
                       feature_dim=self.dataset.feature_dim,
                       num_classes=self.dataset.num_classes)


def eval_batches(dataset: Dataset, *, batch_size: int, buckets: Sequence[int],
                 segment_labels: Mapping[str, np.ndarray] | None = None,
                 sort_by_length: bool = True) -> Iterator[dict]:
  """Full-length batches covering every video exactly once.

  Videos are sorted by length (stable, so ties keep dataset order) to reduce
  padding. The last batch may hold fewer real videos: it is padded to
  ``batch_size`` with all-False-mask rows, and its ``video_ids`` (a Python
  list, host-side only) names the real rows only, in row order.

  Args:
    dataset: the videos.
    batch_size: ``B``.
    buckets: the length buckets.
    segment_labels: optional ``{video_id: (T, N)}``; zeros when None.
    sort_by_length: sort videos by length first.

  Yields:
    The batch pytree plus ``video_ids``.
  """
  if batch_size <= 0:
    raise ValueError("batch_size must be positive")
  if segment_labels is not None:
    check_segment_labels(dataset, segment_labels)
  videos = list(dataset.videos)
  if sort_by_length:
    order = sorted(range(len(videos)), key=lambda i: (videos[i].num_segments, i))
    videos = [videos[i] for i in order]
  n_cls = dataset.num_classes
  for start in range(0, len(videos), batch_size):
    chunk = videos[start:start + batch_size]
    labs = [np.asarray(segment_labels[v.video_id]) if segment_labels is not None
            else np.zeros((v.num_segments, n_cls), np.uint8) for v in chunk]
    batch = stack_batch([v.features for v in chunk], labs,
                        [v.video_labels(n_cls) for v in chunk], batch_size=batch_size,
                        buckets=buckets, feature_dim=dataset.feature_dim,
                        num_classes=n_cls)
    batch["video_ids"] = [v.video_id for v in chunk]
    yield batch
