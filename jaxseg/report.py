"""Compare finished runs: one table and one overlay plot.

  python -m jaxseg.report runs/a runs/b runs/seeds --out runs/report

Each argument is a run's work directory (it holds ``results.json``) or a
folder of such directories (e.g. the ``seed_*`` runs of ``--seeds N``). Writes
``report.csv`` and ``report.md`` (one row per run: mAP per tIoU, the averages,
classification mAP, and, as columns, every config field whose value differs
between the runs) and ``report.png`` (mAP against tIoU, one line per run), and
prints the markdown table. The ``commit`` column names the code each run came
from; runs made from uncommitted code (a ``-dirty`` commit) mark the report
"NOT PUBLISHABLE" at the top of ``report.md`` and on stderr. A malformed
``results.json`` is one ``error:`` line naming the file and field (exit 2).
"""

from __future__ import annotations

import math
import os
import sys
from typing import Sequence

import pandas as pd

from jaxseg import cli
from jaxseg import config as config_lib
from jaxseg.data import io
from jaxseg.data.video import DataError

# Config fields that name where a run lives rather than what it did.
_LOCATION_FIELDS = ("data.synthetic.output_dir",)


def find_runs(paths: Sequence[str]) -> list[str]:
  """The run directories under ``paths``: each path, or its sub-folders with results."""
  runs = []
  for path in paths:
    if os.path.isfile(os.path.join(path, "results.json")):
      runs.append(path)
      continue
    if not os.path.isdir(path):
      raise DataError(f"{path}: not a directory")
    subs = sorted(os.path.join(path, d) for d in os.listdir(path)
                  if os.path.isfile(os.path.join(path, d, "results.json")))
    if not subs:
      raise DataError(f"{path}: no results.json in it nor in its sub-folders "
                         "(is the run finished?)")
    runs.extend(subs)
  return runs


def load_results(run: str, checkpoint: str) -> dict:
  """A run's ``results.json``, checked for what the report reads.

  Returns:
    The parsed file: ``checkpoint`` an object of numbers (the metrics),
    ``provenance`` an object (its ``config`` an object, when present).

  Raises:
    DataError: naming the file and the field that is missing or malformed.
  """
  path = os.path.join(run, "results.json")
  res = io.load_json(path, "results")
  if not isinstance(res, dict):
    raise DataError(f"{path}: expected an object, got {type(res).__name__}")
  metrics = res.get(checkpoint)
  if metrics is None:
    raise DataError(f"{path}: no {checkpoint!r} results")
  if not isinstance(metrics, dict) or not metrics:
    raise DataError(f"{path}: field {checkpoint!r}: expected an object of metrics, got "
                    f"{metrics!r:.60}")
  for key, value in metrics.items():
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise DataError(f"{path}: field {checkpoint}.{key}: expected a number, got "
                      f"{value!r:.60}")
    try:
      number = float(value)  # NaN: a metric with no class to average (kept)
      threshold = float(key.split("@", 1)[1]) if key.startswith("mAP@") else 0.5
    except (OverflowError, ValueError):
      number = threshold = math.nan
    if not 0 < threshold <= 1 or math.isinf(number) or (math.isnan(number)
                                                         and isinstance(value, int)):
      raise DataError(f"{path}: field {checkpoint}.{key}: not a metric jaxseg writes "
                      f"(mAP@<tIoU in (0, 1]> of a finite number), got {value!r:.60}")
  provenance = res.get("provenance", {})
  if not isinstance(provenance, dict) or not isinstance(provenance.get("config", {}), dict):
    raise DataError(f"{path}: field 'provenance': expected an object with a 'config' "
                    f"object, got {provenance!r:.60}")
  return res


def dirty_runs(results: Sequence[dict], names: Sequence[str]) -> list[str]:
  """The runs whose provenance names uncommitted code (a ``-dirty`` commit)."""
  return [name for name, res in zip(names, results)
          if str(res.get("provenance", {}).get("git_commit") or "").endswith("-dirty")]


