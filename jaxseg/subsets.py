"""Which subsets a run trains and tests on, with ``"auto"`` resolved.

THUMOS14's training split is ``validation`` in the official release and the
W-TALC bundle but ``train`` in BaSNet's and LACP's ``gt.json``; ActivityNet's
are ``training`` / ``validation``. ``data.train_subset`` and
``data.test_subset`` may be ``config.SUBSET_AUTO``: the first pair of
``config.AUTO_SUBSET_PAIRS`` whose two subsets the dataset has (an explicit
value of the other one must match the pair). An explicit value wins.
"""

from __future__ import annotations

from typing import Sequence

from jaxseg.config import AUTO_SUBSET_PAIRS, SUBSET_AUTO
from jaxseg.data.video import DataError


def resolve_subsets(train_subset: str, test_subset: str,
                    present: Sequence[str]) -> tuple[str, str, str]:
  """``(train, test, note)``: the subset names to use and a line saying how.

  Args:
    train_subset, test_subset: the configured names, each possibly ``"auto"``.
    present: the subsets the dataset holds.

  Raises:
    DataError: ``"auto"`` and no fitting pair is present (lists the subsets).
  """
  present = sorted(set(present))
  if SUBSET_AUTO not in (train_subset, test_subset):
    return train_subset, test_subset, ""
  pairs = [p for p in AUTO_SUBSET_PAIRS
           if train_subset in (SUBSET_AUTO, p[0]) and test_subset in (SUBSET_AUTO, p[1])]
  for k, (tr, te) in enumerate(pairs):
    if tr in present and te in present:
      skipped = [f"no {name!r}" for p in pairs[:k] for name in p if name not in present]
      why = "; ".join(dict.fromkeys(skipped)) or f"the first of {list(AUTO_SUBSET_PAIRS)}"
      return tr, te, (f"train subset: {tr!r}, test subset: {te!r} (auto: {why} subset "
                      f"in the annotations, which hold {present})"
                      if skipped else
                      f"train subset: {tr!r}, test subset: {te!r} (auto: {why} present)")
  raise DataError(
      f"data.train_subset={train_subset!r}, data.test_subset={test_subset!r}: no pair of "
      f"{[list(p) for p in pairs]} is in the annotations, which hold subsets {present}; "
      "set data.train_subset and data.test_subset")
