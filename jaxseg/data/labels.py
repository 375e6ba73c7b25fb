"""Segment-level labels (paper section 3): seconds -> segments, sampling, I/O.

The paper labels segments by randomly sampling inside the ground-truth
instances of THUMOS14 / ActivityNet: ``one-segment`` labels one segment per
instance, ``two-segment`` labels two and every segment between them (temporal
annotations are one-dimensional). The result is ``u`` of section 4.1:
``u(t, n) = 1`` when segment ``t`` is labeled with class ``n``, the input of
the partial segment loss (eq. 5-6). ``video-level`` (all zeros: the CL-only
setting) and ``full`` (every segment of every instance: an upper bound) cover
the other supervision levels.

Seconds to segments. Segment ``t`` covers ``[t / rate, (t + 1) / rate)``
seconds. An instance ``[start, end]`` covers every segment it overlaps with
positive length: ``first = floor(start * rate)``, ``last = ceil(end * rate) - 1``.
An instance shorter than one segment (``(end - start) * rate < 1``) covers
only the segment holding its midpoint. An instance that runs past the last
feature is clipped to it (and counted); one that starts past it is dropped
(and counted): real THUMOS14 has such videos.

Sampling is deterministic given ``seed`` and, per video, independent of the
other videos: each video draws from its own generator seeded with
``(seed, crc32(video_id))``.
"""

from __future__ import annotations

import dataclasses
import math
import zipfile
import zlib
from typing import Mapping, Sequence

import numpy as np

from jaxseg.data import io
from jaxseg.data.video import DataError, Dataset

_EPS = 1e-6  # tolerance on time * rate, so 0.64 s * 25/16 is segment 1, not 0
_FORMAT_VERSION = 1


@dataclasses.dataclass
class SegmentLabels:
  """The segment labels of a run.

  Attributes:
    labels: ``{video_id: (T, N) uint8}``, ``u`` of paper section 4.1.
    num_clipped: instances (or points) that extended past the features and
      were clipped.
    num_dropped: instances (or points) lying wholly past the features.
    mode: how they were made ("one-segment", "two-segment", "video-level",
      "full" or "points").
    seed: the sampling seed.
  """
  labels: dict[str, np.ndarray]
  num_clipped: int = 0
  num_dropped: int = 0
  mode: str = "one-segment"
  seed: int = 0

  def num_labeled_segments(self) -> int:
    """Segments labeled with at least one class, over all videos."""
    return int(sum(int(u.any(axis=1).sum()) for u in self.labels.values()))

  def summary(self) -> str:
    return (f"segment labels ({self.mode}, seed {self.seed}): "
            f"{self.num_labeled_segments()} labeled segments in "
            f"{len(self.labels)} videos; {self.num_clipped} instance(s) clipped "
            f"and {self.num_dropped} dropped at the end of the features")


def instance_segment_span(start_s: float, end_s: float, feature_rate: float,
                          num_segments: int) -> tuple[int, int, bool] | None:
  """The inclusive segment range an instance covers.

  Segment ``t`` covers ``[t / rate, (t + 1) / rate)`` seconds. The instance
  covers ``floor(start * rate) .. ceil(end * rate) - 1``; one shorter than a
  segment covers the single segment holding its midpoint. A negative start is
  treated as 0.

  Args:
    start_s: start in seconds.
    end_s: end in seconds (``>= start_s``).
    feature_rate: segments per second.
    num_segments: ``T``, the number of feature segments.

  Returns:
    ``(first, last, clipped)`` with ``0 <= first <= last < T``; ``clipped`` is
    True when the instance extends past segment ``T - 1``. None when it lies
    wholly past the end (its first segment is ``>= T``).
  """
  if end_s < start_s:
    raise ValueError(f"instance end {end_s} < start {start_s}")
  if num_segments <= 0:
    return None
  a = max(0.0, start_s) * feature_rate
  b = max(0.0, end_s) * feature_rate
  first = int(math.floor(a + _EPS))
  if b - a < 1.0:
    mid = int(math.floor(0.5 * (a + b) + _EPS))
    first = last = mid
    if mid >= num_segments:
      # The midpoint is past the end; label the last segment if the instance
      # starts inside the features.
      if int(math.floor(a + _EPS)) >= num_segments:
        return None
      return num_segments - 1, num_segments - 1, True
    return first, last, False
  last = max(first, int(math.ceil(b - _EPS)) - 1)
  if first >= num_segments:
    return None
  clipped = last >= num_segments
  return first, min(last, num_segments - 1), clipped