def run_table(runs: Sequence[str], checkpoint: str = "final") -> pd.DataFrame:
  """One row per run: its metrics at ``checkpoint``, the code it came from
  (``commit``) and the config fields that differ.

  Raises:
    DataError: a malformed ``results.json`` (:func:`load_results`).
  """
  rows, configs = [], []
  names = _names(runs)
  results = [load_results(run, checkpoint) for run in runs]
  for name, res in zip(names, results):
    row = {"run": name, **res[checkpoint]}
    choice = res.get("rules", {})
    if isinstance(choice, dict) and isinstance(choice.get(checkpoint), dict):
      row["rules"] = str(choice[checkpoint].get("chosen"))  # the inference rules used
    row["commit"] = str(res.get("provenance", {}).get("git_commit") or "(unknown)")
    rows.append(row)
    cfg = config_lib.flatten(res.get("provenance", {}).get("config", {}))
    configs.append({k: v for k, v in cfg.items() if k not in _LOCATION_FIELDS})
  table = pd.DataFrame(rows).set_index("run")
  keys = sorted(set().union(*configs)) if configs else []
  differing = [k for k in keys
               if len({repr(c.get(k, "(unset)")) for c in configs}) > 1]
  for k in differing:
    table[k] = [str(c.get(k, "(unset)")) for c in configs]
  return table


def _names(runs: Sequence[str]) -> list[str]:
  """Short unique names: the paths relative to their common parent."""
  absolute = [os.path.abspath(r) for r in runs]
  if len(absolute) == 1:
    return [os.path.basename(absolute[0])]
  parent = os.path.commonpath(absolute)
  names = [os.path.relpath(a, parent) for a in absolute]
  return [n if n != "." else os.path.basename(parent) for n in names]


def annotation_time_points(label_modes: Sequence[str], values: Sequence[float],
                           annotation_time: Sequence[float]) -> pd.DataFrame:
  """Fig. 5's points: per supervision level, its annotation time and the metric's spread.

  Args:
    label_modes: each run's ``labels.mode``.
    values: each run's metric (same order).
    annotation_time: ``(label mode, time)`` pairs (``config.ablation.annotation_time``).

  Returns:
    One row per supervision level present: ``label_mode``, ``annotation_time``,
    ``mean``, ``std`` (sample; NaN for one run), ``runs``. Modes without an
    annotation time are left out.
  """
  times = {mode: float(t) for mode, t in annotation_time}
  df = pd.DataFrame({"label_mode": list(label_modes), "value": list(values)})
  df = df[df["label_mode"].isin(list(times))]
  g = df.groupby("label_mode", sort=False)["value"]
  out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "runs": g.size()}).reset_index()
  out.insert(1, "annotation_time", [float(times[m]) for m in out["label_mode"]])
  return out.sort_values("annotation_time").reset_index(drop=True)


def write_annotation_time(points: pd.DataFrame, out_dir: str, metric: str,
                          caption: str) -> list[str]:
  """``fig5.csv``, ``fig5.md`` (with ``caption``) and ``fig5.png`` under ``out_dir``."""
  from jaxseg import plots  # pylint: disable=g-import-not-at-top
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  paths = [os.path.join(out_dir, f"fig5.{ext}") for ext in ("csv", "md", "png")]
  io.atomic_write_text(paths[0], points.round(4).to_csv(index=False))
  io.atomic_write_text(paths[1], f"# {metric} against annotation time\n\n{caption}\n\n"
                       + points.round(2).to_markdown(index=False) + "\n")
  fig = plots.plot_annotation_time(points, metric=metric)
  with io.atomic_open(paths[2], "wb") as f:
    f.write(_png(fig))
  plt.close(fig)
  return paths


def _pairs(items: Sequence[str]) -> list[tuple[str, float]]:
  out = []
  for item in items:
    mode, _, value = item.partition("=")
    try:
      out.append((mode, float(value)))
    except ValueError:
      raise DataError(f"--annotation-time: expected MODE=TIME, got {item!r}") from None
  return out


def metric_columns(table: pd.DataFrame) -> list[str]:
  return [c for c in table.columns if c.startswith("mAP@")]


def label_modes(runs: Sequence[str]) -> list[str]:
  """Each run's ``labels.mode`` (its provenance's ``label_mode``), for ``--fig5``.

  Raises:
    DataError: a run without one, naming its file.
  """
  modes = []
  for run in runs:
    path = os.path.join(run, "results.json")
    mode = io.load_json(path, "results").get("provenance", {}).get("label_mode")
    if not isinstance(mode, str) or not mode:
      raise DataError(f"{path}: field 'provenance.label_mode': --fig5 needs the label "
                      f"mode each run was trained with, got {mode!r:.60}")
    modes.append(mode)
  return modes


