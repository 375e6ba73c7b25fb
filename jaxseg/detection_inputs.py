"""ActivityNet-format ground truth and predictions, parsed into arrays for scoring.

:mod:`jaxseg.metrics` scores what these classes hold. Every malformed input
raises :class:`DataError` naming the source, the video and the field: missing
keys, non-numeric or non-finite bounds or scores, ``end < start``, a
ground-truth ``start < 0`` (as the dataset readers refuse it), an empty label.
Labels are taken without surrounding white space, as the readers take them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np

from jaxseg.data.video import DataError


def _real(x, source: str, vid, field: str, *, allow_str: bool) -> float:
  """A finite float from a JSON number (or a numeric string when allowed)."""
  t = type(x)
  if t is float or t is int:  # fast path
    v = float(x)
    if math.isfinite(v):
      return v
    raise DataError(f"{source}: video {vid!r}: field {field!r}: {x!r} is not finite")
  if isinstance(x, (bool, np.bool_)):
    ok = False
  elif isinstance(x, numbers.Real):
    ok = True
  elif allow_str and isinstance(x, str):
    ok = True
  else:
    ok = False
  if ok:
    try:
      v = float(x)
    except (TypeError, ValueError):
      ok = False
  if not ok:
    raise DataError(f"{source}: video {vid!r}: field {field!r}: {x!r} is not a number")
  if not math.isfinite(v):
    raise DataError(f"{source}: video {vid!r}: field {field!r}: {x!r} is not finite")
  return v


def _segment(seg, source: str, vid, field: str) -> tuple[float, float]:
  bad = type(seg) is not list and (isinstance(seg, (str, bytes, Mapping))
                                   or not hasattr(seg, "__len__"))
  if bad or len(seg) != 2:
    raise DataError(
        f"{source}: video {vid!r}: field {field!r}: expected [start, end], got {seg!r}")
  s = _real(seg[0], source, vid, field + "[0]", allow_str=True)
  e = _real(seg[1], source, vid, field + "[1]", allow_str=True)
  if e < s:
    raise DataError(f"{source}: video {vid!r}: field {field!r}: end {e} < start {s}")
  return s, e


def _label(label, source: str, vid, field: str) -> str:
  """A class name without surrounding white space ("Diving " is "Diving", as
  the readers take it), never empty."""
  if type(label) is not str and not isinstance(label, str):
    raise DataError(
        f"{source}: video {vid!r}: field {field + '.label'!r}: {label!r} is not a string")
  out = label.strip()
  if not out:
    raise DataError(f"{source}: video {vid!r}: field {field + '.label'!r}: empty class name")
  return out


def _require_key(d, key: str, source: str, vid=None):
  if type(d) is dict and key in d:  # fast path
    return d[key]
  if not isinstance(d, Mapping):
    where = f"video {vid!r}: " if vid is not None else ""
    raise DataError(f"{source}: {where}expected an object with {key!r}, got {type(d).__name__}")
  if key not in d:
    where = f"video {vid!r}: " if vid is not None else ""
    raise DataError(f"{source}: {where}missing field {key!r}")
  return d[key]


class GroundTruth:
  """Ground-truth instances in document order (database order, then annotations).

  Attributes:
    video_ids: the kept videos, in database order.
    vid: ``(G,) int64`` video code (index into ``video_ids``) per instance.
    seg: ``(G, 2) float64`` bounds in seconds.
    label: the label string per instance.
  """

  def __init__(self, ground_truth, subset, source: str):
    database = _require_key(ground_truth, "database", source)
    if not isinstance(database, Mapping):
      raise DataError(f"{source}: field 'database' must be an object of videos")
    self.video_ids: list = []
    vids, segs, labels = [], [], []
    subsets = set()
    for vid, entry in database.items():
      if subset is not None:
        s = _require_key(entry, "subset", source, vid)
        subsets.add(s if isinstance(s, str) else repr(s))
        if s != subset:
          continue
      anns = _require_key(entry, "annotations", source, vid)
      if not isinstance(anns, (list, tuple)):
        raise DataError(f"{source}: video {vid!r}: field 'annotations' must be a list")
      code = len(self.video_ids)
      self.video_ids.append(vid)
      for j, ann in enumerate(anns):
        field = f"annotations[{j}]"
        if not isinstance(ann, Mapping):
          raise DataError(f"{source}: video {vid!r}: field {field!r}: expected an object")
        seg = _require_key(ann, "segment", source, vid)
        label = _label(_require_key(ann, "label", source, vid), source, vid, field)
        start, end = _segment(seg, source, vid, field + ".segment")
        if start < 0:
          raise DataError(f"{source}: video {vid!r}: field {field + '.segment'!r}: "
                          f"start {start} < 0")
        segs.append((start, end))
        vids.append(code)
        labels.append(label)
    if subset is not None and not self.video_ids:
      raise DataError(f"{source}: no video in subset {subset!r}; subsets present: "
                      f"{sorted(subsets)}")
    self.vid = np.asarray(vids, np.int64)
    self.seg = np.asarray(segs, np.float64).reshape(-1, 2)
    self.label = labels


class Predictions:
  """Predictions in document order (results order, then list order).

  Attributes:
    vid: ``(P,) int64`` code of the video in the ground truth, -1 if absent.
    seg: ``(P, 2) float64`` bounds in seconds.
    score: ``(P,) float64``.
    label: the label string per prediction.
  """

  def __init__(self, predictions, video_code: Mapping, source: str):
    results = _require_key(predictions, "results", source)
    if not isinstance(results, Mapping):
      raise DataError(f"{source}: field 'results' must be an object of videos")
    vids, segs, scores, labels = [], [], [], []
    self.first_video: dict = {}  # label -> first video predicting it (for errors)
    for vid, preds in results.items():
      if not isinstance(preds, (list, tuple)):
        raise DataError(f"{source}: video {vid!r}: expected a list of predictions")
      code = video_code.get(vid, -1)
      for j, p in enumerate(preds):
        field = f"results[{j}]"
        if type(p) is not dict and not isinstance(p, Mapping):
          raise DataError(f"{source}: video {vid!r}: field {field!r}: expected an object")
        label = _label(_require_key(p, "label", source, vid), source, vid, field)
        scores.append(_real(_require_key(p, "score", source, vid), source, vid, field + ".score",
                            allow_str=False))
        segs.append(_segment(_require_key(p, "segment", source, vid), source, vid,
                             field + ".segment"))
        vids.append(code)
        labels.append(label)
        self.first_video.setdefault(label, vid)
    self.vid = np.asarray(vids, np.int64)
    self.seg = np.asarray(segs, np.float64).reshape(-1, 2)
    self.score = np.asarray(scores, np.float64)
    self.label = labels


def parse_ambiguous(ambiguous, video_code: Mapping, source: str):
  """``{vid: [[s, e], ...]}`` -> list of ``(code, s, e)`` for videos in the GT."""
  if ambiguous is None:
    return []
  if not isinstance(ambiguous, Mapping):
    raise DataError(f"{source}: expected an object {{video: [[start, end], ...]}}")
  out = []
  for vid, segs in ambiguous.items():
    if not isinstance(segs, (list, tuple)):
      raise DataError(f"{source}: video {vid!r}: expected a list of [start, end]")
    parsed = [_segment(s, source, vid, f"[{j}]") for j, s in enumerate(segs)]
    if vid in video_code:
      out.extend((video_code[vid], s, e) for s, e in parsed)
  return out