def video_rng(seed: int, video_id: str) -> np.random.Generator:
  """The generator of one video's draws: seeded with ``(seed, crc32(id))``."""
  return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(video_id.encode("utf-8"))])


def sample_segment_labels(dataset: Dataset, mode: str, seed: int) -> SegmentLabels:
  """Samples the segment labels ``u`` of every video (paper section 3).

  Args:
    dataset: the videos and their instances.
    mode: "one-segment" (one segment uniform inside each instance),
      "two-segment" (two distinct segments and all between them; an instance
      of one segment gives that one), "video-level" (none) or "full" (every
      segment of every instance).
    seed: the sampling seed.

  Returns:
    :class:`SegmentLabels` with ``(T, N) uint8`` per video.
  """
  if mode not in ("one-segment", "two-segment", "video-level", "full"):
    raise ValueError(f"label mode must be 'one-segment', 'two-segment', 'video-level' "
                     f"or 'full' ('points' are read from a CSV); got {mode!r}")
  n_cls = dataset.num_classes
  out: dict[str, np.ndarray] = {}
  num_clipped = num_dropped = 0
  for v in dataset.videos:
    t_len = v.num_segments
    u = np.zeros((t_len, n_cls), np.uint8)
    rng = video_rng(seed, v.video_id)
    for inst in v.instances:
      span = instance_segment_span(inst.start, inst.end, v.feature_rate, t_len)
      if span is None:
        num_dropped += 1
        continue
      first, last, clipped = span
      num_clipped += int(clipped)
      if mode == "one-segment":
        u[int(rng.integers(first, last + 1)), inst.label] = 1
      elif mode == "two-segment":
        if last == first:
          u[first, inst.label] = 1
        else:
          a, b = sorted(int(x) for x in rng.choice(last - first + 1, size=2, replace=False))
          u[first + a:first + b + 1, inst.label] = 1
      elif mode == "full":
        u[first:last + 1, inst.label] = 1
    out[v.video_id] = u
  return SegmentLabels(out, num_clipped, num_dropped, mode, int(seed))


def labels_from_points(dataset: Dataset,
                       points: Mapping[str, Sequence[tuple[float, int]]]) -> SegmentLabels:
  """One-segment labels from annotated points (LACP style).

  Args:
    dataset: the videos.
    points: ``{video_id: [(time_s, class_index), ...]}``; a point labels the
      segment holding it, ``floor(time_s * rate)``.

  Returns:
    :class:`SegmentLabels` (mode "points") for every video of ``dataset``;
    ``num_dropped`` counts points past the end of the features.

  Raises:
    DataError: a video id not in ``dataset`` or a class index out of range.
  """
  by_id = {v.video_id: v for v in dataset.videos}
  unknown = [vid for vid in points if vid not in by_id]
  if unknown:
    raise DataError(f"point labels: unknown video(s) {unknown[:3]}")
  out = {}
  dropped = 0
  for v in dataset.videos:
    u = np.zeros((v.num_segments, dataset.num_classes), np.uint8)
    for time_s, cls in points.get(v.video_id, ()):
      if not 0 <= cls < dataset.num_classes:
        raise DataError(f"point labels: video {v.video_id!r}: class index {cls} "
                        f"out of range [0, {dataset.num_classes})")
      t = int(math.floor(max(0.0, time_s) * v.feature_rate + _EPS))
      if t >= v.num_segments:
        dropped += 1
        continue
      u[t, cls] = 1
    out[v.video_id] = u
  return SegmentLabels(out, 0, dropped, "points", 0)


