"""Command line: score an ActivityNet-format results file (detection mAP).

Usage::

  python -m jaxseg.score --ground-truth GT.json --predictions PRED.json \\
      [--subset test] [--tiou 0.1:0.7:0.1] [--protocol activitynet|wtalc] \\
      [--feature-rate 1.5625] [--ambiguous AMB.txt|AMB.json] [--per-class] \\
      [--output results.csv]

Prints mAP (%) per tIoU threshold and the averages papers report (THUMOS14:
0.1-0.5 and 0.1-0.7; ActivityNet: 0.5-0.95; see
:func:`jaxseg.map_summary.default_averages`), labeled with the protocol. With
``--output``, writes the per-class table (percent, with the averages and the
protocol as columns) atomically. A missing or malformed file prints one line
``error: <file>: ...`` on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Sequence

from jaxseg import cli
from jaxseg import map_summary
from jaxseg import metrics
from jaxseg.config import PROTOCOLS
from jaxseg.data import io
from jaxseg.data import reader_common
from jaxseg.data.video import I3D_FEATURE_RATE, DataError

EXIT_ERROR = 2


class _Error(Exception):
  """A one-line user error."""


def _load_json(path: str, what: str):
  try:
    return io.load_json(path, what)
  except DataError as e:
    raise _Error(str(e)) from None


def _check_output(output: str, inputs: dict) -> None:
  """``--output`` is never an input (nor a link to one): the CSV would replace it."""
  out = os.path.realpath(output)
  for flag, path in inputs.items():
    if path and os.path.realpath(path) == out:
      raise _Error(f"--output {output}: is the {flag} file; choose another path")


def build_parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(
      prog="python -m jaxseg.score",
      description="Detection mAP at temporal IoU of ActivityNet-format predictions.")
  p.add_argument("--ground-truth", required=True, metavar="GT.json",
                 help='ActivityNet-format ground truth {"database": {...}}')
  p.add_argument("--predictions", required=True, metavar="PRED.json",
                 help='ActivityNet-format results {"results": {vid: [...]}}')
  p.add_argument("--subset", default=None,
                 help="keep the ground-truth videos of this subset (default: all)")
  p.add_argument("--tiou", default=None,
                 help='thresholds, "start:stop:step" (stop inclusive) or "0.3,0.5" '
                      "(default: THUMOS14 0.1:0.7:0.1; ActivityNet: 0.5:0.95:0.05)")
  p.add_argument("--protocol", choices=PROTOCOLS, default="activitynet",
                 help="activitynet (official eval_detection.py) or wtalc (W-TALC "
                      "getDetectionMAP: non-interpolated AP, first match, segment-index IoU)")
  p.add_argument("--feature-rate", type=float, default=I3D_FEATURE_RATE,
                 help="wtalc only: segments per second for the index IoU "
                      "(default 25/16, I3D; UntrimmedNet: 2.5)")
  p.add_argument("--ambiguous", default=None, metavar="AMB.txt|AMB.json",
                 help="ambiguous intervals the evaluation ignores: W-TALC's "
                      "Ambiguous_test.txt ('video start end' lines, seconds) or a JSON "
                      "{vid: [[start, end], ...]}; both protocols (activitynet: "
                      "predictions overlapping one are removed)")
  p.add_argument("--per-class", action="store_true", help="also print the AP of each class")
  p.add_argument("--output", default=None, metavar="results.csv",
                 help="write the per-class table (percent) and averages to this CSV")
  return p


def run(args: argparse.Namespace) -> int:
  """Evaluates and prints; raises ``_Error`` on a user error."""
  try:
    thresholds = (metrics.THUMOS14_TIOU if args.tiou is None
                  else metrics.parse_tiou(args.tiou))
  except ValueError as e:
    raise _Error(f"--tiou: {e}") from None
  if not (math.isfinite(args.feature_rate) and args.feature_rate > 0):
    raise _Error(f"--feature-rate: segments per second must be a number > 0, got "
                 f"{args.feature_rate}")
  if args.output:
    _check_output(args.output, {"--ground-truth": args.ground_truth,
                                "--predictions": args.predictions,
                                "--ambiguous": args.ambiguous})
  gt = _load_json(args.ground_truth, "ground-truth")
  pred = _load_json(args.predictions, "predictions")
  amb = None
  if args.ambiguous is not None:
    try:
      amb = {v: [list(s) for s in segs]
             for v, segs in reader_common.read_ambiguous(args.ambiguous).items()}
    except DataError as e:
      raise _Error(str(e)) from None
  try:
    df = metrics.detection_map(
        gt, pred, thresholds, args.subset, protocol=args.protocol, class_names=None,
        feature_rate=args.feature_rate, ambiguous=amb, gt_source=args.ground_truth,
        pred_source=args.predictions, ambiguous_source=args.ambiguous or "ambiguous")
  except ValueError as e:
    raise _Error(str(e).replace("\n", " ")) from None

  summary = map_summary.summarize(df).round(1)
  a = df.attrs
  print(f"Detection mAP (%), {metrics.PROTOCOL_LABELS[args.protocol]}")
  print(f"{a['num_videos']} ground-truth videos"
        + (f" (subset {args.subset})" if args.subset is not None else "")
        + f", {len(df) - 1} classes, {a['num_instances']} instances, "
        f"{a['num_predictions']} predictions evaluated")
  if args.per_class:
    table = map_summary.summarize(df, per_class=True).drop(columns="protocol").round(1)
    print(table.to_string())
    print()
  print(summary.to_string())
  if args.output:
    try:
      io.atomic_write_text(args.output, map_summary.summarize(df, per_class=True).to_csv())
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
