"""Where a whole run's time goes: the paper's THUMOS14 run, phase by phase.

What a user waits for is a run, not a train step: process start, reading the
features, compiling, the training steps, the validation evaluations, the final
test evaluation (inference, proposals for every class and threshold, NMS,
mAP) and writing the results. This script runs ``configs/thumos14_i3d.py``'s
schedule through ``jaxseg.train.train_and_evaluate`` in-process on
THUMOS14-shaped synthetic data (200 training videos in subset "validation",
212 test videos, the generator's THUMOS14 length distribution, D = 2048, 20
classes; the signal strengths scaled by sqrt(D / 64) as in
``benchmarks/robustness.py``'s 2048-d world, so the data is learnable) and
times every phase by wrapping the library's functions for the duration of the
run (nothing in the library is edited)::

  python benchmarks/end_to_end.py                      # the full 10,000 steps
  python benchmarks/end_to_end.py --steps 200          # a shortened schedule
  python benchmarks/end_to_end.py --quick --out /tmp/e2e --data /tmp/e2e-data  # seconds, CI

The data is generated once into ``--data`` (reused afterwards) and is not
timed: a user already has features. Writes ``end_to_end.csv`` and
``end_to_end.md`` to ``--out`` and the run itself to ``--out``/run.

Phases (the rows of kind "phase" partition the total; nested phases subtract
their children, so nothing is counted twice):

* startup: imports and the config (process start to the run, less the data
  generation);
* run setup and teardown: the rest of ``train_and_evaluate`` (config checks,
  workdir, model init, checkpoint managers, metric writers, the waits for the
  last checkpoints);
* feature loading: ``run_data.prepare_data``;
* compilation + first step: the first call of the train step for each input
  shape (a batch padded to a new length bucket compiles again), waited for;
* training: the rest of ``train.run_steps`` (batches, the other steps, logging,
  checkpoints);
* validation during training: the ``validate`` calls of ``run_steps`` (the rules
  choice on the validation hold-out, ``evaluate.choose_rules``, and the
  logged CAS timelines), broken down in rows of kind "part";
* rules choice on validation (end of run): ``choose_rules`` inside
  ``evaluate.evaluate_and_report``, broken down likewise;
* test compilation: the first call of inference's jitted functions (the
  forward pass of ``evaluate.make_apply_fn``, ``inference.video_scores``) for
  each signature not seen in the validations, waited for (and likewise a
  part of each validation phase);
* test inference (``inference.predict`` less its proposals), test proposals
  (``inference.generate_proposals`` less NMS), test NMS
  (``proposals.temporal_nms``), test mAP (``metrics.detection_map``);
* writing results: ``evaluate.write_results``;
* end-of-run other: the rest of ``evaluate_and_report`` (restoring the
  selected checkpoint, the mAP summaries, ``rules.json``).
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()  # before the heavy imports: startup is timed from here

# pylint: disable=wrong-import-position
import argparse  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import inspect  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from typing import Callable, Iterator  # noqa: E402
from unittest import mock  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks import common  # noqa: E402
from configs import thumos14_i3d  # noqa: E402
from jaxseg import evaluate, inference, metrics, proposals, run_data, train  # noqa: E402
from jaxseg.data import synthetic  # noqa: E402

DEFAULT_OUT = os.path.join("benchmarks", "out", "end_to_end")
# THUMOS14: 200 validation videos (trained on), 212 test videos; I3D's 2048-d.
FULL_DATA = {"num_train": 200, "num_test": 212, "feature_dim": 2048, "num_classes": 20}
# A few short 64-d videos: the whole run in seconds.
QUICK_DATA = {"num_train": 16, "num_test": 6, "feature_dim": 64, "num_classes": 4,
              "max_length": 200, "median_length": 60.0}
QUICK_STEPS = 4

# The wrapped functions' phase names, and the report rows they make.
SCOPES = {"validate": "validation during training",
          "choose_rules": "rules choice on validation (end of run)"}
# evaluate.forward runs the model once per split; inference.predict scores
# its outputs (video scores and the detections' host work): one row for both.
SCOPE_PARTS = {"compile_eval": "compilation (+ first run) per new shape",
               "forward": "inference (forward + video scores)",
               "predict": "inference (forward + video scores)",
               "generate_proposals": "proposals", "temporal_nms": "NMS",
               "detection_map": "mAP"}
SCOPE_OTHER = "other (rule scores, summaries, timeline images)"
LEAVES = {"run": "run setup and teardown",
          "prepare_data": "feature loading",
          "compile": "compilation + first step",
          "run_steps": "training",
          "compile_eval": "test compilation (+ first run) per new shape",
          "forward": "test inference (forward + video scores)",
          "predict": "test inference (forward + video scores)",
          "generate_proposals": "test proposals",
          "temporal_nms": "test NMS",
          "detection_map": "test mAP",
          "write_results": "writing results",
          "evaluate_and_report": "end-of-run other (restore, summaries, rules.json)"}
ROW_ORDER = ("startup", LEAVES["run"], LEAVES["prepare_data"], LEAVES["compile"],
             LEAVES["run_steps"], SCOPES["validate"], SCOPES["choose_rules"],
             *(LEAVES[n] for n in ("compile_eval", "predict", "generate_proposals",
                                   "temporal_nms", "detection_map", "write_results",
                                   "evaluate_and_report")))


class PhaseClock:
  """Self time (elapsed less the children's) and calls of each nesting path of phases."""

  def __init__(self):
    self.seconds: dict[tuple, float] = collections.defaultdict(float)
    self.calls: collections.Counter = collections.Counter()
    self._stack: list[list] = []  # [path, children's seconds]
    self.first_start: dict[tuple, float] = {}  # path -> perf_counter at its first call

  @contextlib.contextmanager
  def phase(self, name: str) -> Iterator[None]:
    path = (self._stack[-1][0] if self._stack else ()) + (name,)
    frame = [path, 0.0]
    self._stack.append(frame)
    t0 = time.perf_counter()
    try:
      yield
    finally:
      t1 = time.perf_counter()
      self._stack.pop()
      self.seconds[path] += (t1 - t0) - frame[1]
      self.calls[path] += 1
      self.first_start.setdefault(path, t0)
      if self._stack:
        self._stack[-1][1] += t1 - t0

  def wrap(self, name: str, fn: Callable) -> Callable:
    """``fn`` timed as phase ``name``."""
    @functools.wraps(fn)
    def timed(*args, **kwargs):
      with self.phase(name):
        return fn(*args, **kwargs)
    return timed


class FirstCalls:
  """A jitted function whose first call for each signature (the shapes and
  dtypes of the array arguments, the values of the others: a compilation, and
  one run) is phase ``name``, waited for with ``jax.block_until_ready``."""

  def __init__(self, clock: PhaseClock, name: str, fn: Callable):
    self.clock, self.name, self.fn = clock, name, fn
    self.shapes: set = set()
    self.calls = 0
    self.first_done: float | None = None  # perf_counter at the end of the first call

  def __call__(self, *args, **kwargs):
    self.calls += 1
    key = tuple((np.shape(x), str(x.dtype)) if hasattr(x, "dtype") else repr(x)
                for x in jax.tree.leaves((args, sorted(kwargs.items()))))
    if key in self.shapes:
      return self.fn(*args, **kwargs)
    self.shapes.add(key)
    with self.clock.phase(self.name):
      out = jax.block_until_ready(self.fn(*args, **kwargs))
    if self.first_done is None:
      self.first_done = time.perf_counter()
    return out


@contextlib.contextmanager
def instrumented(clock: PhaseClock) -> Iterator[dict[str, list[FirstCalls]]]:
  """Wraps the library's phases for the duration of the block (restored after).

  Yields ``{"compile": [train step], "compile_eval": [forward pass, video
  scores]}``: the jitted functions of the run, wrapped.
  """
  made: dict[str, list[FirstCalls]] = {
      "compile": [], "compile_eval": [FirstCalls(clock, "compile_eval", inference.video_scores)]}
  make_train_step, loop = train.make_train_step, train.run_steps
  make_apply_fn = evaluate.make_apply_fn
  loop_params = inspect.signature(loop)

  def timed_make_train_step(*args, **kwargs):
    made["compile"].append(FirstCalls(clock, "compile", make_train_step(*args, **kwargs)))
    return made["compile"][-1]

  def timed_make_apply_fn(*args, **kwargs):
    made["compile_eval"].append(
        FirstCalls(clock, "compile_eval", make_apply_fn(*args, **kwargs)))
    return made["compile_eval"][-1]

  def timed_loop(*args, **kwargs):
    bound = loop_params.bind(*args, **kwargs)
    if bound.arguments.get("validate") is not None:
      bound.arguments["validate"] = clock.wrap("validate", bound.arguments["validate"])
    with clock.phase("run_steps"):
      return loop(*bound.args, **bound.kwargs)

  targets = [(run_data, "prepare_data"), (evaluate, "choose_rules"), (evaluate, "forward"),
             (evaluate, "evaluate_and_report"), (evaluate, "write_results"),
             (inference, "predict"), (inference, "generate_proposals"),
             (proposals, "temporal_nms"), (metrics, "detection_map")]
  with contextlib.ExitStack() as stack:
    for module, name in targets:
      stack.enter_context(mock.patch.object(module, name,
                                            clock.wrap(name, getattr(module, name))))
    stack.enter_context(mock.patch.object(train, "make_train_step", timed_make_train_step))
    stack.enter_context(mock.patch.object(train, "run_steps", timed_loop))
    stack.enter_context(mock.patch.object(evaluate, "make_apply_fn", timed_make_apply_fn))
    stack.enter_context(mock.patch.object(inference, "video_scores", made["compile_eval"][0]))
    yield made


def row_of(path: tuple) -> tuple[str, str | None]:
  """The report row of a path of phase names: ``(row, part)``, the part of a
  validation scope it falls in (None outside one)."""
  for i, name in enumerate(path):
    if name in SCOPES:
      inside = i < len(path) - 1
      return SCOPES[name], SCOPE_PARTS.get(path[-1], SCOPE_OTHER) if inside else SCOPE_OTHER
  return LEAVES[path[-1]], None


def phase_table(clock: PhaseClock, startup: float, steps: list[FirstCalls]) -> pd.DataFrame:
  """The table: the ``kind`` "phase" rows partition the "total" row, the
  "part" rows break a validation phase down; ``share`` is of the total."""
  seconds: dict[str, float] = collections.defaultdict(float)
  counts: collections.Counter = collections.Counter()
  parts: dict = collections.defaultdict(lambda: collections.defaultdict(float))
  part_counts: collections.Counter = collections.Counter()
  for path, s in clock.seconds.items():
    row, part = row_of(path)
    seconds[row] += s
    if part is None:
      counts[row] += clock.calls[path]
      continue
    parts[row][part] += s
    if path[-1] in SCOPES and path[-1] == next(n for n in path if n in SCOPES):
      counts[row] += clock.calls[path]  # the scope's own calls
    elif path[-1] in SCOPE_PARTS:
      part_counts[row, part] += clock.calls[path]
  for row in parts:
    part_counts[row, SCOPE_OTHER] = counts[row]
  seconds["startup"], counts["startup"] = startup, 1
  compiles = sum(len(s.shapes) for s in steps)
  counts[LEAVES["run_steps"]] = sum(s.calls for s in steps) - compiles  # steps, not loops
  total = sum(seconds.values())
  rows = []
  for name in ROW_ORDER:
    rows.append({"phase": name, "kind": "phase", "seconds": seconds.get(name, 0.0),
                 "count": counts.get(name, 0)})
    for part, s in sorted(parts.get(name, {}).items(), key=lambda kv: -kv[1]):
      rows.append({"phase": f"{name}: {part}", "kind": "part", "seconds": s,
                   "count": part_counts.get((name, part), 0)})
  rows.append({"phase": "total", "kind": "total", "seconds": total, "count": 1})
  df = pd.DataFrame(rows)
  df.insert(3, "share", df["seconds"] / total)
  return df


def run_config(data_dir: str, annotation_path: str, dims: dict, steps: int | None,
               quick: bool):
  """``configs/thumos14_i3d.py`` pointed at the generated data; ``steps``
  shortens training, with validation twice and logging at most every 50 steps."""
  c = thumos14_i3d.get_config()
  c.data.annotation_path = annotation_path
  c.data.features_dir = os.path.join(data_dir, synthetic.FEATURES_DIR)
  c.data.feature_streams = ()
  c.data.feature_dim = dims["feature_dim"]
  c.data.train_subset = synthetic.TRAIN_SUBSET
  c.data.test_subset = synthetic.TEST_SUBSET
  c.train.progress = False
  if quick:
    c.train.batch_size = 4
    c.train.max_length = 128
    c.train.length_buckets = (64, 128, 256)
    c.train.validation_fraction = 0.25
    c.inference.batch_size = 4
    c.train.log_images = 1
    steps = QUICK_STEPS
  if steps is not None and steps != c.train.num_steps:
    half = math.ceil(steps / 2)
    c.train.num_steps = steps
    c.train.eval_every = min(c.train.eval_every, half)
    c.train.checkpoint_every = min(c.train.checkpoint_every, half)
    c.train.log_every = min(c.train.log_every, max(1, steps // 4))
  return c


def signal_strengths(feature_dim: int) -> dict:
  """The generator's signal strengths scaled by ``sqrt(D / 64)``, as
  ``benchmarks/robustness.py``'s ``world_overrides`` does at D = 2048: every
  feature keeps the 64-d world's share of each signal (the default at 64)."""
  defaults = synthetic.SyntheticParams()
  scale = (feature_dim / defaults.feature_dim) ** 0.5
  return {k: float(getattr(defaults, k)) * scale for k in synthetic.SIGNAL_STRENGTHS}


def generate_data(data_dir: str, dims: dict) -> str:
  """Generates (or reuses) the dataset in ``data_dir``; its annotation JSON."""
  return synthetic.generate_synthetic(data_dir, **dims,
                                      **signal_strengths(dims["feature_dim"]))


def report(df: pd.DataFrame, out_dir: str, config, dims: dict, notes: list[str]) -> list[str]:
  """Writes ``end_to_end.csv`` and ``end_to_end.md``; prints the table."""
  t = config.train
  notes = [f"- config: configs/thumos14_i3d.py, {t.num_steps} steps (of 10,000), batch "
           f"{t.batch_size}, max length {t.max_length}, validation every {t.eval_every} steps "
           f"on {t.validation_fraction:g} of the training videos, checkpoints every "
           f"{t.checkpoint_every}, inference.rules {config.inference.rules!r}",
           f"- data: synthetic, {dims['num_train']} training + {dims['num_test']} test "
           f"videos, D = {dims['feature_dim']}, {dims['num_classes']} classes",
           *notes,
           "- the \"phase\" rows partition the total; the \"part\" rows break a "
           "validation phase down (share: of the total)"]
  paths = common.write_reports(df, out_dir, "end_to_end", "Where a whole run's time goes",
                               notes)
  with open(paths[1]) as f:
    print(f.read())
  return paths


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--steps", type=int, default=None,
                 help="training steps (default: the config's 10,000)")
  p.add_argument("--quick", action="store_true",
                 help=f"a few {QUICK_DATA['feature_dim']}-d videos, {QUICK_STEPS} steps")
  p.add_argument("--out", default=DEFAULT_OUT, help="report folder (the run goes in <out>/run)")
  p.add_argument("--data", default=None,
                 help="where the synthetic data is generated (default <out>/data, "
                 "with --quick <out>/data-quick)")
  args = p.parse_args(argv)
  if args.steps is not None and args.steps < 1:
    p.error("--steps must be >= 1")
  return args


def main(argv=None) -> pd.DataFrame:
  args = parse_args(argv)
  dims = dict(QUICK_DATA if args.quick else FULL_DATA)
  data_dir = args.data or os.path.join(args.out, "data-quick" if args.quick else "data")
  workdir = os.path.join(args.out, "run")
  t_prep = time.perf_counter()  # the benchmark's own preparation: not in the table
  if os.path.isdir(workdir):
    shutil.rmtree(workdir)  # a fresh run: an old one would be resumed, not trained
  annotation_path = generate_data(data_dir, dims)
  generation = time.perf_counter() - t_prep
  config = run_config(data_dir, annotation_path, dims, args.steps, args.quick)
  clock = PhaseClock()
  with instrumented(clock) as made:
    with clock.phase("run"):
      train.train_and_evaluate(config, workdir)
  startup = clock.first_start[("run",)] - PROCESS_START - generation
  steps = made["compile"]
  df = phase_table(clock, startup, steps)
  first = (steps[0].first_done - PROCESS_START - generation
           if steps and steps[0].first_done else float("nan"))
  notes = [f"- process start to the end of the first train step: {first:.1f} s",
           f"- compilations (signatures): train step {sum(len(s.shapes) for s in steps)}, "
           f"inference (forward pass and video scores) "
           f"{sum(len(f.shapes) for f in made['compile_eval'])}",
           f"- data generation or reuse and removing an old run (not in the table): "
           f"{generation:.1f} s",
           f"- the run: {workdir}"]
  report(df, args.out, config, dims, notes)
  return df


if __name__ == "__main__":
  main()
