"""The data model: a video with per-segment features and action instances.

Every reader in :mod:`jaxseg.data.readers` produces a :class:`Dataset`; every
later stage (segment-label sampling, batching, evaluation) consumes one.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np

# I3D on 25 fps video: one feature per 16 frames.
I3D_FEATURE_RATE = 25.0 / 16.0


class DataError(ValueError):
  """Bad input data. The message names the file, the video and the field."""


@dataclasses.dataclass(frozen=True)
class Instance:
  """One annotated action instance, in seconds.

  Attributes:
    start: start time in seconds.
    end: end time in seconds (``end >= start``).
    label: class index into :attr:`Dataset.class_names`.
  """
  start: float
  end: float
  label: int


@dataclasses.dataclass
class Video:
  """One untrimmed video.

  Attributes:
    video_id: the video's id (the feature file's stem).
    subset: the split it belongs to, e.g. ``"validation"`` or ``"test"``.
    features: ``(T, D) float32`` per-segment features.
    feature_rate: segments per second (25/16 for I3D on 25 fps video).
    duration: duration in seconds.
    instances: the action instances.
    extra_labels: class indices known present from video-level labels only
      (W-TALC's ``labels_all.npy``: a video may have a label and no
      annotated instance); ``y`` is their union with the instances' labels.
  """
  video_id: str
  subset: str
  features: np.ndarray
  feature_rate: float
  duration: float
  instances: list[Instance] = dataclasses.field(default_factory=list)
  extra_labels: tuple[int, ...] = ()

  @property
  def num_segments(self) -> int:
    return int(self.features.shape[0])

  def video_labels(self, num_classes: int) -> np.ndarray:
    """``(N,) float32`` multi-hot vector of the classes present (paper 4.1, ``y``)."""
    y = np.zeros((num_classes,), np.float32)
    for inst in self.instances:
      y[inst.label] = 1.0
    for c in self.extra_labels:
      y[c] = 1.0
    return y


@dataclasses.dataclass
class Dataset:
  """A list of videos sharing one class list and one feature dimension.

  Attributes:
    class_names: the ``N`` class names (label index order).
    videos: the videos.
    skipped_videos: ``[(video_id, reason), ...]`` the reader skipped
      (``data.skip_bad_videos``); kept by :meth:`subset` and :meth:`select`.
    ambiguous: ``{video_id: [(start, end), ...]}`` seconds the THUMOS14
      evaluation ignores (W-TALC's ``Ambiguous_test.txt``); kept by
      :meth:`subset` and :meth:`select`, and passed to every evaluation.
    notes: lines the data summary prints about how the data was read (the
      detected feature layout, ...).
    stream_widths: ``{stream: width}`` of a stream layout, in the order the
      streams are concatenated on D (empty for joint features).
  """
  class_names: list[str]
  videos: list[Video]
  skipped_videos: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  ambiguous: dict[str, list[tuple[float, float]]] = dataclasses.field(default_factory=dict)
  notes: list[str] = dataclasses.field(default_factory=list)
  stream_widths: dict[str, int] = dataclasses.field(default_factory=dict)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def feature_dim(self) -> int:
    return int(self.videos[0].features.shape[1]) if self.videos else 0

  def subset(self, names: str | Sequence[str], *, source: str = "dataset") -> "Dataset":
    """The videos whose subset is ``names`` (one name or several).

    Raises:
      DataError: if no video is in those subsets.
    """
    if isinstance(names, str):
      names = [names]
    names = list(names)
    videos = [v for v in self.videos if v.subset in names]
    if not videos:
      present = sorted({v.subset for v in self.videos})
      raise DataError(
          f"{source}: subset {names} is empty; subsets present: {present}")
    return dataclasses.replace(self, videos=videos,
                               skipped_videos=list(self.skipped_videos),
                               notes=list(self.notes))

  def select(self, video_ids: Iterable[str], *, source: str = "split file") -> "Dataset":
    """The videos with the given ids, in the given order.

    Raises:
      DataError: if an id is unknown or the list is empty.
    """
    by_id = {v.video_id: v for v in self.videos}
    ids = list(video_ids)
    if not ids:
      raise DataError(f"{source}: the split is empty")
    missing = [i for i in ids if i not in by_id]
    if missing:
      raise DataError(
          f"{source}: {len(missing)} video id(s) not in the annotations, "
          f"e.g. {missing[:3]}")
    return dataclasses.replace(self, videos=[by_id[i] for i in ids],
                               skipped_videos=list(self.skipped_videos),
                               notes=list(self.notes))

  def ambiguous_of_videos(self) -> dict[str, list[list[float]]] | None:
    """The ambiguous intervals of this dataset's videos as
    :func:`jaxseg.metrics.detection_map` takes them; None when there is none
    (so an evaluation without them is unchanged)."""
    ids = {v.video_id for v in self.videos}
    out = {vid: [[float(s), float(e)] for s, e in segs]
           for vid, segs in self.ambiguous.items() if vid in ids and segs}
    return out or None

  def ground_truth(self) -> dict:
    """Ground truth in ActivityNet format: ``{"database": {vid: {...}}}``.

    This is the input :func:`jaxseg.metrics.detection_map` takes.
    """
    database = {}
    for v in self.videos:
      database[v.video_id] = {
          "subset": v.subset,
          "duration": float(v.duration),
          "annotations": [
              {"segment": [float(i.start), float(i.end)],
               "label": self.class_names[i.label]} for i in v.instances
          ],
      }
    return {"database": database}

  def summary(self) -> str:
    """A short human-readable table of the dataset's statistics."""
    lines = [f"{len(self.videos)} videos, {self.num_classes} classes, "
             f"feature dim {self.feature_dim}"]
    lines += list(self.notes)
    subsets = sorted({v.subset for v in self.videos})
    for s in subsets:
      vids = [v for v in self.videos if v.subset == s]
      lengths = np.array([v.num_segments for v in vids])
      n_inst = np.array([len(v.instances) for v in vids])
      lines.append(
          f"  {s:>12}: {len(vids):5d} videos | segments/video "
          f"median {np.median(lengths):.0f} (min {lengths.min()}, max {lengths.max()}) | "
          f"instances {n_inst.sum()} (median {np.median(n_inst):.0f}/video)")
    return "\n".join(lines)
