"""Averages of a detection mAP table over tIoU ranges, and its one summary.

``detection_map`` (:mod:`jaxseg.metrics`) gives AP per class and threshold;
:func:`summarize` turns it into the reported row (mAP per threshold and the
averages the papers report, in percent), used by training runs, ``--mode
eval`` and ``python -m jaxseg.score`` alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from jaxseg import metrics
from jaxseg.config import ACTIVITYNET_AVERAGES, THUMOS14_AVERAGES

_TOL = 1e-9  # threshold-label comparisons



def _threshold_columns(df: pd.DataFrame) -> list[float]:
  return [float(c) for c in df.columns]


def average_over(df: pd.DataFrame, low: float, high: float) -> float:
  """Mean of the ``"mean"`` row over the thresholds in ``[low, high]``.

  Args:
    df: a :func:`detection_map` table.
    low, high: inclusive range of thresholds (compared with 1e-9 tolerance).

  Returns:
    The average mAP as a fraction in [0, 1].

  Raises:
    ValueError: if no threshold column lies in the range.
  """
  cols = _columns_in(df, low, high)
  return float(np.mean(df.loc[metrics.MEAN_ROW, cols].to_numpy(np.float64)))


def _columns_in(df: pd.DataFrame, low: float, high: float) -> list:
  """The threshold columns of ``df`` in ``[low, high]`` (1e-9 tolerance); at least one."""
  cols = [c for c in df.columns if low - _TOL <= float(c) <= high + _TOL]
  if not cols:
    raise ValueError(f"no tIoU threshold in [{low}, {high}]; thresholds: "
                     f"{_threshold_columns(df)}")
  return cols


def default_averages(thresholds: Iterable[float]) -> tuple[tuple[str, float, float], ...]:
  """The averages papers report for a threshold set.

  THUMOS14 ``avg0.1:0.5`` and ``avg0.1:0.7`` and ActivityNet ``avg0.5:0.95``,
  each when both its ends are among ``thresholds``; otherwise the average over
  all thresholds, named ``avg{low}:{high}``.
  """
  ts = [float(t) for t in thresholds]
  has = lambda x: any(abs(t - x) < _TOL for t in ts)  # noqa: E731
  out = tuple(a for a in THUMOS14_AVERAGES + ACTIVITYNET_AVERAGES if has(a[1]) and has(a[2]))
  if out or len(ts) < 2:
    return out
  lo, hi = min(ts), max(ts)
  return ((f"avg{lo:g}:{hi:g}", lo, hi),)


def _resolve_averages(df, averages, lenient: bool):
  if averages is None:
    return default_averages(_threshold_columns(df))
  ts = _threshold_columns(df)
  out = []
  for name, lo, hi in averages:
    if lenient:
      if not any(float(lo) - _TOL <= t <= float(hi) + _TOL for t in ts):
        continue
    else:
      for end in (lo, hi):
        if not any(abs(t - float(end)) < _TOL for t in ts):
          raise ValueError(f"average {name!r}: threshold {end} is not among {ts}")
    out.append((str(name), float(lo), float(hi)))
  return tuple(out)


def summarize(df: pd.DataFrame, averages: Sequence[tuple[str, float, float]] | None = None,
              *, per_class: bool = False, lenient: bool = False) -> pd.DataFrame:
  """mAP (%) per threshold and the averages: the line papers print.

  The one summary of a :func:`detection_map` table: the training run's
  results, the scoring CLI's table and its ``--output`` CSV all come from it.

  Args:
    df: a :func:`detection_map` table.
    averages: ``(name, low, high)`` triples, the mean over the thresholds of
      ``df`` in each inclusive range, whose ends must be thresholds of ``df``
      (so an ActivityNet table is not silently averaged over the THUMOS14
      range); ``None``: :func:`default_averages`.
    per_class: one row per class and the mean (index: class, plus a
      ``"protocol"`` column) instead of the mean row alone (index: the
      protocol, ``df.attrs["protocol"]``).
    lenient: a run's ``config.eval.averages``: the ends need not be
      thresholds, and an average whose range holds none is left out (what a
      training run reports whatever its ``eval.tiou_thresholds``).

  Returns:
    A DataFrame, columns ``"mAP@0.1"``, ... then the average names, values in
    percent, unrounded (``.round(1)`` gives what papers print); ``attrs`` as
    ``df``'s.
  """
  avgs = _resolve_averages(df, averages, lenient)
  protocol = df.attrs.get("protocol", "activitynet")
  rows = list(df.index) if per_class else [metrics.MEAN_ROW]
  records = []
  for r in rows:
    values = df.loc[r]
    rec = {f"mAP@{float(t):g}": 100.0 * float(values[t]) for t in df.columns}
    for name, lo, hi in avgs:
      cols = _columns_in(df, lo, hi)
      rec[name] = 100.0 * float(np.mean(values[cols].to_numpy(np.float64)))
    records.append(rec)
  if per_class:
    out = pd.DataFrame(records, index=df.index)
    out["protocol"] = protocol
  else:
    out = pd.DataFrame(records, index=pd.Index([protocol], name="protocol"))
  out.attrs.update(df.attrs)
  return out
