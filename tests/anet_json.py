"""ActivityNet-format ground truth and results built from tuples, for the tests."""

from __future__ import annotations


def ground_truth(videos: dict, subset: str = "test", duration: float = 100.0) -> dict:
  """``{vid: [(start, end, label), ...]}`` -> ActivityNet ground truth."""
  return {"database": {
      v: {"subset": subset, "duration": duration,
          "annotations": [{"segment": [s, e], "label": l} for s, e, l in anns]}
      for v, anns in videos.items()}}


def results(videos: dict) -> dict:
  """``{vid: [(start, end, label, score), ...]}`` -> ActivityNet results."""
  return {"results": {
      v: [{"label": l, "score": sc, "segment": [s, e]} for s, e, l, sc in ps]
      for v, ps in videos.items()}}
