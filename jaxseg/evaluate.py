"""Command line: detection mAP of an ActivityNet-format results file.

Usage::

  python -m jaxseg.evaluate --ground-truth GT.json --predictions PRED.json \\
      [--subset test] [--tiou 0.1:0.7:0.1] [--protocol activitynet|wtalc] \\
      [--feature-rate 1.5625] [--ambiguous AMB.json] [--per-class] \\
      [--output results.csv]

Prints mAP (%) per tIoU threshold and the averages papers report (THUMOS14:
0.1-0.5 and 0.1-0.7; ActivityNet: 0.5-0.95; see
:func:`jaxseg.evaluation.default_averages`), labeled with the protocol. With
``--output``, writes the per-class table (percent, with the averages and the
protocol as columns) atomically. A missing or malformed file prints one line
``error: <file>: ...`` on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Sequence

from jaxseg import evaluation
from jaxseg.data.video import I3D_FEATURE_RATE

EXIT_ERROR = 2


class _Error(Exception):
  """A one-line user error."""


def _load_json(path: str):
  try:
    with open(path, "r", encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    raise _Error(f"{path}: no such file") from None
  except IsADirectoryError:
    raise _Error(f"{path}: is a directory") from None
  except PermissionError:
    raise _Error(f"{path}: permission denied") from None
  except UnicodeDecodeError as e:
    raise _Error(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
  except json.JSONDecodeError as e:
    raise _Error(f"{path}: invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
  except OSError as e:
    raise _Error(f"{path}: cannot read: {e.strerror or e}") from None


def write_csv_atomic(df, path: str) -> None:
  """Writes ``df.to_csv()`` to ``path`` via a temporary file and ``os.replace``."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".csv", dir=directory)
  try:
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
      f.write(df.to_csv())
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except OSError:
      pass
    raise


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m jaxseg.evaluate",
      description="Detection mAP at temporal IoU of ActivityNet-format predictions.")
  p.add_argument("--ground-truth", required=True, metavar="GT.json",
                 help='ActivityNet-format ground truth {"database": {...}}')
  p.add_argument("--predictions", required=True, metavar="PRED.json",
                 help='ActivityNet-format results {"results": {vid: [...]}}')
  p.add_argument("--subset", default=None,
                 help="keep the ground-truth videos of this subset (default: all)")
  p.add_argument("--tiou", default="0.1:0.7:0.1",
                 help='thresholds, "start:stop:step" (stop inclusive) or "0.3,0.5" '
                      "(default: THUMOS14 0.1:0.7:0.1; ActivityNet: 0.5:0.95:0.05)")
  p.add_argument("--protocol", choices=evaluation.PROTOCOLS, default="activitynet",
                 help="activitynet (official eval_detection.py) or wtalc (W-TALC "
                      "getDetectionMAP: non-interpolated AP, first match, segment-index IoU)")
  p.add_argument("--feature-rate", type=float, default=I3D_FEATURE_RATE,
                 help="wtalc only: segments per second for the index IoU "
                      "(default 25/16, I3D; UntrimmedNet: 2.5)")
  p.add_argument("--ambiguous", default=None, metavar="AMB.json",
                 help="wtalc only: extra ambiguous intervals {vid: [[start, end], ...]}")
  p.add_argument("--per-class", action="store_true", help="also print the AP of each class")
  p.add_argument("--output", default=None, metavar="results.csv",
                 help="write the per-class table (percent) and averages to this CSV")
  return p


def run(args: argparse.Namespace) -> int:
  """Evaluates and prints; raises ``_Error`` on a user error."""
  try:
    thresholds = evaluation.parse_tiou(args.tiou)
  except ValueError as e:
    raise _Error(f"--tiou: {e}") from None
  if args.protocol != "wtalc":
    if args.ambiguous is not None:
      raise _Error("--ambiguous applies to --protocol wtalc only")
  gt = _load_json(args.ground_truth)
  pred = _load_json(args.predictions)
  amb = _load_json(args.ambiguous) if args.ambiguous is not None else None
  try:
    df = evaluation._detection_map(  # pylint: disable=protected-access
        gt, pred, thresholds, args.subset, protocol=args.protocol, class_names=None,
        feature_rate=args.feature_rate, ambiguous=amb, gt_source=args.ground_truth,
        pred_source=args.predictions, ambiguous_source=args.ambiguous or "ambiguous")
  except ValueError as e:
    raise _Error(str(e).replace("\n", " ")) from None

  summary = evaluation.summary_table(df)
  a = df.attrs
  print(f"Detection mAP (%), {evaluation.PROTOCOL_LABELS[args.protocol]}")
  print(f"{a['num_videos']} ground-truth videos"
        + (f" (subset {args.subset})" if args.subset is not None else "")
        + f", {len(df) - 1} classes, {a['num_instances']} instances, "
        f"{a['num_predictions']} predictions evaluated")
  if args.per_class:
    table = evaluation.results_table(df).drop(columns="protocol").round(1)
    print(table.to_string())
    print()
  print(summary.to_string())
  if args.output:
    try:
      write_csv_atomic(evaluation.results_table(df), args.output)
    except OSError as e:
      raise _Error(f"{args.output}: cannot write: {e.strerror or e}") from None
    print(f"wrote {args.output}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the CLI; returns the exit status (0, or 2 on a user error)."""
  args = build_parser().parse_args(argv)
  try:
    return run(args)
  except _Error as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
  sys.exit(main())