def plot_runs(table: pd.DataFrame, path: str) -> str | None:
  """mAP against tIoU, one line per run; None where matplotlib is missing."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  cols = metric_columns(table)
  x = [float(c.split("@")[1]) for c in cols]
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, row in table.iterrows():
    ax.plot(x, [row[c] for c in cols], marker="o", label=str(name))
  ax.set(xlabel="tIoU threshold", ylabel="mAP (%)", title="detection mAP by run")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize="small")
  fig.tight_layout()
  with io.atomic_open(path, "wb") as f:
    f.write(_png(fig))
  plt.close(fig)
  return path


def _png(fig) -> bytes:
  import io as std_io  # pylint: disable=g-import-not-at-top
  buf = std_io.BytesIO()
  fig.savefig(buf, format="png", dpi=120)
  return buf.getvalue()


def dirty_warning(table: pd.DataFrame) -> str:
  """The line that marks a report with runs from uncommitted code ("" if none)."""
  dirty = [str(n) for n, c in table["commit"].items() if str(c).endswith("-dirty")] \
      if "commit" in table.columns else []
  if not dirty:
    return ""
  return (f"NOT PUBLISHABLE: {len(dirty)} of {len(table)} run(s) were made from "
          f"uncommitted code (a '-dirty' commit): {', '.join(dirty[:5])}"
          + (" ..." if len(dirty) > 5 else "") + "; commit and rerun them before "
          "publishing these numbers.")


def write_report(table: pd.DataFrame, out_dir: str) -> list[str]:
  os.makedirs(out_dir, exist_ok=True)
  csv_path = os.path.join(out_dir, "report.csv")
  md_path = os.path.join(out_dir, "report.md")
  io.atomic_write_text(csv_path, table.round(4).to_csv())
  warning = dirty_warning(table)
  io.atomic_write_text(md_path, (f"**{warning}**\n\n" if warning else "")
                       + markdown(table) + "\n")
  paths = [csv_path, md_path]
  png = plot_runs(table, os.path.join(out_dir, "report.png"))
  if png:
    paths.append(png)
  return paths


def markdown(table: pd.DataFrame) -> str:
  try:
    return table.to_markdown(floatfmt=".2f")
  except ImportError:  # tabulate missing
    return table.round(2).to_string()


def main(argv: Sequence[str] | None = None) -> int:
  p = cli.ArgumentParser(prog="python -m jaxseg.report",
                              description=__doc__.split("\n")[0])
  p.add_argument("runs", nargs="+", help="run directories, or folders of them")
  p.add_argument("--out", default="report", help="folder for report.csv/.md/.png")
  p.add_argument("--checkpoint", choices=("final", "selected"), default="final")
  p.add_argument("--fig5", metavar="METRIC", default="",
                 help="also plot METRIC (e.g. mAP@0.5) against the annotation time of "
                      "each run's labels.mode (paper Fig. 5): fig5.png/.csv/.md")
  p.add_argument("--annotation-time", nargs="+", metavar="MODE=TIME",
                 default=[f"{m}={t}" for m, t in config_lib.THUMOS14_ANNOTATION_TIME],
                 help="annotation time of each supervision level, e.g. one-segment=0.30 "
                      "(default: the paper's THUMOS14 ratios)")
  args = p.parse_args(argv)
  try:
    runs = find_runs(args.runs)
    table = run_table(runs, args.checkpoint)
    if args.fig5:  # checked before anything is written
      if args.fig5 not in table.columns:
        raise DataError(f"--fig5: no metric {args.fig5!r} in the runs' results")
      points = annotation_time_points(label_modes(runs), table[args.fig5].to_numpy(float),
                                      _pairs(args.annotation_time))
    paths = write_report(table, args.out)
    if args.fig5:
      paths += write_annotation_time(
          points, args.out, args.fig5,
          f"{args.checkpoint} checkpoint of {len(runs)} runs; the split each run was "
          "tested on is in its results.md.")
  except (DataError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(markdown(table))
  warning = dirty_warning(table)
  if warning:
    print(f"warning: {warning}", file=sys.stderr)
  print("wrote", ", ".join(paths))
  return 0


if __name__ == "__main__":
  sys.exit(main())