def save_segment_labels(path: str, labels: SegmentLabels) -> None:
  """Writes ``labels`` to a compressed ``.npz``, atomically.

  The file is written to a temporary file in the same folder and renamed over
  ``path``, so a reader never sees a half-written file. Layout: ``video_ids``
  (str), ``lengths`` (int64), ``labels`` (``(sum T, N) uint8``, the videos'
  arrays stacked in ``video_ids`` order) and the scalars ``num_clipped``,
  ``num_dropped``, ``mode``, ``seed``, ``version``.
  """
  ids = list(labels.labels)
  arrays = [np.asarray(labels.labels[i], np.uint8) for i in ids]
  n_cls = {a.shape[1] for a in arrays if a.ndim == 2}
  if any(a.ndim != 2 for a in arrays) or len(n_cls) > 1:
    raise ValueError("segment labels must all be (T, N) with the same N")
  num_classes = n_cls.pop() if n_cls else 0
  stacked = (np.concatenate(arrays, axis=0) if arrays
             else np.zeros((0, num_classes), np.uint8))
  with io.atomic_open(path, "wb", make_dirs=True) as f:
    np.savez_compressed(
        f, video_ids=np.array(ids, dtype=np.str_),
        lengths=np.array([a.shape[0] for a in arrays], np.int64),
        labels=stacked, num_classes=np.int64(num_classes),
        num_clipped=np.int64(labels.num_clipped),
        num_dropped=np.int64(labels.num_dropped),
        mode=np.str_(labels.mode), seed=np.int64(labels.seed),
        version=np.int64(_FORMAT_VERSION))


def load_segment_labels(path: str) -> SegmentLabels:
  """Reads a file :func:`save_segment_labels` wrote.

  Raises:
    DataError: missing, unreadable or inconsistent file (naming it).
  """
  try:
    with np.load(path, allow_pickle=False) as z:
      data = {k: z[k] for k in z.files}
  except FileNotFoundError:
    raise DataError(f"{path}: segment-label file not found") from None
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise DataError(f"{path}: cannot read segment labels ({type(e).__name__}: {e}); "
                    "delete the file to sample labels again") from None
  need = ("video_ids", "lengths", "labels", "num_classes", "num_clipped",
          "num_dropped", "mode", "seed", "version")
  missing = [k for k in need if k not in data]
  if missing:
    raise DataError(f"{path}: not a segment-label file (missing {missing})")
  if int(data["version"]) != _FORMAT_VERSION:
    raise DataError(f"{path}: segment-label format version {int(data['version'])}, "
                    f"expected {_FORMAT_VERSION}")
  ids = [str(i) for i in data["video_ids"]]
  lengths = data["lengths"].astype(np.int64)
  stacked = data["labels"]
  if (len(ids) != len(lengths) or stacked.ndim != 2 or
      stacked.shape[0] != int(lengths.sum()) or
      stacked.shape[1] != int(data["num_classes"])):
    raise DataError(f"{path}: inconsistent segment-label arrays")
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  labels = {vid: stacked[offsets[i]:offsets[i + 1]].astype(np.uint8)
            for i, vid in enumerate(ids)}
  return SegmentLabels(labels, int(data["num_clipped"]), int(data["num_dropped"]),
                       str(data["mode"]), int(data["seed"]))


def check_segment_labels(dataset: Dataset, labels: Mapping[str, np.ndarray], *,
                         source: str = "segment labels") -> None:
  """Raises DataError unless every video has ``(T, N)`` labels in {0, 1}."""
  for v in dataset.videos:
    if v.video_id not in labels:
      raise DataError(f"{source}: no labels for video {v.video_id!r}")
    u = np.asarray(labels[v.video_id])
    if u.shape != (v.num_segments, dataset.num_classes):
      raise DataError(f"{source}: video {v.video_id!r}: labels of shape {u.shape}, "
                      f"expected {(v.num_segments, dataset.num_classes)}")
    if u.size and (u.min() < 0 or u.max() > 1):
      raise DataError(f"{source}: video {v.video_id!r}: labels must be 0 or 1")

