"""Invariant fuzzing: bad input derived from valid input, through every entry point.

A small valid world is built once per module (``World``): an ActivityNet-format
dataset (``data/gt.json``, ``data/features/<vid>.npy``), a config file on it
(``cfg.py``: ``configs/test.py`` with the dataset's fields), a finished 4-step
run trained on it (``run/``), a features folder for ``--mode predict``
(``pfeat/``), a W-TALC bundle (``wtalc/``) and the files ``jaxseg.score``
reads (``score/``). Each example copies what it needs into a folder of its own,
damages a copy (one hypothesis strategy per input kind, below) and runs one
entry point in process: ``python -m jaxseg.main`` (``--mode train``, ``eval``,
``data``, ``predict``), ``python -m jaxseg.score``, ``python -m jaxseg.report``
and ``python -m jaxseg.data.wtalc_convert``.

Every example must keep the promises of docs/reliability.md:

I1  one outcome: exit status 0 with valid output, or exit status 2 with ONE
    ``error:`` line on stderr (its last line) naming the field, the file or the
    video; never a Python traceback. (argparse's own usage errors print
    ``<prog>: error: ...`` with status 2, which counts as that line.)
I2  inputs intact: every input file is byte-identical afterwards (and still there).
I3  declared outputs only: nothing is created, changed or removed outside the
    outputs the command declares (``--workdir``, ``--predict_out``, ``--out``,
    ``--output`` and the temporary siblings they document).

and one promise per property (the ``Property`` objects at the end; the tests
are thin wrappers, ``benchmarks/fuzz_invariants.py`` runs the same properties
for a long time):

annotations     a bad annotation JSON is one named ``DataError`` while loading
                (``--mode data``, ``train``, ``eval``; ``jaxseg.score`` as ground
                truth); a refused run leaves only ``config.json`` in its workdir,
                a refused ``--mode eval`` writes nothing.
features        a bad ``.npy`` (truncated, lying header, object/complex/string
                dtype, NaN/inf, wrong width or rank, empty, garbage, a folder, a
                broken link) is one named error; no pickle runs, no huge allocation.
layouts         the four feature layouts read; a missing stream file or subset
                folder is a named error; extra files are ignored.
config          a bad config (wrong type, out of range, NaN/inf, unknown field; in
                the file or as ``--config.<field>``; a config file that does not
                load) is refused naming the field before anything is written:
                no workdir is created.
run_config      a damaged ``config.json`` of a run is refused by ``--mode predict``,
                ``eval`` and ``train`` naming the file and field; the run is untouched.
run_files       a run's other files damaged (``data.json``, ``splits.json``,
                ``classes.json``, ``rules.json``, ``segment_labels.npz``,
                ``metrics.jsonl``, a checkpoint file): one named error, or read as
                documented (an unreadable newest checkpoint is set aside).
outputs         an output that aliases an input (``--predict_out`` = the features
                folder, the run, inside them, a symlink; ``--output`` = the ground
                truth; ``--out`` = a run or the W-TALC bundle; ``--workdir`` = the
                data folder) never changes an input file.
symlinks        inputs reached through symbolic links (valid, dangling, loops,
                to folders) read or are named errors; nothing is written through them.
leftovers       what a killed write leaves (``.<name>.<random>.tmp`` files, an
                ``N.orbax-checkpoint-tmp`` folder, a cut ``metrics.jsonl`` line, a
                stale ``.lock``, a predict ``.<out>.<random>.tmp`` folder) is never
                taken for a result: the rerun gives the same results and removes
                jaxseg's temporaries (a user's ``.my.tmp`` stays).
changed_config  a changed config never reuses old results: the rerun refuses
                naming the field (the workdir untouched) or, with ``--overwrite``,
                trains anew and reports the new config.
score           ``jaxseg.score`` on damaged predictions / ground truth / arguments.
report          ``jaxseg.report`` on damaged ``results.json`` / arguments.
wtalc           ``jaxseg.data.wtalc_convert`` on a damaged W-TALC bundle.

Budget: about a minute on two CPU cores. ``JAXSEG_FUZZ_EXAMPLES=N`` runs N
examples per property instead of each property's default (hypothesis is
derandomized, so the suite's examples are the same on every run).

Bugs this fuzzer found and that are fixed are replayed on every run
(``REGRESSIONS``, hypothesis ``@example``). Bugs found and not yet fixed are
excluded with ``assume`` so that the properties keep exploring everything else
(``KNOWN_BUGS``, each with its reproducer); remove an entry when its bug is
fixed (``JAXSEG_FUZZ_INCLUDE_KNOWN=1`` runs the excluded cases too).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fnmatch
import gc
import hashlib
import io as std_io
import json
import logging
import math
import os
import pathlib
import re
import shlex
import shutil
import sys
import threading
import time
import traceback
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

# ============================================================== known bugs
#
# Input classes that break a promise today, excluded with assume() so that the
# properties keep exploring everything else. Each entry: a name and the
# reproducer (docs in the report of the fuzzing session). Remove an entry (and
# its assume) when the bug is fixed.
KNOWN_BUGS: dict[str, str] = {
    "checkpoint_asyncio_tracebacks": (
        "a damaged file of the only checkpoint (checkpoints/latest/4/default/manifest.ocdbt "
        "or a file of default/d/ emptied, deleted or made a folder; array_metadatas/process_0 "
        "made a folder): --mode eval is refused as it should be ('error: .../checkpoints/"
        "latest: no readable checkpoint', exit 2), but Orbax's TensorStore readers print "
        "1-16 tracebacks ('RuntimeError: Event loop is closed') from their threads, timing "
        "dependent: those after the error line go to the null device (main._exit_error), "
        "those printed while another damaged checkpoint is tried come before it."),
}


def known_bug(name: str, condition: bool) -> None:
  """Skips the example when it falls in a known bug's input class
  (``JAXSEG_FUZZ_INCLUDE_KNOWN=1``: explores it, to see whether it is fixed)."""
  if name in KNOWN_BUGS and condition and not os.environ.get("JAXSEG_FUZZ_INCLUDE_KNOWN"):
    assume(False)


# ================================================================ budget


def examples(default: int) -> int:
  """The examples of a property: ``JAXSEG_FUZZ_EXAMPLES`` or its default."""
  return int(os.environ.get("JAXSEG_FUZZ_EXAMPLES", "0")) or default


def fuzz_settings(default: int, **kwargs) -> settings:
  return settings(max_examples=examples(default), deadline=None, derandomize=True,
                  database=None, print_blob=False,
                  suppress_health_check=list(HealthCheck), **kwargs)


# ============================================================ running one


@dataclasses.dataclass
class Outcome:
  """What one entry point did: exit status, output, and an escaped exception."""
  entry: str
  argv: list
  rc: Any
  stdout: str
  stderr: str
  error: BaseException | None = None
  error_text: str = ""

  def command(self) -> str:
    module = {"main": "jaxseg.main", "score": "jaxseg.score", "report": "jaxseg.report",
              "wtalc_convert": "jaxseg.data.wtalc_convert"}[self.entry]
    return "python -m " + module + " " + " ".join(shlex.quote(str(a)) for a in self.argv)


@contextlib.contextmanager
def _captured():
  """stdout and stderr, also of the logging handlers that write to a terminal stream."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  out, err = std_io.StringIO(), std_io.StringIO()
  handlers = [h for lg in (logging.getLogger(), logging.getLogger("absl"))
              for h in lg.handlers
              if type(h) is logging.StreamHandler]  # pylint: disable=unidiomatic-typecheck
  handlers.append(absl_logging.get_absl_handler().python_handler)
  saved = [(h, h.stream) for h in handlers]
  for h in handlers:
    h.stream = err
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      yield out, err
  finally:
    for h, stream in saved:
      h.stream = stream


# Collect garbage after each call, so that what a command's leftover objects print
# when collected (an asyncio future's unretrieved exception) counts as its output:
# 0.1 s a call, so only the long run (benchmarks/fuzz_invariants.py) turns it on.
COLLECT_AFTER_EACH_CALL = False


def _call(entry: str, argv: list, fn: Callable[[], Any]) -> Outcome:
  rc, error, error_text = None, None, ""
  threads = set(threading.enumerate())
  with _captured() as (out, err):
    try:
      rc = fn()
      rc = 0 if rc is None else rc
    except SystemExit as e:
      rc = 0 if e.code is None else e.code
    except BaseException as e:  # pylint: disable=broad-except  # a traceback, in a process
      if isinstance(e, KeyboardInterrupt):
        raise
      error = e
      error_text = "".join(traceback.format_exception(e))
    # What the command's threads print before they end is its output (a process
    # prints it before it exits), not the next example's.
    deadline = time.monotonic() + 5
    for t in set(threading.enumerate()) - threads:
      t.join(timeout=max(0.0, deadline - time.monotonic()))
    if COLLECT_AFTER_EACH_CALL:  # and what its garbage prints (unretrieved futures)
      gc.collect()
  return Outcome(entry, [str(a) for a in argv], rc, out.getvalue(), err.getvalue(),
                 error, error_text)


def call_main(argv: list) -> Outcome:
  """``python -m jaxseg.main ARGV`` in process: ``jaxseg.main.run`` with sys.argv
  set (absl reads it, and ml_collections the ``--config.*`` overrides) and absl's
  flags reset first."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from jaxseg import main as main_lib  # pylint: disable=g-import-not-at-top
  argv = [str(a) for a in argv]
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:
    delattr(flags.FLAGS, name)  # the overrides of the previous call
  flags.FLAGS.unparse_flags()
  # ml_collections loads the --config file as module "config_config" with the
  # deprecated load_module(), which re-executes into a module already there: a
  # fresh process has none.
  sys.modules.pop("config_config", None)
  saved = sys.argv
  sys.argv = ["jaxseg"] + argv
  try:
    return _call("main", argv, main_lib.run)
  finally:
    sys.argv = saved


def call_score(argv: list) -> Outcome:
  from jaxseg import score  # pylint: disable=g-import-not-at-top
  return _call("score", argv, lambda: score.main([str(a) for a in argv]))


def call_report(argv: list) -> Outcome:
  from jaxseg import report  # pylint: disable=g-import-not-at-top
  return _call("report", argv, lambda: report.main([str(a) for a in argv]))


def call_convert(argv: list) -> Outcome:
  from jaxseg.data import wtalc_convert  # pylint: disable=g-import-not-at-top
  return _call("wtalc_convert", argv, lambda: wtalc_convert.main([str(a) for a in argv]))


ENTRY_POINTS = {"main": call_main, "score": call_score, "report": call_report,
                "wtalc_convert": call_convert}


# ============================================================ file states


def tree_state(root) -> dict:
  """``{relative path: state}`` of everything under ``root`` (links not followed):
  ``("f", sha256)``, ``("l", target)``, ``("d",)`` or ``("o",)``."""
  root = str(root)
  out = {}
  if not os.path.lexists(root):
    return out
  for dirpath, dirnames, files in os.walk(root):
    for name in dirnames + files:
      p = os.path.join(dirpath, name)
      rel = os.path.relpath(p, root)
      if os.path.islink(p):
        out[rel] = ("l", os.readlink(p))
      elif os.path.isdir(p):
        out[rel] = ("d",)
      elif os.path.isfile(p):
        h = hashlib.sha256()
        with open(p, "rb") as f:
          for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        out[rel] = ("f", h.hexdigest())
      else:
        out[rel] = ("o",)
    dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
  return out


def _under(rel: str, prefixes) -> bool:
  return any(rel == p or rel.startswith(p.rstrip("/") + "/") or fnmatch.fnmatchcase(rel, p)
             for p in prefixes)


# =============================================================== the world

CLASSES = ("Bowl", "Jump", "Kick")
D = 8
RATE = 25.0 / 16.0
STEPS = 4
TRAIN_IDS = tuple(f"tr{k}" for k in range(8))
TEST_IDS = tuple(f"te{k}" for k in range(8, 12))
VIDEO_IDS = TRAIN_IDS + TEST_IDS
PREDICT_IDS = ("te8", "te9", "te10", "tr0")

_CONFIG_FILE = '''"""The fuzzer's base config (tests/test_invariants.py): configs/test.py on a
small ActivityNet-format dataset. EDITS are an example's values (any type)."""
import json

import ml_collections

from jaxseg import config as config_lib

SETTINGS = json.loads({settings!r})
EDITS = json.loads({edits!r})


def get_config():
  c = config_lib.base_config()
  for key, value, forced in [s + [False] for s in SETTINGS] + [e + [True] for e in EDITS]:
    *parents, leaf = key.split(".")
    node = c
    for name in parents:
      if name not in node:  # an unknown section (the fuzzer's)
        node[name] = ml_collections.ConfigDict()
      node = node[name]
    if forced:  # the fuzzer's value, whatever its type; a new field if unknown
      if leaf in node:
        del node[leaf]
      node[leaf] = value
    else:
      node[leaf] = tuple(value) if isinstance(node[leaf], tuple) else value
  return c
'''


def base_settings() -> list:
  """``[[field, value], ...]``: what the base config sets beyond ``base_config()``."""
  from jaxseg import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxseg import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from tests.helpers import make_config  # pylint: disable=g-import-not-at-top
  c = make_config(**{"data.format": "activitynet", "data.feature_dim": D,
                     "train.num_steps": STEPS})
  flat = config_lib.flatten(workdir_lib.config_to_dict(c))
  base = config_lib.flatten(workdir_lib.config_to_dict(config_lib.base_config()))
  return [[k, v] for k, v in sorted(flat.items()) if base.get(k) != v]


def write_config_file(path, edits=()) -> None:
  settings_ = json.dumps(base_settings())
  path = pathlib.Path(path)
  path.write_text(_CONFIG_FILE.format(settings=settings_, edits=json.dumps(
      [[k, v] for k, v in edits], allow_nan=True)))


def video_features(k: int) -> np.ndarray:
  rng = np.random.default_rng(k)
  return rng.normal(size=(20 + 3 * k, D)).astype(np.float32)


def write_dataset(folder) -> dict:
  """``gt.json`` and ``features/<vid>.npy``: 8 validation (training) videos, 4 test
  videos (``te11`` without instances), 3 classes. Returns the JSON document."""
  folder = pathlib.Path(folder)
  (folder / "features").mkdir(parents=True)
  db = {}
  for k, vid in enumerate(VIDEO_IDS):
    feats = video_features(k)
    anns = []
    if vid != "te11":
      for j, lab in enumerate(sorted({k % 3, (k + 1) % 3} if k % 4 == 0 else {k % 3})):
        s, e = 2 + 7 * j, 7 + 7 * j
        feats[s:e, lab] += 3.0
        anns.append({"segment": [round(s / RATE, 3), round(e / RATE, 3)],
                     "label": CLASSES[lab]})
    np.save(folder / "features" / f"{vid}.npy", feats)
    db[vid] = {"subset": "validation" if k < 8 else "test",
               "duration": round(feats.shape[0] / RATE, 3), "annotations": anns}
  doc = {"database": db}
  (folder / "gt.json").write_text(json.dumps(doc, indent=1))
  return doc


def _obj(items) -> np.ndarray:
  out = np.empty(len(items), dtype=object)
  for i, x in enumerate(items):
    out[i] = x
  return out


def wtalc_arrays() -> dict:
  """A 4-video W-TALC bundle (2 validation, 2 test videos; D = 6)."""
  rng = np.random.default_rng(7)
  return {
      "videoname": np.array([b"video_validation_1", b"video_validation_2",
                             b"video_test_3", b"video_test_4"]),
      "subset": np.array([b"validation", b"validation", b"test", b"test"]),
      "classlist": np.array([b"Diving", b"Archery"]),
      "duration": np.array([[10.0], [9.0], [8.0], [6.0]]),
      "segments": _obj([[[1.0, 2.5], [4.0, 6.0]], [[0.5, 1.5]], [[1.0, 3.0]], []]),
      "labels": _obj([[b"Archery", b"Diving"], [b"Diving"], [b"Archery"], []]),
      "F": _obj([rng.normal(size=(t, 6)).astype(np.float32) for t in (15, 14, 12, 9)]),
  }


def write_wtalc(folder, arrays=None) -> None:
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  for name, arr in (arrays or wtalc_arrays()).items():
    np.save(folder / f"{name}.npy", arr, allow_pickle=True)


def read_json(path):
  with open(path) as f:
    return json.load(f)


class World:
  """The valid base (built once) and the examples derived from it.

  ``root/base``: the valid inputs; ``root/scratch/ex-N``: one example's copy.
  ``keep``: a folder where the inputs of failing examples are kept (the long run).
  """

  PARTS = ("data", "cfg.py", "run", "pfeat", "wtalc", "score")

  def __init__(self, root, keep=None):
    self.root = pathlib.Path(root)
    self.base = self.root / "base"
    self.scratch = self.root / "scratch"
    self.keep = pathlib.Path(keep) if keep else None
    self.count = 0
    self.outcomes = collections.Counter()  # (command, exit status) -> examples
    self.base.mkdir(parents=True)
    self.scratch.mkdir()
    self.gt_doc = write_dataset(self.base / "data")
    write_config_file(self.base / "cfg.py")
    out = call_main(self.main_args(self.base, "run", "train"))
    assert out.rc == 0 and out.error is None, out.error_text or out.stderr[-3000:]
    self.run_doc = read_json(self.base / "run" / "config.json")
    self.results = read_json(self.base / "run" / "results.json")
    self.detections_doc = read_json(self.base / "run" / "detections.json")
    (self.base / "pfeat").mkdir()
    for vid in PREDICT_IDS:
      shutil.copy(self.base / "data" / "features" / f"{vid}.npy", self.base / "pfeat")
    write_wtalc(self.base / "wtalc")
    (self.base / "score").mkdir()
    shutil.copy(self.base / "data" / "gt.json", self.base / "score" / "gt.json")
    shutil.copy(self.base / "run" / "detections.json", self.base / "score" / "pred.json")
    (self.base / "score" / "amb.json").write_text(json.dumps({"te8": [[0.0, 1.0]]}))
    self.base_state = tree_state(self.base)
    self.root_listing = sorted(os.listdir(self.root))

  @staticmethod
  def main_args(root, workdir: str, mode: str, *extra) -> list:
    root = pathlib.Path(root)
    return [f"--config={root / 'cfg.py'}", f"--workdir={root / workdir}", f"--mode={mode}",
            f"--config.data.annotation_path={root / 'data' / 'gt.json'}",
            f"--config.data.features_dir={root / 'data' / 'features'}", *extra]

  @contextlib.contextmanager
  def example(self, *parts):
    """A fresh folder holding copies of ``parts`` of the base (the run's
    ``config.json`` pointed at this copy of the data)."""
    self.count += 1
    ex = Example(self, self.scratch / f"ex-{self.count}")
    ex.root.mkdir()
    for part in parts:
      src = self.base / part
      if src.is_dir():
        shutil.copytree(src, ex.root / part, symlinks=True)
      else:
        shutil.copy(src, ex.root / part)
    if "run" in parts:
      doc = read_json(ex.root / "run" / "config.json")
      doc["data"]["annotation_path"] = str(ex.root / "data" / "gt.json")
      doc["data"]["features_dir"] = str(ex.root / "data" / "features")
      (ex.root / "run" / "config.json").write_text(
          json.dumps(doc, indent=2, sort_keys=True) + "\n")
    failed = True
    try:
      yield ex
      failed = False
    finally:
      shutil.rmtree(ex.root, ignore_errors=True)
      if self.keep is not None and not failed:
        shutil.rmtree(self.keep / ex.root.name, ignore_errors=True)


class Example:
  """One example's folder and how to run an entry point on it, checking I1-I3."""

  def __init__(self, world: World, root: pathlib.Path):
    self.world = world
    self.root = root
    self.description = ""  # the damage, for the failure message

  def p(self, rel: str) -> pathlib.Path:
    return self.root / rel

  def main_args(self, workdir: str, mode: str, *extra) -> list:
    return World.main_args(self.root, workdir, mode, *extra)

  def run(self, entry: str, argv: list, *, inputs=(), outputs=(), names=(),
          valid: Callable[[Outcome], None] | None = None, expect: str | None = None
          ) -> Outcome:
    """Runs ``entry`` and checks I1-I3.

    Args:
      entry: a key of ``ENTRY_POINTS``.
      argv: its arguments.
      inputs: relative paths (files or folders) whose files must be unchanged.
      outputs: relative paths or glob patterns the command may create or change.
      names: on exit status 2, the ``error:`` line must hold one of them.
      valid: on exit status 0, checks the output (raises AssertionError).
      expect: ``"error"`` or ``"ok"`` when only one outcome keeps the promise.
    """
    before = tree_state(self.root)
    if self.world.keep is not None:
      self._keep_inputs()
    out = ENTRY_POINTS[entry](argv)
    after = tree_state(self.root)
    mode = [a.split("=", 1)[1] for a in out.argv if a.startswith("--mode=")]
    command = " ".join([entry] + mode)
    self.world.outcomes[(command, out.rc if out.error is None else "traceback")] += 1
    problems = []
    tb = out.stderr.rfind("Traceback (most recent call last)")
    if out.error is not None:
      problems.append("traceback:\n" + "\n".join(out.error_text.strip().splitlines()[-8:]))
    elif tb >= 0:
      problems.append("traceback on stderr:\n" + out.stderr[tb:tb + 1500])
    elif out.rc == 0:
      if expect == "error":
        problems.append("exit status 0 where an error was due")
      elif valid is not None:
        try:
          valid(out)
        except AssertionError as e:
          problems.append(f"exit status 0 but invalid output: {e}")
    elif out.rc == 2:
      problems += _error_line_problems(out, names)
      if expect == "ok":
        problems.append("exit status 2 where it should run")
    else:
      problems.append(f"exit status {out.rc!r} (expected 0 or 2); stderr ends:\n"
                      + out.stderr[-1500:])
    problems += self._file_problems(before, after, inputs, outputs)
    if problems:
      raise AssertionError(self.failure(out, problems))
    return out

  def _file_problems(self, before, after, inputs, outputs) -> list:
    problems = []
    for rel, state in sorted(before.items()):
      if _under(rel, inputs) and state[0] != "d" and after.get(rel) != state:
        problems.append(f"input {rel} was " + ("removed" if rel not in after else "changed"))
    changed = sorted(rel for rel in set(before) | set(after)
                     if before.get(rel) != after.get(rel))
    for rel in changed:
      parent_of_output = (rel not in before and after.get(rel) == ("d",)
                          and any(o.startswith(rel + "/") for o in outputs))
      if not _under(rel, outputs) and not _under(rel, inputs) and not parent_of_output:
        what = ("created" if rel not in before else "removed" if rel not in after
                else "changed")
        problems.append(f"{rel} {what} outside the declared outputs {list(outputs)}")
    listing = sorted(os.listdir(self.world.root))
    if listing != self.world.root_listing:
      problems.append(f"written outside the example: {self.world.root} now holds {listing}")
    scratch = sorted(os.listdir(self.world.scratch))
    if scratch != [self.root.name]:
      problems.append(f"written outside the example: {self.world.scratch} holds {scratch}")
    return problems

  def _keep_inputs(self) -> None:
    """The inputs as the command found them (removed again when the example passes)."""
    dst = self.world.keep / self.root.name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(self.root, dst, symlinks=True)

  def failure(self, out: Outcome, problems: list) -> str:
    text = (f"{out.command()}\n  damage: {self.description}\n  exit status: {out.rc!r}\n"
            + "".join(f"  - {p}\n" for p in problems))
    err = [l for l in out.stderr.splitlines() if l.strip()]
    if err:
      text += "  stderr ends: " + " | ".join(err[-3:])[-1500:] + "\n"
    if self.world.keep is not None:
      text += (f"  inputs kept in {self.world.keep / self.root.name} (to rerun the command: "
               f"cp -a {self.world.keep / self.root.name} {self.root})\n")
    return text


_ERROR_LINE = re.compile(r"^(error: |python -m [\w.]+: error: )")


def _error_line_problems(out: Outcome, names) -> list:
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  errors = [l for l in lines if _ERROR_LINE.match(l)]
  if len(errors) != 1:
    return [f"{len(errors)} error: lines on stderr (expected one); stderr ends:\n"
            + "\n".join(lines[-6:])]
  problems = []
  after = lines[lines.index(errors[0]) + 1:]
  if after:
    problems.append(f"the error: line is not stderr's last line; after it: {after[-1]!r}")
  if names and not any(str(n) in errors[0] for n in names):
    problems.append(f"the error line names none of {sorted(map(str, names))}: {errors[0]!r}")
  return problems


# ============================================================ strategies
#
# One strategy per input kind. Every damage is a small frozen dataclass: its
# repr is the reproducer hypothesis prints, and ``apply`` writes it.

# ------------------------------------------------------------------ JSON


@dataclasses.dataclass(frozen=True)
class Raw:
  """JSON text written as it is: numbers past the readers' limits, deep nesting."""
  text: str

  def __repr__(self):
    t = self.text
    return f"Raw({t[:24]!r}{'...%d chars' % len(t) if len(t) > 24 else ''})"


@dataclasses.dataclass(frozen=True)
class Pairs:
  """A JSON object written with its pairs as given (a key twice)."""
  pairs: tuple


def to_json(o) -> str:
  """JSON text of ``o``: NaN/Infinity as Python writes them, ``Raw`` as is."""
  if isinstance(o, Raw):
    return o.text
  if isinstance(o, (dict, Pairs)):
    items = o.pairs if isinstance(o, Pairs) else o.items()
    return "{" + ", ".join(f"{json.dumps(str(k))}: {to_json(v)}" for k, v in items) + "}"
  if isinstance(o, (list, tuple)):
    return "[" + ", ".join(to_json(v) for v in o) + "]"
  return json.dumps(o)


@dataclasses.dataclass(frozen=True)
class JsonEdit:
  """One change at ``path`` (keys and indices) of a JSON document.

  op: ``set`` (value), ``drop``, ``rename`` (the key becomes value), ``wrap``
  (the value inside a list), ``duplicate`` (the key given twice).
  """
  path: tuple
  op: str
  value: Any = None


@dataclasses.dataclass(frozen=True)
class TextEdit:
  """A change of the file's bytes: ``truncate`` (keep a fraction), ``bom``,
  ``non_utf8`` (bytes inside a string), ``empty``, ``trailing`` (garbage after)."""
  op: str
  arg: Any = None


def _walk(doc, path):
  for key in path:
    if isinstance(doc, dict) and key in doc:
      doc = doc[key]
    elif isinstance(doc, list) and isinstance(key, int) and 0 <= key < len(doc):
      doc = doc[key]
    else:
      return None, False
  return doc, True


def apply_json_edit(doc, e: JsonEdit):
  """``doc`` with ``e`` applied (in place where possible); a path gone is a no-op."""
  if not e.path:
    return e.value if e.op == "set" else ([doc] if e.op == "wrap" else doc)
  parent, ok = _walk(doc, e.path[:-1])
  key = e.path[-1]
  if not ok or not isinstance(parent, (dict, list)):
    return doc
  if isinstance(parent, dict) and key not in parent:
    return doc
  if isinstance(parent, list) and not (isinstance(key, int) and 0 <= key < len(parent)):
    return doc
  if e.op == "set":
    parent[key] = e.value
  elif e.op == "drop":
    del parent[key]
  elif e.op == "wrap":
    parent[key] = [parent[key]]
  elif e.op == "rename" and isinstance(parent, dict):
    items = [(str(e.value) if k == key else k, v) for k, v in parent.items()]
    parent.clear()
    parent.update(items)
  elif e.op == "duplicate" and isinstance(parent, dict):
    items = list(parent.items())
    i = [k for k, _ in items].index(key)
    grand, _ = _walk(doc, e.path[:-2])
    dup = Pairs(tuple(items[:i + 1] + [items[i]] + items[i + 1:]))
    if len(e.path) == 1:
      return dup
    if isinstance(grand, (dict, list)):
      grand[e.path[-2]] = dup
  return doc


def json_bytes(doc, edits) -> bytes:
  """The document with the edits applied, as the bytes of a file."""
  doc = json.loads(json.dumps(doc))  # a copy
  for e in edits:
    if isinstance(e, JsonEdit):
      doc = apply_json_edit(doc, e)
  data = to_json(doc).encode("utf-8")
  for e in edits:
    if isinstance(e, TextEdit):
      data = apply_text_edit(data, e)
  return data


def apply_text_edit(data: bytes, e: TextEdit) -> bytes:
  if e.op == "truncate":
    return data[:int(len(data) * e.arg)]
  if e.op == "bom":
    return b"\xef\xbb\xbf" + data
  if e.op == "empty":
    return b""
  if e.op == "trailing":
    return data + e.arg
  if e.op == "non_utf8":  # inside the first string at or after a fraction of the file
    frac, raw = e.arg
    i = data.find(b'"', int(len(data) * frac))
    i = data.find(b'"') if i < 0 else i
    return data if i < 0 else data[:i + 1] + raw + data[i + 1:]
  raise ValueError(e.op)


def json_paths(doc, prefix=()) -> list:
  out = [prefix]
  if isinstance(doc, dict):
    for k, v in doc.items():
      out += json_paths(v, prefix + (k,))
  elif isinstance(doc, list):
    for i, v in enumerate(doc):
      out += json_paths(v, prefix + (i,))
  return out


NAN, INF = float("nan"), float("inf")
# Values that are wrong somewhere: types, non-finite and huge numbers, limits.
SPECIAL_VALUES = [
    None, True, False, "", " ", "x", "1.5", "nan", "-1", [], {}, [1.0], [1.0, 2.0, 3.0],
    [2.0, 1.0], [-1.0, 1.0], {"a": 1}, 0, -1, 1, -1e-9, 1e300, -1e300, 1e-320, NAN, INF, -INF,
    2**53 + 1, 2**63, -2**63 - 1, 2**64, 10**30, Raw("9" * 5000), Raw("1e999"), Raw("-0"),
    Raw("[" * 3000 + "]" * 3000), Raw('{"a": ' * 1500 + "1" + "}" * 1500)]
HOSTILE_IDS = ["../x", "../../escape", "/abs/secret", "a/b", "a\\b", ".", "..", "",
               "x\x00y", "tr0 ", " tr0", "TR0", "tr0.npy", "-rf", "~", "$HOME", "a" * 300,
               "\ud800", "é", "te8\n", "con"]
HOSTILE_LABELS = ["Bowl ", " Bowl", "bowl", "BOWL", "Golf", "", " ", "Bowl\n", "Bo wl",
                  "../Bowl", "\ud800", "Bowl\x00", 3, None, ["Bowl"], True]


def hostile_values():
  return st.one_of(st.sampled_from(SPECIAL_VALUES), st.integers(-2**70, 2**70),
                   st.floats(), st.text(max_size=6))


def json_edits(doc, *, values=None, keys=None) -> st.SearchStrategy:
  """One ``JsonEdit`` or ``TextEdit`` of ``doc`` (a path drawn from its paths)."""
  values = values if values is not None else hostile_values()
  keys = keys if keys is not None else st.sampled_from(["", "x", "Database", "subset ",
                                                        "segments", "label\x00"])
  paths = json_paths(doc)
  edit = st.builds(JsonEdit, st.sampled_from(paths), st.just("set"), values) | \
      st.builds(JsonEdit, st.sampled_from(paths[1:]),
                st.sampled_from(["drop", "wrap", "duplicate"])) | \
      st.builds(JsonEdit, st.sampled_from(paths[1:]), st.just("rename"), keys)
  text = st.builds(TextEdit, st.just("truncate"), st.floats(0, 0.999)) | \
      st.sampled_from([TextEdit("bom"), TextEdit("empty")]) | \
      st.builds(TextEdit, st.just("trailing"), st.sampled_from([b" x", b"}", b"\x00"])) | \
      st.builds(TextEdit, st.just("non_utf8"),
                st.tuples(st.floats(0, 1), st.sampled_from([b"\xff", b"\xe9", b"\xc3", b"\x80"])))
  return st.one_of(edit, edit, edit, text)


def annotation_edit() -> st.SearchStrategy:
  """An edit of the base ``gt.json``: anything, or aimed at ids, labels, bounds."""
  doc = json.loads(json.dumps(_GT_SHAPE))
  ids = st.builds(JsonEdit, st.sampled_from([("database", v) for v in VIDEO_IDS]),
                  st.just("rename"), st.sampled_from(HOSTILE_IDS))
  label_paths = [p for p in json_paths(doc) if p and p[-1] == "label"]
  labels = st.builds(JsonEdit, st.sampled_from(label_paths), st.just("set"),
                     st.sampled_from(HOSTILE_LABELS))
  bound_paths = [p for p in json_paths(doc) if len(p) > 1 and p[-2] == "segment"]
  bound_values = st.one_of(st.sampled_from([-1.0, -1e-9, 0.0, 1e300, NAN, INF, -INF, 2**64,
                                            Raw("9" * 5000), "1.5", "x", None, [1.0]]),
                           st.floats(-100, 1000))
  bounds = st.builds(JsonEdit, st.sampled_from(bound_paths), st.just("set"), bound_values)
  seg_paths = [p for p in json_paths(doc) if p and p[-1] == "segment"]
  segments = st.builds(JsonEdit, st.sampled_from(seg_paths), st.just("set"),
                       st.sampled_from([[3.0, 1.0], [-2.0, -1.0], [1.0], [], [1.0, 2.0, 3.0],
                                        [1.0, 1.0], [0.0, 1e300], "1-2", {"start": 1}]))
  return st.one_of(json_edits(doc), ids, labels, bounds, segments)


def _gt_shape() -> dict:
  """The shape of the base ``gt.json`` (the paths the strategies draw from)."""
  return {"database": {vid: {"subset": "s", "duration": 1.0, "annotations": [
      {"segment": [0.0, 1.0], "label": "l"}] * (2 if k % 4 == 0 and k < 11 else
                                                 0 if vid == "te11" else 1)}
                       for k, vid in enumerate(VIDEO_IDS)}}


_GT_SHAPE = _gt_shape()


# ------------------------------------------------------------------- .npy


@dataclasses.dataclass(frozen=True)
class NpyDamage:
  """A damaged ``.npy`` file (see ``write_npy_damage`` for the kinds)."""
  kind: str
  arg: Any = None


NPY_DTYPES = ["<f8", "<i4", "|b1", "<c8", "|O", ">f4", "<U3", "|V8", "<f2", "<M8[s]",
              "|S4", "<u1"]


def npy_damage(byte_level: bool = False) -> st.SearchStrategy:
  """A damaged ``.npy``; ``byte_level``: only the damages any ``.npy`` can take
  (header, length, the file itself), not those of a ``(T, D)`` features array."""
  shape = st.sampled_from([(10**12, "D"), ("T+1", "D"), ("T", "D+1"), ("T",), (), (0, "D"),
                           ("T", "D", 1), (-1, "D"), (2**62, 2**62), ("T", 0)])
  value = st.tuples(st.sampled_from(["nan", "inf", "-inf", "1e300", "3e38", "1e-45", "-0"]),
                    st.floats(0, 0.999), st.integers(0, D - 1))
  files = [
      st.builds(NpyDamage, st.just("truncate"), st.floats(0, 0.999)),
      st.builds(NpyDamage, st.just("claim_shape"), shape),
      st.builds(NpyDamage, st.just("claim_dtype"), st.sampled_from(NPY_DTYPES)),
      st.builds(NpyDamage, st.just("garbage"),
                st.one_of(st.sampled_from([b"", b"\x93NUMPY", b"\x93NUMPY\x01\x00\x10\x00{'descr'",
                                           b"not an npy", b"{}", b"PK\x03\x04"]),
                          st.binary(max_size=40))),
      st.sampled_from([NpyDamage("directory"), NpyDamage("missing")]),
      st.builds(NpyDamage, st.just("link"),
                st.sampled_from(["dangling", "loop", "to_dir", "to_outside_copy", "to_devnull"]))]
  if byte_level:
    return st.one_of(files)
  return st.one_of(
      *files,
      st.builds(NpyDamage, st.just("value"), value),
      st.builds(NpyDamage, st.just("width"), st.sampled_from([D - 1, D + 1, 1, 2 * D])),
      st.builds(NpyDamage, st.just("rank"),
                st.sampled_from(["flat", "column", "scalar", "3d", "batch"])),
      st.builds(NpyDamage, st.just("empty"), st.sampled_from([(0, D), ("T", 0), (0,)])),
      st.builds(NpyDamage, st.just("dtype"),
                st.sampled_from(["float64", "float16", "int32", "int64", "bool", "complex64",
                                 "uint8", ">f4", "fortran", "str", "structured"])),
      st.builds(NpyDamage, st.just("object"),
                st.sampled_from(["floats", "rows", "none", "strings"])),
      st.builds(NpyDamage, st.just("link"), st.sampled_from(["to_other_video", "chain"])))


def write_npy_damage(path: pathlib.Path, damage: NpyDamage, *, outside: pathlib.Path) -> None:
  """Replaces the valid features file ``path`` by ``damage``.

  ``outside``: a folder (of the example, outside the dataset) for link targets.
  """
  kind, arg = damage.kind, damage.arg
  if kind in ("truncate", "claim_shape", "claim_dtype", "garbage", "directory", "missing") or (
      kind == "link" and arg in ("dangling", "loop", "to_dir", "to_devnull", "to_outside_copy")):
    damage_npy_bytes(path, damage, outside=outside)
    return
  arr = np.load(path)
  t, d = arr.shape
  data = path.read_bytes()
  path.unlink()
  if kind == "value":
    what, row, col = arg
    a = arr.astype(np.float64 if what == "1e300" else np.float32)
    a[int(row * t), col] = float(what)
    np.save(path, a)
  elif kind == "width":
    np.save(path, np.resize(arr, (t, arg)).astype(np.float32))
  elif kind == "rank":
    np.save(path, {"flat": arr.ravel(), "column": arr[:, 0], "scalar": np.float32(1.0),
                   "3d": arr[:, :, None], "batch": arr[None]}[arg])
  elif kind == "empty":
    np.save(path, np.zeros(tuple(t if x == "T" else x for x in arg), np.float32))
  elif kind == "dtype":
    if arg == "fortran":
      np.save(path, np.asfortranarray(arr))
    elif arg == "str":
      np.save(path, arr.astype(str))
    elif arg == "structured":
      np.save(path, np.zeros(t, dtype=[(f"f{i}", "<f4") for i in range(d)]))
    else:
      np.save(path, arr.astype(arg))
  elif kind == "object":
    a = {"floats": arr.astype(object), "rows": _obj(list(arr)), "none": _obj([None] * t),
         "strings": _obj(["x"] * t)}[arg]
    np.save(path, a, allow_pickle=True)
  elif kind == "link":
    if arg == "to_other_video":
      others = sorted(p for p in path.parent.glob("*.npy") if p != path)
      os.symlink(others[0].name, path)
    elif arg == "chain":
      outside.mkdir(exist_ok=True)
      (outside / path.name).write_bytes(data)
      os.symlink(outside / path.name, outside / "hop.npy")
      os.symlink(outside / "hop.npy", path)
  else:
    raise ValueError(kind)


def split_npy(data: bytes):
  """``(shape, descr, body)`` of an ``.npy`` file's bytes."""
  f = std_io.BytesIO(data)
  version = np.lib.format.read_magic(f)
  read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
          else np.lib.format.read_array_header_2_0)
  shape, _, dtype = read(f)
  return shape, np.lib.format.dtype_to_descr(dtype), data[f.tell():]


def npy_header(shape, descr) -> bytes:
  buf = std_io.BytesIO()
  np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                             "shape": tuple(shape)})
  return buf.getvalue()


def damage_npy_bytes(path: pathlib.Path, damage: NpyDamage, *, outside: pathlib.Path) -> None:
  """A damage of any ``.npy`` file at the byte level: its header, its length, the file."""
  data = path.read_bytes()
  kind, arg = damage.kind, damage.arg
  shape, descr, body = split_npy(data)
  path.unlink()
  if kind == "truncate":
    path.write_bytes(data[:int(len(data) * arg)])
  elif kind == "claim_shape":
    dims = {"T": shape[0] if shape else 1, "D": shape[1] if len(shape) > 1 else 1}
    claimed = tuple(eval(x, dims) if isinstance(x, str) else x  # pylint: disable=eval-used
                    for x in arg)
    path.write_bytes(npy_header(claimed, descr) + body)
  elif kind == "claim_dtype":
    path.write_bytes(npy_header(shape, arg) + body)
  elif kind == "garbage":
    path.write_bytes(arg)
  elif kind == "directory":
    path.mkdir()
  elif kind == "missing":
    pass
  elif kind == "link":
    outside.mkdir(exist_ok=True)
    (outside / path.name).write_bytes(data)
    target = {"dangling": outside / "nowhere.npy", "loop": path, "to_dir": outside,
              "to_other_video": outside / path.name, "to_outside_copy": outside / path.name,
              "to_devnull": pathlib.Path("/dev/null"), "chain": outside / path.name}[arg]
    os.symlink(target, path)
  else:
    raise ValueError(kind)


# --------------------------------------------------------------- layouts


@dataclasses.dataclass(frozen=True)
class LayoutCase:
  """The features folder in ``layout``, then ``damage`` on video ``video``."""
  layout: str  # flat, subset, stream, subset/stream
  damage: str
  video: str


LAYOUT_DAMAGES = ["none", "missing_stream_file", "missing_subset_folder", "extra_npy",
                  "extra_txt", "extra_dir", "stream_length_mismatch", "mixed_layouts",
                  "empty_stream_folder", "unknown_subset_folder", "stream_folder_is_file",
                  "extra_stream_folder", "hidden_file"]


def layout_case(ids) -> st.SearchStrategy:
  return st.builds(LayoutCase, st.sampled_from(["flat", "subset", "stream", "subset/stream"]),
                   st.sampled_from(LAYOUT_DAMAGES), st.sampled_from(ids))


def write_layout(folder: pathlib.Path, case: LayoutCase, subsets: dict) -> None:
  """Rewrites the flat ``folder`` in ``case.layout`` (streams ``rgb``, ``flow``:
  the first and last D/2 columns) and applies ``case.damage``."""
  feats = {p.stem: np.load(p) for p in sorted(folder.glob("*.npy"))}
  shutil.rmtree(folder)
  folder.mkdir()
  streams = ("rgb", "flow") if "stream" in case.layout else ("",)

  def file(vid, stream, subset=None):
    sub = subsets[vid] if subset is None else subset
    parts = [sub] if case.layout.startswith("subset") else []
    return folder.joinpath(*parts, *([stream] if stream else []), f"{vid}.npy")

  for vid, f in feats.items():
    for i, stream in enumerate(streams):
      p = file(vid, stream)
      p.parent.mkdir(parents=True, exist_ok=True)
      np.save(p, f if not stream else f[:, :D // 2] if i == 0 else f[:, D // 2:])
  vid, dmg = case.video, case.damage
  if dmg == "missing_stream_file":
    file(vid, streams[-1]).unlink()
  elif dmg == "missing_subset_folder" and case.layout.startswith("subset"):
    shutil.rmtree(folder / subsets[vid])
  elif dmg == "extra_npy":
    p = file("stray", streams[0], "validation")
    p.parent.mkdir(parents=True, exist_ok=True)
    np.save(p, np.ones((3, D // len(streams)), np.float32))
  elif dmg == "extra_txt":
    (file(vid, streams[0]).parent / "README.txt").write_text("notes")
  elif dmg == "extra_dir":
    (file(vid, streams[0]).parent / "old").mkdir()
  elif dmg == "stream_length_mismatch" and len(streams) == 2:
    p = file(vid, streams[1])
    np.save(p, np.load(p)[:-1])
  elif dmg == "mixed_layouts":  # the video also where another layout keeps it
    other = folder / "test" / f"{vid}.npy" if case.layout == "flat" else folder / f"{vid}.npy"
    other.parent.mkdir(parents=True, exist_ok=True)
    np.save(other, feats[vid])
  elif dmg == "empty_stream_folder":
    (folder / "rgb").mkdir(exist_ok=True)
  elif dmg == "unknown_subset_folder":
    (folder / "nosuchsubset").mkdir()
    np.save(folder / "nosuchsubset" / f"{vid}.npy", feats[vid])
  elif dmg == "stream_folder_is_file":
    if (folder / "flow").is_dir():
      shutil.rmtree(folder / "flow")
    (folder / "flow").write_text("x")
  elif dmg == "extra_stream_folder":
    (folder / "audio").mkdir(exist_ok=True)
    np.save(folder / "audio" / f"{vid}.npy", feats[vid])
  elif dmg == "hidden_file":
    (file(vid, streams[0]).parent / f".{vid}.npy.swp").write_bytes(b"\x00")


# ---------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class ConfigEdit:
  """``field`` set to ``value`` in the config file (``via="file"``) or as the
  flag ``--config.<field>=<value>`` (``via="flag"``, the value as text)."""
  field: str
  value: Any
  via: str


@dataclasses.dataclass(frozen=True)
class ConfigFileDamage:
  """A config file that does not load as one."""
  kind: str


CONFIG_FILE_DAMAGES = {
    "syntax": "def get_config(:\n",
    "no_get_config": "X = 1\n",
    "raises": "def get_config():\n  raise RuntimeError('boom')\n",
    "returns_dict": "def get_config():\n  return {'train': {'num_steps': 2}}\n",
    "returns_none": "def get_config():\n  return None\n",
    "bad_import": "import no_such_module_xyz\ndef get_config():\n  return None\n",
    "non_utf8": b"# \xff\xfe\n",  # before the valid file
    "empty": "",
    "directory": None,
    "missing": None,
    "recursion": "def get_config():\n  return get_config()\n",
    "raises_keyerror": "def get_config():\n  return {}['x']\n",
    "raises_attributeerror": "def get_config():\n  return None.x\n",
}


def _base_fields() -> dict:
  from jaxseg import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxseg import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  return config_lib.flatten(workdir_lib.config_to_dict(config_lib.base_config()))


BASE_FIELDS = _base_fields()
# Fields whose value reaches a path, a device or a process: set only to values
# that cannot be valid (a valid one would train elsewhere, or start a coordinator).
_UNKNOWN_FIELDS = ["train.num_step", "trian.steps", "loss.alpha.x", "data.features_dirs",
                   "model.embed_dim2", "inference.rulez", "eval.tiou", "x"]
BAD_TEXT = ["abc", "", "nan", "inf", "-inf", "1e999", "(1,", "None", "True", "[]", "{}",
            "-1", "0", "1e300", "99999999999999999999999", "1.5", "'x'", "../x", "\x00"]


def config_value_for(field: str, default) -> st.SearchStrategy:
  """Values of the wrong type, range or finiteness for ``field``."""
  common = st.sampled_from([None, "x", "12", [1], {"a": 1}, [], NAN])
  if isinstance(default, bool):
    return common | st.sampled_from([1, 0, "True", 1.0])
  if isinstance(default, int):
    return common | st.sampled_from([-1, 0, 10**30, 1.5, 2.0, True, INF, -2**63])
  if isinstance(default, float):
    return common | st.sampled_from([-1.0, 0.0, 1e300, -1e300, INF, -INF, 5e-324, True, 10**10])
  if isinstance(default, str):
    return common | st.sampled_from([3, "", "../x", "nosuch", default.upper() if default else "X",
                                     default + " "])
  if isinstance(default, (list, tuple)):
    return common | st.sampled_from([3, "x", [NAN], [INF], [[1]], ["x"], [-1.0], [10**30]])
  return common


def config_edit(*, only_invalid: bool = False) -> st.SearchStrategy:
  """A bad config value (in the file or a flag), or a config file that does not load."""
  fields = sorted(BASE_FIELDS)

  def value_edit(field):
    default = BASE_FIELDS[field]
    value = config_value_for(field, default)
    if only_invalid:  # values no field accepts (a valid one would train)
      value = st.sampled_from([NAN, INF, "x", [[1]], {"a": 1}]) if not isinstance(
          default, str) else st.sampled_from([3, [1], {"a": 1}, None])
    return st.builds(ConfigEdit, st.just(field), value, st.sampled_from(["file", "flag"]))

  unknown = st.builds(ConfigEdit, st.sampled_from(_UNKNOWN_FIELDS), st.sampled_from([1, "x", 0.5]),
                      st.sampled_from(["file", "flag"]))
  flag_text = st.builds(ConfigEdit, st.sampled_from(fields), st.sampled_from(BAD_TEXT),
                        st.just("flag_text"))
  return st.one_of(st.sampled_from(fields).flatmap(value_edit), unknown, flag_text,
                   st.builds(ConfigFileDamage, st.sampled_from(sorted(CONFIG_FILE_DAMAGES))))


def apply_config_edit(ex: Example, edit) -> list:
  """Writes ``edit`` into the example's ``cfg.py``; returns the extra flags."""
  if isinstance(edit, ConfigFileDamage):
    cfg = ex.p("cfg.py")
    content = CONFIG_FILE_DAMAGES[edit.kind]
    if edit.kind == "non_utf8":
      content += cfg.read_bytes()
    cfg.unlink()
    if edit.kind == "directory":
      cfg.mkdir()
    elif content is not None:
      cfg.write_bytes(content if isinstance(content, bytes) else content.encode())
    return []
  if edit.via == "file":
    write_config_file(ex.p("cfg.py"), [(edit.field, edit.value)])
    return []
  text = edit.value if edit.via == "flag_text" else _flag_text(edit.value)
  return [f"--config.{edit.field}={text}"]


def _flag_text(value) -> str:
  if isinstance(value, str):
    return value
  if isinstance(value, float) and math.isnan(value):
    return "nan"
  return repr(value)


# --------------------------------------------------------- output targets


@dataclasses.dataclass(frozen=True)
class OutputCase:
  """An entry point's output (``target``, relative to the example) that may alias
  an input; ``overwrite``: with ``--overwrite`` where the entry point has it;
  ``annotations``: the annotation file's name (``--mode data``: a name a run
  writes too, when the workdir is the data folder)."""
  entry: str
  target: str
  overwrite: bool = False
  annotations: str = "gt.json"


OUTPUT_TARGETS = {
    "predict": ["pfeat", "pfeat/sub", "run", "run/predictions", "run/checkpoints", ".",
                "link_to_pfeat", "link_to_run", "pfeat/../pfeat", "run/.", "a_file",
                "a_file/x", "other_run/x", "user_dir", "fresh", "fresh/deep/er", "data",
                "data/features", "link_to_fresh"],
    "score": ["score/gt.json", "score/pred.json", "score/amb.json", "score", "missing/x.csv",
              "fresh.csv", "link_to_gt", "score/.", "run/results.csv"],
    "report": ["run", "run/results.json", "runs_parent", ".", "fresh", "a_file",
               "run/checkpoints", "link_to_run"],
    "wtalc_convert": ["wtalc", "wtalc/F.npy", "wtalc/sub", "fresh", "converted", "a_file",
                      "link_to_wtalc", "."],
    "data": ["data", "data/features", "data/gt.json", ".", "cfg.py", "run", "fresh",
             "link_to_data"],
}


ANNOTATION_NAMES = ["gt.json", "data.json", "splits.json", "classes.json", "config.json",
                    "rules.json"]


def output_case() -> st.SearchStrategy:
  return st.sampled_from(sorted(OUTPUT_TARGETS)).flatmap(
      lambda e: st.builds(OutputCase, st.just(e), st.sampled_from(OUTPUT_TARGETS[e]),
                          st.booleans(), st.sampled_from(ANNOTATION_NAMES) if e == "data"
                          else st.just("gt.json")))


# ---------------------------------------------------------------- symlinks


@dataclasses.dataclass(frozen=True)
class LinkCase:
  """An input reached through a symbolic link: ``what`` becomes a link of ``kind``."""
  entry: str
  what: str
  kind: str


LINK_INPUTS = {"data": ["gt.json", "features", "feature_file", "cfg.py"],
               "predict": ["pfeat", "feature_file", "run", "run/config.json",
                           "run/checkpoints", "run/classes.json"],
               "eval": ["run", "gt.json", "features"],
               "score": ["gt.json", "pred.json"],
               "report": ["run", "run/results.json"],
               "wtalc_convert": ["wtalc", "F.npy", "videoname.npy"]}
LINK_KINDS = ["valid", "dangling", "loop", "to_devnull", "relative", "to_parent"]


def link_case() -> st.SearchStrategy:
  return st.sampled_from(sorted(LINK_INPUTS)).flatmap(
      lambda e: st.builds(LinkCase, st.just(e), st.sampled_from(LINK_INPUTS[e]),
                          st.sampled_from(LINK_KINDS)))


# --------------------------------------------------------------- leftovers


@dataclasses.dataclass(frozen=True)
class LeftoverCase:
  """What an interrupted write leaves, then ``entry`` runs again."""
  entry: str  # train, eval, predict
  leftovers: tuple


RUN_LEFTOVERS = ["results_tmp", "detections_tmp", "metrics_tmp", "orbax_tmp",
                 "orbax_tmp_ts", "cut_metrics_line", "stale_lock", "user_tmp", "config_tmp",
                 "plots_tmp", "best_orbax_tmp"]
PREDICT_LEFTOVERS = ["pred_tmp_marked", "pred_old_marked", "pred_tmp_empty", "pred_tmp_foreign",
                     "pred_tmp_link", "pred_other_tmp"]


def leftover_case() -> st.SearchStrategy:
  run = st.builds(LeftoverCase, st.sampled_from(["train", "eval"]),
                  st.lists(st.sampled_from(RUN_LEFTOVERS), min_size=1, max_size=4,
                           unique=True).map(tuple))
  pred = st.builds(LeftoverCase, st.just("predict"),
                   st.lists(st.sampled_from(PREDICT_LEFTOVERS + ["orbax_tmp", "stale_lock"]),
                            min_size=1, max_size=3, unique=True).map(tuple))
  return run | pred


# ------------------------------------------------------- changed configs


@dataclasses.dataclass(frozen=True)
class ConfigChange:
  """A valid config ``field`` changed to ``value`` for a rerun in ``mode``."""
  field: str
  value: Any
  mode: str  # train, eval, data, predict
  overwrite: bool


# Valid changes that make another run (refused, or with --overwrite trained anew).
RUN_CHANGES = [("loss.alpha", 0.3), ("loss.gamma", 0.05), ("train.learning_rate", 3e-3),
               ("seed", 1), ("labels.seed", 2), ("model.dropout_rate", 0.3),
               ("inference.nms_iou", 0.4), ("eval.tiou_thresholds", (0.3, 0.5)),
               ("data.feature_rate", 2.0), ("train.schedule", "cosine"),
               ("loss.use_sphere", False), ("train.weight_decay", 0.0),
               ("labels.mode", "two-segment"), ("inference.rules", "jaxseg"),
               ("train.batch_size", 2), ("model.embed_dim", 4)]
# Changes a rerun may make (RERUN_FREE_FIELDS): the old results stay the run's.
FREE_CHANGES = [("eval.num_plot_videos", 1), ("train.progress", True)]


def config_change() -> st.SearchStrategy:
  return st.sampled_from(RUN_CHANGES + FREE_CHANGES).flatmap(lambda fv: st.builds(
          ConfigChange, st.just(fv[0]), st.just(fv[1]),
          st.sampled_from(["train", "train", "eval", "data", "predict"]), st.booleans()))


def _change_flag(field, value) -> str:
  if isinstance(value, tuple):
    return f"--config.{field}=({','.join(map(str, value))},)"
  return f"--config.{field}={value}"


# ------------------------------------------------------------- W-TALC


@dataclasses.dataclass(frozen=True)
class WtalcCase:
  """One array of the bundle damaged (``npy``: the file; ``replace``: the content),
  and the converter's arguments."""
  array: str
  kind: str
  arg: Any
  features_file: str = "F.npy"
  feature_rate: str = "1.5625"


WTALC_REPLACEMENTS = {
    "videoname": ["drop_last", "duplicate", "path_id", "non_utf8", "zero_d", "two_d", "floats",
                  "unicode", "empty_name", "nul"],
    "subset": ["unknown", "drop_last", "floats", "all_test", "empty"],
    "classlist": ["duplicate", "empty", "non_utf8", "trailing_space", "floats", "path_class"],
    "duration": ["nan", "negative", "zero", "strings", "drop_last", "flat", "huge", "inf"],
    "segments": ["nan", "reversed", "negative", "strings", "flat", "one_bound", "drop_last",
                 "huge", "not_list", "none"],
    "labels": ["unknown", "trailing_space", "count_mismatch", "ints", "drop_last", "none"],
    "F": ["nan_item", "wrong_d", "one_d", "empty_item", "float_item", "drop_last", "int_items",
          "nested_object", "plain_3d", "none_item", "string_item"],
}


def wtalc_case() -> st.SearchStrategy:
  replace = st.sampled_from(sorted(WTALC_REPLACEMENTS)).flatmap(
      lambda a: st.builds(WtalcCase, st.just(a), st.just("replace"),
                          st.sampled_from(WTALC_REPLACEMENTS[a])))
  npy = st.builds(WtalcCase, st.sampled_from(sorted(wtalc_arrays())), st.just("npy"),
                  npy_damage(byte_level=True))
  args = st.builds(WtalcCase, st.just("F"), st.just("none"), st.none(),
                   st.sampled_from(["F.npy", "missing.npy", "../x.npy", "/dev/null", "",
                                    "videoname.npy", ".", "sub/F.npy"]),
                   st.sampled_from(["1.5625", "0", "-1", "nan", "inf", "1e-300", "abc", "1e300"]))
  return st.one_of(replace, replace, npy, args)


def wtalc_replacement(arrays: dict, name: str, kind: str) -> np.ndarray:
  a = arrays[name]
  n = len(arrays["videoname"])
  if kind == "drop_last":
    return a[:-1]
  if name == "videoname":
    items = list(a)
    return {"duplicate": lambda: np.array(items[:-1] + items[:1]),
            "path_id": lambda: np.array(items[:1] + [b"../../escape"] + items[2:]),
            "non_utf8": lambda: np.array(items[:1] + [b"\xff\xfe"] + items[2:]),
            "zero_d": lambda: np.array(items[0]),
            "two_d": lambda: np.array([items]),
            "floats": lambda: np.arange(n, dtype=float),
            "unicode": lambda: np.array([x.decode() for x in items]),
            "empty_name": lambda: np.array(items[:1] + [b""] + items[2:]),
            "nul": lambda: np.array(items[:1] + [b"a\x00b"] + items[2:])}[kind]()
  if name == "subset":
    return {"unknown": lambda: np.array([b"train"] * n), "floats": lambda: np.zeros(n),
            "all_test": lambda: np.array([b"test"] * n),
            "empty": lambda: np.array([b""] * n)}[kind]()
  if name == "classlist":
    return {"duplicate": lambda: np.array([b"Diving", b"Diving"]),
            "empty": lambda: np.array([], dtype="S1"),
            "non_utf8": lambda: np.array([b"Div\xe9ng", b"Archery"]),
            "trailing_space": lambda: np.array([b"Diving ", b"Archery"]),
            "floats": lambda: np.zeros(2),
            "path_class": lambda: np.array([b"../Diving", b"Archery"])}[kind]()
  if name == "duration":
    return {"nan": lambda: np.full((n, 1), NAN), "negative": lambda: -a,
            "zero": lambda: np.zeros((n, 1)), "strings": lambda: np.array([[b"x"]] * n),
            "flat": lambda: a.ravel(), "huge": lambda: np.full((n, 1), 1e300),
            "inf": lambda: np.full((n, 1), INF)}[kind]()
  if name == "segments":
    segs = {"nan": [[[NAN, 1.0]]], "reversed": [[[3.0, 1.0]]], "negative": [[[-2.0, 1.0]]],
            "strings": [[["a", "b"]]], "flat": [[1.0, 2.0]], "one_bound": [[[1.0]]],
            "huge": [[[0.0, 1e300]]], "not_list": [3.0], "none": [None]}[kind]
    return _obj(segs + list(a[1:]))
  if name == "labels":
    labs = {"unknown": [[b"Golf", b"Diving"]], "trailing_space": [[b"Archery ", b"Diving"]],
            "count_mismatch": [[b"Archery"]], "ints": [[1, 0]], "none": [None]}[kind]
    return _obj(labs + list(a[1:]))
  if name == "F":
    first = a[0]
    item = {"nan_item": lambda: np.where(np.arange(first.size).reshape(first.shape) == 3, NAN,
                                         first).astype(np.float32),
            "wrong_d": lambda: first[:, :5], "one_d": lambda: first[:, 0],
            "empty_item": lambda: first[:0], "float_item": lambda: 1.5,
            "int_items": lambda: first.astype(np.int64),
            "nested_object": lambda: _obj([first]),
            "none_item": lambda: None, "string_item": lambda: "x"}
    if kind == "plain_3d":
      return np.zeros((n, 4, 6), np.float32)
    return _obj([item[kind]()] + list(a[1:]))
  raise ValueError((name, kind))


# ---------------------------------------------------------- score, report


@dataclasses.dataclass(frozen=True)
class ScoreCase:
  """``jaxseg.score`` on damaged predictions and ground truth, with these arguments."""
  pred_edits: tuple
  gt_edits: tuple
  subset: str | None
  tiou: str | None
  protocol: str
  feature_rate: str | None
  ambiguous: str | None
  per_class: bool
  output: bool


def _detections_shape() -> dict:
  """The shape of the run's ``detections.json`` the edits draw paths from."""
  return {"results": {vid: [{"segment": [0.0, 1.0], "label": "l", "score": 0.5}] * 2
                      for vid in TEST_IDS}, "version": "v", "external_data": {}}


def score_case() -> st.SearchStrategy:
  pred = st.lists(json_edits(_detections_shape()), max_size=2).map(tuple)
  gt = st.lists(annotation_edit(), max_size=1).map(tuple)
  return st.builds(
      ScoreCase, pred, gt, st.sampled_from([None, "test", "validation", "nope", "", "../x"]),
      st.sampled_from([None, "0.5", "0.1:0.7:0.1", "0.3,0.5", "1", "0.5:0.1:0.1", "x", "0.5,",
                       ":", "1e-300", "0.5:0.5:0"]),
      st.sampled_from(["activitynet", "wtalc"]),
      st.sampled_from([None, "2.0", "0", "-1", "nan", "inf", "1e-300", "abc"]),
      st.sampled_from([None, "json", "txt", "bad_json", "bad_txt", "missing", "nan_json",
                       "reversed_txt", "unknown_video"]),
      st.booleans(), st.booleans())


AMBIGUOUS = {"json": '{"te8": [[0.0, 1.0]]}', "txt": "te8 0.0 1.0\nte9 2.0 3.5\n",
             "bad_json": '{"te8": [[0.0]]}', "bad_txt": "te8 zero one\n",
             "nan_json": '{"te8": [[NaN, 1.0]]}', "reversed_txt": "te8 3.0 1.0\n",
             "unknown_video": "nosuch 0.0 1.0\n"}


@dataclasses.dataclass(frozen=True)
class ReportCase:
  """``jaxseg.report`` on a run whose ``results.json`` is damaged (and maybe a
  second, intact run), with these arguments."""
  edits: tuple
  runs: str  # one, two, parent, missing, file, empty_dir
  checkpoint: str
  fig5: str | None
  annotation_time: tuple | None


def report_case(results_doc) -> st.SearchStrategy:
  return st.builds(
      ReportCase, st.lists(json_edits(results_doc), max_size=2).map(tuple),
      st.sampled_from(["one", "two", "parent", "missing", "file", "empty_dir"]),
      st.sampled_from(["final", "selected"]),
      st.sampled_from([None, "mAP@0.5", "mAP@0.9", "nope", "", "cls_mAP"]),
      st.sampled_from([None, ("one-segment=0.3",), ("x",), ("one-segment=abc",),
                       ("one-segment=nan",), ("=1",), ("one-segment=-1", "full=inf")]))


def _nested(flat: dict) -> dict:
  out = {}
  for key, value in flat.items():
    *parents, leaf = key.split(".")
    node = out
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return out


def _results_shape() -> dict:
  """The shape of a run's ``results.json`` the report's edits draw paths from."""
  metrics = {"mAP@0.5": 1.0, "mAP@0.1": 1.0, "avg0.1:0.5": 1.0, "cls_mAP": 1.0, "step": 4}
  return {"final": metrics, "selected": dict(metrics), "per_class_ap_final": {"Bowl": {"0.5": 0}},
          "provenance": {"config": {"labels": {"mode": "x"}, "train": {"num_steps": 4},
                                    "data": {"synthetic": {"output_dir": ""}}},
                         "label_mode": "x", "seed": 0},
          "rules": {"final": {"chosen": "x"}, "selected": {"chosen": "x"}}}


# ============================================================ properties
#
# One check per promise: ``check(world, case)`` builds the example, runs the
# entry point (``Example.run`` checks I1-I3) and checks what the promise adds.

EVAL_OUTPUTS = ("run/results.json", "run/results.csv", "run/results.md", "run/detections.json",
                "run/detections_selected.json", "run/rules.json", "run/plots", "run/tensorboard",
                "run/.lock", "run/.*.tmp")
# The files of a finished run that no later command may change.
RUN_INPUTS = tuple(f"run/{n}" for n in ("config.json", "checkpoints", "classes.json", "data.json",
                                        "segment_labels.npz", "splits.json", "metrics.jsonl"))
RUN_RESULTS = ("checkpoints", "metrics.jsonl", "results.json", "results.csv", "results.md",
               "detections.json", "detections_selected.json", "rules.json")


def _predict_args(ex, *, workdir="run", features="pfeat", out="out", extra=()) -> list:
  return ["--mode=predict", f"--workdir={ex.p(workdir)}",
          f"--predict_features={ex.p(features)}", f"--predict_out={ex.p(out)}", *extra]


def run_eval(ex: Example, names, *, inputs=("data", "cfg.py"), extra=()) -> Outcome:
  """``--mode eval`` of the example's run; refused, it must have written nothing."""
  before = tree_state(ex.p("run"))
  out = ex.run("main", ex.main_args("run", "eval", *extra), inputs=list(inputs) + list(RUN_INPUTS),
               outputs=EVAL_OUTPUTS, names=set(names) | {str(ex.p("run")), "unfinished run"},
               valid=valid_eval(ex.p("run")))
  if out.rc == 2 and tree_state(ex.p("run")) != before:
    raise AssertionError(ex.failure(out, ["a refused --mode eval wrote into the run"]))
  return out


def valid_eval(workdir: pathlib.Path) -> Callable[[Outcome], None]:
  def check(out):
    res = read_json(workdir / "results.json")
    assert {"final", "selected"} <= set(res), sorted(res)
    assert "Test mAP" in out.stdout
  return check


def valid_data(out: Outcome) -> None:
  assert "videos" in out.stdout and "classes" in out.stdout, out.stdout[-500:]


def valid_run(workdir: pathlib.Path, steps: int = STEPS) -> Callable[[Outcome], None]:
  def check(out):
    res = read_json(workdir / "results.json")
    assert res["final"]["step"] == steps, res["final"]
    assert isinstance(read_json(workdir / "detections.json")["results"], dict)
    assert "Test mAP" in out.stdout
  return check


def valid_predict(out_dir: pathlib.Path) -> Callable[[Outcome], None]:
  def check(out):
    det = read_json(out_dir / "detections.json")
    assert (out_dir / ".jaxseg-predictions").is_file()
    assert det["results"], "no video predicted"
    for vid in det["results"]:
      with np.load(out_dir / "cas" / f"{vid}.npz") as z:
        assert np.isfinite(z["cas_a"]).all()
    assert "written to" in out.stdout
  return check


def _refused_run_left_only_its_config(workdir: pathlib.Path, out: Outcome) -> None:
  """Bad data: a refused run leaves at most config.json (and .lock) in its workdir.
  (Features a reader accepts may still make training diverge: a NonFiniteError
  keeps the checkpoints and log before the bad step, as documented.)"""
  if out.rc == 2 and workdir.exists() and "non-finite" not in out.stderr.splitlines()[-1]:
    left = set(os.listdir(workdir)) & set(RUN_RESULTS)
    assert not left, f"{out.command()}: refused but wrote {sorted(left)}"


def _names_of_edits(edits) -> set:
  names = set()
  for e in edits:
    if isinstance(e, JsonEdit):
      names |= {str(k) for k in e.path if isinstance(k, str) and k}
      if e.op == "rename" and isinstance(e.value, str) and e.value:
        names.add(e.value)
  return names


# ----------------------------------------------------------- annotations


@dataclasses.dataclass(frozen=True)
class AnnotationCase:
  edits: tuple
  entry: str  # data, train, eval, score


def annotation_case() -> st.SearchStrategy:
  return st.builds(AnnotationCase, st.lists(annotation_edit(), min_size=1, max_size=3).map(tuple),
                   st.sampled_from(["data"] * 4 + ["score"] * 2 + ["eval"] * 2 + ["train"]))


def check_annotations(world: World, case: AnnotationCase) -> None:
  with world.example("data", "cfg.py", "run", "score") as ex:
    ex.description = repr(case)
    gt = "score/gt.json" if case.entry == "score" else "data/gt.json"
    ex.p(gt).write_bytes(json_bytes(world.gt_doc, case.edits))
    names = {"gt.json", "data changed"} | _names_of_edits(case.edits)
    if case.entry == "score":
      ex.run("score", ["--ground-truth", ex.p(gt), "--predictions", ex.p("score/pred.json")],
             inputs=["score"], names=names, valid=lambda o: _valid_score(o, None))
    elif case.entry == "eval":
      run_eval(ex, names)
    else:
      workdir = ex.p("wd")
      out = ex.run("main", ex.main_args("wd", case.entry), inputs=["data", "cfg.py"],
                   outputs=["wd"], names=names,
                   valid=valid_data if case.entry == "data" else valid_run(workdir))
      _refused_run_left_only_its_config(workdir, out)


# --------------------------------------------------------------- features


@dataclasses.dataclass(frozen=True)
class FeatureCase:
  video: str
  damage: NpyDamage
  entry: str  # data, train, eval, predict


def feature_case() -> st.SearchStrategy:
  return st.builds(FeatureCase, st.sampled_from(VIDEO_IDS), npy_damage(),
                   st.sampled_from(["data"] * 3 + ["predict"] * 3 + ["eval", "train"]))


def check_features(world: World, case: FeatureCase) -> None:
  with world.example("data", "cfg.py", "run", "pfeat") as ex:
    ex.description = repr(case)
    vid = case.video
    if case.entry == "predict":
      vid = PREDICT_IDS[VIDEO_IDS.index(vid) % len(PREDICT_IDS)]
      path = ex.p("pfeat") / f"{vid}.npy"
    else:
      path = ex.p("data/features") / f"{vid}.npy"
    write_npy_damage(path, case.damage, outside=ex.p("outside"))
    # Values a reader takes (huge ints read from a lying header) may make training
    # diverge: a NonFiniteError naming the step (docs/reliability.md, numerical faults).
    names = {f"{vid}.npy", repr(vid), "non-finite", str(path.parent)}
    inputs = ["data", "cfg.py", "pfeat", "outside"]
    if case.entry == "predict":
      ex.run("main", _predict_args(ex), inputs=inputs + ["run"], outputs=["out", ".out.*"],
             names=names, valid=valid_predict(ex.p("out")))
    elif case.entry == "eval":
      run_eval(ex, names, inputs=inputs)
    else:
      out = ex.run("main", ex.main_args("wd", case.entry), inputs=inputs, outputs=["wd"],
                   names=names,
                   valid=valid_data if case.entry == "data" else valid_run(ex.p("wd")))
      _refused_run_left_only_its_config(ex.p("wd"), out)


# ---------------------------------------------------------------- layouts


@dataclasses.dataclass(frozen=True)
class LayoutEntryCase:
  layout: LayoutCase
  entry: str  # data, predict


def layout_entry_case() -> st.SearchStrategy:
  return st.one_of(st.builds(LayoutEntryCase, layout_case(VIDEO_IDS), st.just("data")),
                   st.builds(LayoutEntryCase, layout_case(PREDICT_IDS), st.just("predict")))


def check_layouts(world: World, case: LayoutEntryCase) -> None:
  lay = case.layout
  with world.example("data", "cfg.py", "run", "pfeat") as ex:
    ex.description = repr(case)
    subsets = {vid: ("validation" if vid.startswith("tr") else "test") for vid in VIDEO_IDS}
    folder = ex.p("data/features" if case.entry == "data" else "pfeat")
    names = {f"{lay.video}.npy", repr(lay.video), str(folder), "rgb", "flow"}
    expect = "ok" if lay.damage in ("none", "extra_txt", "extra_dir", "hidden_file") else None
    if case.entry == "data":
      write_layout(ex.p("data/features"), lay, subsets)
      extra = ["--config.data.feature_streams=('rgb','flow')"] if "stream" in lay.layout else []
      ex.run("main", ex.main_args("wd", "data", *extra), inputs=["data", "cfg.py"],
             outputs=["wd"], names=names, valid=valid_data, expect=expect)
    else:
      write_layout(ex.p("pfeat"), lay, subsets)
      ex.run("main", _predict_args(ex), inputs=["pfeat", "run"], outputs=["out", ".out.*"],
             names=names, valid=valid_predict(ex.p("out")), expect=expect)


# ---------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class ConfigCase:
  edit: Any  # ConfigEdit or ConfigFileDamage
  entry: str  # data, eval, train


def config_case() -> st.SearchStrategy:
  return st.one_of(
      st.builds(ConfigCase, config_edit(), st.sampled_from(["data", "data", "eval"])),
      st.builds(ConfigCase, config_edit(only_invalid=True), st.just("train")))


def _starts_a_process_group(case: ConfigCase) -> bool:
  """``--mode train`` with a ``distributed.*`` value: a valid one calls
  ``jax.distributed.initialize``, which an in-process run (JAX already started)
  cannot do as a fresh process would; a bad coordinator address is checked in a
  fresh process by ``test_in_process_runs_match_a_fresh_process``."""
  return (case.entry == "train" and isinstance(case.edit, ConfigEdit)
          and case.edit.field.startswith("distributed."))


def check_config(world: World, case: ConfigCase) -> None:
  edit = case.edit
  assume(not _starts_a_process_group(case))
  with world.example("data", "cfg.py", "run") as ex:
    ex.description = repr(case)
    extra = apply_config_edit(ex, edit)
    names = {"--config"}
    if isinstance(edit, ConfigEdit):  # the field, or the unknown section holding it
      parts = edit.field.split(".")
      names |= {edit.field} | {"config." + ".".join(parts[:i]) + (":" if i < len(parts) else "")
                               for i in range(1, len(parts) + 1)}
    if isinstance(edit, ConfigEdit) and edit.field.endswith(("_path", "_dir", "_file", "_csv",
                                                             "_json")):
      names.add(f"{edit.value if edit.via == 'flag_text' else _flag_text(edit.value)}:")  # the file
    if case.entry == "eval":
      run_eval(ex, names, inputs=["data"], extra=extra)
      return
    out = ex.run("main", ex.main_args("wd", case.entry, *extra), inputs=["data", "cfg.py"],
                 outputs=["wd"], names=names,
                 valid=valid_data if case.entry == "data" else valid_run(ex.p("wd")))
    if out.rc == 2 and ex.p("wd").exists() and not _data_error(out):
      raise AssertionError(ex.failure(out, ["a refused config created the workdir, holding "
                                            f"{sorted(os.listdir(ex.p('wd')))}"]))


def _data_error(out: Outcome) -> bool:
  """Whether the error is about the data (a valid config whose data does not fit)."""
  line = [l for l in out.stderr.splitlines() if l.startswith("error:")][-1]
  return "config." not in line and "--config" not in line


# -------------------------------------------------------- a run's config


@dataclasses.dataclass(frozen=True)
class RunConfigCase:
  edits: tuple
  entry: str  # predict, eval, train


def run_config_case() -> st.SearchStrategy:
  shape = _nested(BASE_FIELDS)
  values = st.one_of(hostile_values(), st.sampled_from([-5.0, 0.0, 1e6, "jaxseg", "auto", 2]))
  keys = st.sampled_from(["x", "", "num_step", "Train", "alpha "])
  return st.builds(RunConfigCase,
                   st.lists(json_edits(shape, values=values, keys=keys), min_size=1, max_size=2)
                   .map(tuple), st.sampled_from(["predict", "predict", "eval", "train"]))


def check_run_config(world: World, case: RunConfigCase) -> None:
  # A rerun asking for fewer steps than config.json says trains on to them (as
  # documented): that is a long run, not a fault.
  assume(case.entry != "train" or not any(
      isinstance(e, JsonEdit) and tuple(e.path[:2]) in (("train", "num_steps"), ("train",), ())
      for e in case.edits))
  with world.example("data", "cfg.py", "run", "pfeat") as ex:
    ex.description = repr(case)
    cfg = ex.p("run/config.json")
    cfg.write_bytes(json_bytes(read_json(cfg), case.edits))
    names = {"config.json"} | _names_of_edits(case.edits)
    if case.entry == "predict":
      ex.run("main", _predict_args(ex), inputs=["pfeat", "run"], outputs=["out", ".out.*"],
             names=names, valid=valid_predict(ex.p("out")))
    elif case.entry == "eval":
      run_eval(ex, names)
    else:
      before = tree_state(ex.p("run"))
      out = ex.run("main", ex.main_args("run", "train"), inputs=["data", "cfg.py"],
                   outputs=["run"], names=names, valid=valid_run(ex.p("run")))
      if out.rc == 2:
        assert tree_state(ex.p("run")) == before, ex.failure(
            out, ["a refused rerun changed the workdir"])


# ------------------------------------------------------ a run's other files


@dataclasses.dataclass(frozen=True)
class RunFileCase:
  """One file of a finished run damaged: a JSON file (``edits``), the labels
  (``segment_labels.npz``) or metrics log (``damage``), or the ``index``-th file
  of a checkpoint (``damage``); then ``entry`` reads the run."""
  file: str
  edits: tuple
  damage: Any
  index: int
  entry: str  # eval, predict, train, data


RUN_FILE_SHAPES = {
    "data.json": {"class_names": ["a", "b", "c"], "dataset_fingerprint": "x", "num_videos": 12,
                  "segment_labels_sha256": "x"},
    "splits.json": {"validation": ["a", "b"], "seed": 0, "fraction": 0.25},
    "classes.json": {"class_names": ["a", "b", "c"], "feature_dim": 8},
    "rules.json": {w: {"chosen": "x", "rules": "auto", "step": 4, "split": "v",
                       "candidates": {"jaxseg": {"mAP@0.5": 1.0}}} for w in ("final", "selected")},
}
FILE_DAMAGES = st.one_of(st.builds(TextEdit, st.just("truncate"), st.floats(0, 0.999)),
                         st.sampled_from([TextEdit("empty"), TextEdit("trailing", b"\n{\"x"),
                                          TextEdit("trailing", b"\nNaN\n"), "missing",
                                          "directory"]))


def run_file_case() -> st.SearchStrategy:
  entries = st.sampled_from(["eval", "eval", "predict", "train", "data"])
  json_files = st.sampled_from(sorted(RUN_FILE_SHAPES)).flatmap(lambda f: st.builds(
      RunFileCase, st.just(f), st.lists(json_edits(RUN_FILE_SHAPES[f]), min_size=1, max_size=2)
      .map(tuple), st.none(), st.just(0), entries))
  other = st.builds(RunFileCase, st.sampled_from(["segment_labels.npz", "metrics.jsonl",
                                                  "checkpoints/latest", "checkpoints/best"]),
                    st.just(()), FILE_DAMAGES, st.integers(0, 40), entries)
  return st.one_of(json_files, other)


def check_run_files(world: World, case: RunFileCase) -> None:
  known_bug("checkpoint_asyncio_tracebacks", case.file.startswith("checkpoints/"))
  with world.example("data", "cfg.py", "run", "pfeat") as ex:
    ex.description = repr(case)
    path = ex.p("run") / case.file
    if case.file.startswith("checkpoints/"):
      files = sorted(p for p in path.rglob("*") if p.is_file())
      path = files[case.index % len(files)]
    if case.edits:
      path.write_bytes(json_bytes(read_json(path), case.edits))
    elif case.damage == "missing":
      path.unlink()
    elif case.damage == "directory":
      path.unlink()
      path.mkdir()
    else:
      path.write_bytes(apply_text_edit(path.read_bytes(), case.damage))
    names = {case.file, os.path.basename(case.file), "checkpoint", str(ex.p("run")),
             path.name} | _names_of_edits(case.edits)
    if case.entry == "eval":
      run_eval(ex, names)
    elif case.entry == "predict":
      ex.run("main", _predict_args(ex), inputs=["pfeat", "run"], outputs=["out", ".out.*"],
             names=names, valid=valid_predict(ex.p("out")))
    else:
      ex.run("main", ex.main_args("run", case.entry), inputs=["data", "cfg.py"],
             outputs=["run"], names=names,
             valid=valid_data if case.entry == "data" else valid_run(ex.p("run")))


# ---------------------------------------------------------------- outputs


def check_outputs(world: World, case: OutputCase) -> None:
  t = case.target
  with world.example(*World.PARTS) as ex:
    ex.description = repr(case)
    ex.p("a_file").write_text("a user's file")
    ex.p("user_dir").mkdir()
    ex.p("user_dir/notes.txt").write_text("keep me")
    shutil.copytree(ex.p("run"), ex.p("other_run"), symlinks=True)
    ex.p("runs_parent").mkdir()
    shutil.copytree(ex.p("run"), ex.p("runs_parent/r1"), symlinks=True)
    ex.p("converted").mkdir()
    ex.p("converted/annotations.json").write_text("{}")
    for link, target in (("link_to_pfeat", "pfeat"), ("link_to_run", "run"),
                         ("link_to_fresh", "fresh"), ("link_to_gt", "score/gt.json"),
                         ("link_to_wtalc", "wtalc"), ("link_to_data", "data")):
      os.symlink(ex.p(target), ex.p(link))
    target = ex.p(t)
    names = {t, os.path.normpath(t), str(target), os.path.basename(os.path.normpath(t))}
    # What the command may write: the target, where it leads, the temporary siblings.
    real = os.path.relpath(os.path.realpath(target), ex.root)
    outputs = ["*"] if t == "." else [t, _siblings(t), real, _siblings(real)]
    flag = ["--overwrite"] if case.overwrite else []
    if case.entry == "predict":
      aliases = ("pfeat", "run", ".", "link_to_pfeat", "link_to_run", "link_to_data", "data",
                 "other_run", "a_file", "user_dir", "link_to_fresh")
      ex.run("main", _predict_args(ex, out=t, extra=flag), inputs=["pfeat", "run"],
             outputs=outputs, names=names | {"--predict_out"},
             valid=valid_predict(target), expect="error" if t.startswith(aliases) else None)
    elif case.entry == "score":
      ex.run("score", ["--ground-truth", ex.p("score/gt.json"), "--predictions",
                       ex.p("score/pred.json"), "--output", target],
             inputs=["score/gt.json", "score/pred.json"], outputs=outputs,
             names=names | {"--output"}, valid=lambda o: _valid_score(o, target))
    elif case.entry == "report":
      runs = [ex.p("run")] if t != "runs_parent" else [ex.p("runs_parent")]
      ex.run("report", [*runs, "--out", target], inputs=["run", "runs_parent"], outputs=outputs,
             names=names | {"--out", "report"},
             valid=lambda o: _valid_report(target))
    elif case.entry == "wtalc_convert":
      ex.run("wtalc_convert", ["--wtalc-dir", ex.p("wtalc"), "--features-file", "F.npy",
                               "--out", target], inputs=["wtalc"], outputs=outputs,
             names=names | {"--out", "annotations.json"},
             valid=lambda o: _valid_convert(target))
    else:  # --mode data with the workdir where the data is
      if case.annotations != "gt.json":
        os.rename(ex.p("data/gt.json"), ex.p(f"data/{case.annotations}"))
      args = [a.replace("/data/gt.json", f"/data/{case.annotations}")
              for a in ex.main_args(t, "data", *flag)]
      ex.run("main", args, inputs=["data", "cfg.py"], outputs=outputs,
             names=names | {"--workdir", "config", case.annotations}, valid=valid_data)


def _siblings(rel: str) -> str:
  """The temporary files and folders written beside ``rel`` (``.<name>.<random>.tmp``)."""
  parent, name = os.path.split(os.path.normpath(rel))
  return os.path.join(parent, f".{name}.*")


def _valid_score(out: Outcome, output) -> None:
  assert "Detection mAP" in out.stdout, out.stdout[-500:]
  if output is not None:
    import pandas as pd  # pylint: disable=g-import-not-at-top
    assert len(pd.read_csv(output)) > 0


def _valid_report(out_dir) -> None:
  out_dir = pathlib.Path(out_dir)
  assert (out_dir / "report.csv").is_file() and (out_dir / "report.md").is_file()


def _valid_convert(out_dir) -> None:
  from jaxseg.data import wtalc_convert  # pylint: disable=g-import-not-at-top
  ds = wtalc_convert.read_converted(str(out_dir))
  assert len(ds.videos) >= 1


# --------------------------------------------------------------- symlinks


def check_symlinks(world: World, case: LinkCase) -> None:
  with world.example(*World.PARTS) as ex:
    ex.description = repr(case)
    where = {"gt.json": "data/gt.json", "features": "data/features",
             "feature_file": ("pfeat/te8.npy" if case.entry == "predict"
                              else "data/features/te9.npy"),
             "cfg.py": "cfg.py", "pfeat": "pfeat", "run": "run",
             "run/config.json": "run/config.json", "run/checkpoints": "run/checkpoints",
             "run/classes.json": "run/classes.json", "run/results.json": "run/results.json",
             "pred.json": "score/pred.json", "wtalc": "wtalc", "F.npy": "wtalc/F.npy",
             "videoname.npy": "wtalc/videoname.npy"}[case.what]
    if case.entry == "score" and case.what == "gt.json":
      where = "score/gt.json"
    path = ex.p(where)
    real = ex.p("real") / os.path.basename(where)
    ex.p("real").mkdir()
    shutil.move(path, real)
    target = {"valid": real, "dangling": ex.p("real/nowhere"), "loop": path,
              "to_devnull": pathlib.Path("/dev/null"),
              "relative": os.path.relpath(real, path.parent),
              "to_parent": path.parent}[case.kind]
    os.symlink(target, path)
    expect = "ok" if case.kind in ("valid", "relative") else None
    # A run whose checkpoints folder is a broken link "holds an unfinished run (no
    # checkpoint ...)": it names the run.
    names = {os.path.basename(where), case.what, "symbolic link", str(path), str(path.parent),
             str(ex.p("run"))}
    inputs = [*World.PARTS, "real"]
    if case.entry == "data":
      ex.run("main", ex.main_args("wd", "data"), inputs=inputs, outputs=["wd"], names=names,
             valid=valid_data, expect=expect)
    elif case.entry == "predict":
      ex.run("main", _predict_args(ex), inputs=inputs, outputs=["out", ".out.*"], names=names,
             valid=valid_predict(ex.p("out")), expect=expect)
    elif case.entry == "eval":
      moved_inputs = [p.replace("run/", "real/run/") for p in RUN_INPUTS]
      moved_outputs = [p.replace("run/", "real/run/") for p in EVAL_OUTPUTS]
      ex.run("main", ex.main_args("run", "eval"),
             inputs=["data", "cfg.py", "pfeat", "wtalc", "score", "real/gt.json",
                     "real/features", *RUN_INPUTS, *moved_inputs],
             outputs=[*EVAL_OUTPUTS, *moved_outputs], names=names,
             valid=valid_eval(ex.p("run")), expect=expect)
    elif case.entry == "score":
      ex.run("score", ["--ground-truth", ex.p("score/gt.json"), "--predictions",
                       ex.p("score/pred.json")], inputs=inputs, names=names,
             valid=lambda o: _valid_score(o, None), expect=expect)
    elif case.entry == "report":
      ex.run("report", [ex.p("run"), "--out", ex.p("rep")], inputs=inputs, outputs=["rep"],
             names=names | {"results.json"}, valid=lambda o: _valid_report(ex.p("rep")),
             expect=expect)
    else:
      ex.run("wtalc_convert", ["--wtalc-dir", ex.p("wtalc"), "--features-file", "F.npy",
                               "--out", ex.p("conv")], inputs=inputs, outputs=["conv"],
             names=names | {"wtalc"}, valid=lambda o: _valid_convert(ex.p("conv")),
             expect=expect)


# -------------------------------------------------------------- leftovers


def plant_leftovers(ex: Example, leftovers) -> tuple[list, list]:
  """Plants what a killed write leaves; returns (must be removed, must stay)."""
  run = ex.p("run")
  removed, kept = [], []
  for kind in leftovers:
    if kind == "results_tmp":
      (run / ".results.json.a1b2c3d4.tmp").write_text('{"final": {"mAP')
      removed.append("run/.results.json.a1b2c3d4.tmp")
    elif kind == "detections_tmp":
      (run / ".detections.json.zz9y8x7w.tmp").write_text("{")
      removed.append("run/.detections.json.zz9y8x7w.tmp")
    elif kind == "config_tmp":
      (run / ".config.json.q1w2e3r4.tmp").write_text('{"seed": 5')
      removed.append("run/.config.json.q1w2e3r4.tmp")
    elif kind == "metrics_tmp":
      (run / "metrics.jsonl.tmp-4242").write_text('{"step": 1')
      removed.append("run/metrics.jsonl.tmp-4242")
    elif kind in ("orbax_tmp", "orbax_tmp_ts", "best_orbax_tmp"):
      which = "best" if kind == "best_orbax_tmp" else "latest"
      name = f"{STEPS + 4}.orbax-checkpoint-tmp" + ("-1712345678" if kind == "orbax_tmp_ts" else "")
      d = run / "checkpoints" / which / name
      d.mkdir(parents=True)
      (d / "garbage").write_bytes(b"\x00" * 64)
    elif kind == "cut_metrics_line":
      with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": ')
    elif kind == "stale_lock":
      (run / ".lock").write_text("999999999\n")
    elif kind == "user_tmp":
      (run / ".my.tmp").write_text("a user's file")
      kept.append("run/.my.tmp")
    elif kind == "plots_tmp":
      (run / "plots").mkdir(exist_ok=True)
      (run / "plots" / ".te8.png.abcd1234.tmp").write_bytes(b"\x89PNG")
    elif kind.startswith("pred_"):
      name, marker, content = {
          "pred_tmp_marked": (".out.abcd1234.tmp", True, True),
          "pred_old_marked": (".out.abcd1234.old", True, True),
          "pred_tmp_empty": (".out.k3k3k3k3.tmp", False, False),
          "pred_tmp_foreign": (".out.keep1234.tmp", False, True),
          "pred_other_tmp": (".out.x.abcd1234.tmp", True, True),
          "pred_tmp_link": (".out.l1nk1234.tmp", None, None)}[kind]
      p = ex.p(name)
      if marker is None:
        os.symlink(ex.p("pfeat"), p)
        kept.append(name)
        continue
      p.mkdir()
      if marker:
        (p / ".jaxseg-predictions").write_text("")
      if content:
        (p / "detections.json").write_text("{")
      (removed if kind in ("pred_tmp_marked", "pred_old_marked", "pred_tmp_empty")
       else kept).append(name)
  return removed, kept


def check_leftovers(world: World, case: LeftoverCase) -> None:
  with world.example("data", "cfg.py", "run", "pfeat") as ex:
    ex.description = repr(case)
    removed, kept = plant_leftovers(ex, case.leftovers)
    if case.entry == "predict":
      out = ex.run("main", _predict_args(ex), inputs=["pfeat", "run"],
                   outputs=["out", ".out.*"], valid=valid_predict(ex.p("out")), expect="ok")
    elif case.entry == "eval":
      out = ex.run("main", ex.main_args("run", "eval"), inputs=["data", "cfg.py"],
                   outputs=["run"], valid=valid_run(ex.p("run")), expect="ok")
    else:
      out = ex.run("main", ex.main_args("run", "train"), inputs=["data", "cfg.py"],
                   outputs=["run"], valid=valid_run(ex.p("run")), expect="ok")
    problems = []
    if case.entry != "predict":
      res = read_json(ex.p("run/results.json"))
      for which in ("final", "selected"):
        if res[which] != world.results[which]:
          problems.append(f"{which} results differ from the uninterrupted run: "
                          f"{res[which]} != {world.results[which]}")
    if case.entry in ("train", "predict"):  # the next run of the workdir (or output) cleans
      problems += [f"{p} was not removed" for p in removed if os.path.lexists(ex.p(p))]
    problems += [f"{p} (not jaxseg's) was removed" for p in kept if not os.path.lexists(ex.p(p))]
    if problems:
      raise AssertionError(ex.failure(out, problems))


# --------------------------------------------------------- changed config


def check_changed_config(world: World, case: ConfigChange) -> None:
  free = (case.field, case.value) in FREE_CHANGES
  with world.example("data", "cfg.py", "run", "pfeat") as ex:
    ex.description = repr(case)
    flag = _change_flag(case.field, case.value)
    over = ["--overwrite"] if case.overwrite else []
    before = tree_state(ex.p("run"))
    names = {case.field}
    if case.mode == "predict":
      out = ex.run("main", _predict_args(ex, extra=[f"--config={ex.p('cfg.py')}", flag, *over]
                                         + [a for a in ex.main_args("run", "predict")
                                            if a.startswith("--config.data")]),
                   inputs=["data", "cfg.py", "pfeat", "run"], outputs=["out", ".out.*"],
                   names=names, valid=valid_predict(ex.p("out")),
                   expect="ok" if free else "error")
    elif case.mode in ("eval", "data") or not case.overwrite:
      # A rerun records a rerun-free field's new value in config.json (as it does a
      # larger train.num_steps).
      inputs = [p for p in RUN_INPUTS if not (free and p == "run/config.json")]
      out = ex.run("main", ex.main_args("run", case.mode, flag, *over),
                   inputs=["data", "cfg.py", *inputs], outputs=["run"],
                   names=names, expect="ok" if free else "error")
      if not free:
        assert tree_state(ex.p("run")) == before, ex.failure(
            out, ["a refused rerun changed the workdir"])
    else:  # train --overwrite: a new run of the new config
      out = ex.run("main", ex.main_args("run", "train", flag, *over), inputs=["data", "cfg.py"],
                   outputs=["run"], names=names, valid=valid_run(ex.p("run")), expect="ok")
      want = json.loads(json.dumps(case.value))
      got = read_json(ex.p("run/config.json"))
      prov = read_json(ex.p("run/results.json"))["provenance"]["config"]
      det = read_json(ex.p("run/detections.json")).get("provenance", {}).get("config")
      problems = []
      for what, doc in (("config.json", got), ("results.json", prov), ("detections.json", det)):
        node = doc
        for k in case.field.split("."):
          node = node.get(k) if isinstance(node, dict) else None
        if node != want:
          problems.append(f"{what} holds {case.field} = {node!r}, not the new {want!r}")
      if "Resumed" in out.stderr:
        problems.append("--overwrite resumed the old run instead of starting over")
      if problems:
        raise AssertionError(ex.failure(out, problems))


# ------------------------------------------------------------------ score


def check_score(world: World, case: ScoreCase) -> None:
  with world.example("score") as ex:
    ex.description = repr(case)
    ex.p("score/pred.json").write_bytes(json_bytes(world.detections_doc, case.pred_edits))
    if case.gt_edits:
      ex.p("score/gt.json").write_bytes(json_bytes(world.gt_doc, case.gt_edits))
    argv = ["--ground-truth", ex.p("score/gt.json"), "--predictions", ex.p("score/pred.json"),
            "--protocol", case.protocol]
    for flag, value in (("--subset", case.subset), ("--tiou", case.tiou),
                        ("--feature-rate", case.feature_rate)):
      if value is not None:
        argv += [flag, value]
    if case.ambiguous is not None:
      ext = "json" if "json" in case.ambiguous else "txt"
      amb = ex.p(f"score/amb_case.{ext}")
      if case.ambiguous != "missing":
        amb.write_text(AMBIGUOUS[case.ambiguous])
      argv += ["--ambiguous", amb]
    if case.per_class:
      argv.append("--per-class")
    output = ex.p("res.csv") if case.output else None
    if output is not None:
      argv += ["--output", output]
    # (--feature-rate 0 with the wtalc protocol is named "feature_rate": accepted)
    names = ({"pred.json", "gt.json", "--tiou", "--subset", "--feature-rate", "feature_rate",
              "--ambiguous", "amb_case"} | _names_of_edits(case.pred_edits)
             | _names_of_edits(case.gt_edits))
    ex.run("score", argv, inputs=["score"], outputs=["res.csv", ".res.csv.*"], names=names,
           valid=lambda o: _valid_score(o, output))


# ----------------------------------------------------------------- report


def check_report(world: World, case: ReportCase) -> None:
  with world.example("run") as ex:
    ex.description = repr(case)
    res = ex.p("run/results.json")
    res.write_bytes(json_bytes(world.results, case.edits))
    runs = {"one": [ex.p("run")], "missing": [ex.p("nope")], "file": [ex.p("run/results.json")],
            "empty_dir": [ex.p("empty")]}.get(case.runs)
    if case.runs == "empty_dir":
      ex.p("empty").mkdir()
    if case.runs in ("two", "parent"):
      shutil.copytree(world.base / "run", ex.p("runs/b"), symlinks=True)
      shutil.move(ex.p("run"), ex.p("runs/a"))
      runs = [ex.p("runs/a"), ex.p("runs/b")] if case.runs == "two" else [ex.p("runs")]
    argv = [*runs, "--out", ex.p("rep"), "--checkpoint", case.checkpoint]
    if case.fig5 is not None:
      argv += ["--fig5", case.fig5]
    if case.annotation_time is not None:
      argv += ["--annotation-time", *case.annotation_time]
    names = {"results.json", "--fig5", "--annotation-time", *map(str, runs)} | _names_of_edits(
        case.edits)
    ex.run("report", argv, inputs=["run", "runs", "empty"], outputs=["rep"], names=names,
           valid=lambda o: _valid_report(ex.p("rep")))


# ------------------------------------------------------------------ W-TALC


def check_wtalc(world: World, case: WtalcCase) -> None:
  header = case.arg if case.kind == "npy" else NpyDamage("none")
  with world.example("wtalc") as ex:
    ex.description = repr(case)
    folder = ex.p("wtalc")
    arrays = wtalc_arrays()
    if case.kind == "replace":
      np.save(folder / f"{case.array}.npy", wtalc_replacement(arrays, case.array, case.arg),
              allow_pickle=True)
    elif case.kind == "npy":
      damage_npy_bytes(folder / f"{case.array}.npy", case.arg, outside=ex.p("outside"))
    argv = ["--wtalc-dir", folder, "--features-file", case.features_file, "--out", ex.p("conv"),
            "--feature-rate", case.feature_rate]
    names = {f"{case.array}.npy", "wtalc", case.features_file or "--features-file",
             "--feature-rate", "feature_rate", "feature rate"}
    ex.run("wtalc_convert", argv, inputs=["wtalc", "outside"], outputs=["conv"], names=names,
           valid=lambda o: _valid_convert(ex.p("conv")))


# ===================================================== found by this fuzzer
#
# The minimal cases of the bugs this fuzzer found (fixed since): every suite run
# tries them first (hypothesis ``@example``), whatever else it draws.
REGRESSIONS = {
    "annotations": [
        # the missing-file error went on over indented lines listing the paths tried
        AnnotationCase((JsonEdit(("database", "tr0"), "rename", "tr0 "),), "data"),
        # a lone surrogate in an id: UnicodeEncodeError from os.stat
        AnnotationCase((JsonEdit(("database", "tr0"), "rename", "\ud800"),), "data")],
    "features": [  # 3e38: scores overflowed, ValueError 'scores must be finite'
        FeatureCase("te8", NpyDamage("value", ("3e38", 0.0, 0)), "eval")],
    "layouts": [
        # an empty rgb/ beside <vid>.npy files: IndexError in layouts.scan_folder
        LayoutEntryCase(LayoutCase("flat", "empty_stream_folder", "te8"), "predict"),
        # DIR/<subset>/{rgb,flow}/ for a run on joined features: 'no .npy features found'
        LayoutEntryCase(LayoutCase("subset/stream", "none", "te8"), "predict")],
    "config": [
        # an unknown override named as the first override
        ConfigCase(ConfigEdit("train.num_step", 1, "flag"), "data"),
        # config files that give no ConfigDict: 'config.<first override>: unknown field'
        ConfigCase(ConfigFileDamage("empty"), "data"),
        ConfigCase(ConfigFileDamage("raises_keyerror"), "data"),
        ConfigCase(ConfigFileDamage("returns_dict"), "data"),
        ConfigCase(ConfigFileDamage("returns_none"), "data"),
        # a NUL in a path field: ValueError 'embedded null byte'
        ConfigCase(ConfigEdit("data.ambiguous_path", "\x00", "flag_text"), "data"),
        # a size past int64: TypeError from MLIR while initialising the model
        ConfigCase(ConfigEdit("model.embed_dim", "99999999999999999999999", "flag_text"),
                   "train"),
        # a 1e300-step bucket: ValueError 'Maximum allowed dimension exceeded' in batching
        ConfigCase(ConfigEdit("train.length_buckets", "1e300", "flag_text"), "train")],
    "run_config": [  # AttributeError for a missing field or section; RecursionError
        RunConfigCase((JsonEdit(("data", "annotation_path"), "drop"),), "predict"),
        RunConfigCase((JsonEdit(("model",), "drop"),), "predict"),
        RunConfigCase((JsonEdit((), "set", Raw('{"a": ' * 1500 + "1" + "}" * 1500)),),
                      "predict")],
    "run_files": [
        # zipfile.BadZipFile; TypeError / KeyError from data.json and splits.json
        RunFileCase("segment_labels.npz", (), TextEdit("truncate", 0.5), 0, "eval"),
        RunFileCase("data.json", (JsonEdit((), "set", None),), None, 0, "eval"),
        RunFileCase("splits.json", (JsonEdit(("validation",), "drop"),), None, 0, "eval"),
        RunFileCase("splits.json", (JsonEdit(("validation", 0), "set", []),), None, 0, "eval"),
        # an emptied checkpoint metadata file: JSONDecodeError in predict
        RunFileCase("checkpoints/best", (), TextEdit("truncate", 0.0), 2, "predict"),
        # a metrics.jsonl line that is not an object: AttributeError on resume
        RunFileCase("metrics.jsonl", (), TextEdit("trailing", b"\nNaN\n"), 0, "train")],
    "report": [  # a results.json without provenance: KeyError 'provenance'
        ReportCase((JsonEdit(("provenance",), "drop"),), "one", "final", None, None)],
    "outputs": [
        # --workdir = the data folder: classes.json (the annotations) replaced
        OutputCase("data", "data", False, "classes.json"),
        OutputCase("data", "data", False, "splits.json"),  # KeyError 'validation'
        # score --output GT.json replaced the ground truth
        OutputCase("score", "score/gt.json"), OutputCase("score", "link_to_gt")],
    "wtalc": [
        # a number as a video's segments: TypeError; a (4, 0) header: IndexError
        WtalcCase("segments", "replace", "not_list"),
        WtalcCase("segments", "npy", NpyDamage("claim_dtype", "<f8")),
        WtalcCase("subset", "npy", NpyDamage("claim_shape", ("T", 0))),
        # '<U3' over byte strings: code points past U+10FFFF, ValueError from os.fspath
        WtalcCase("videoname", "npy", NpyDamage("claim_dtype", "<U3"))],
}


# ============================================================ the registry


@dataclasses.dataclass(frozen=True)
class Property:
  """One promise: its cases, its check and the entry points it drives."""
  name: str
  promise: str
  entry_points: tuple
  strategy: st.SearchStrategy
  check: Callable[[World, Any], None]
  examples: int  # the suite's default count (about a minute for all of them)

  def entry_point(self, case) -> str:
    """The entry point one case drives (for the long run's counts)."""
    entry = getattr(case, "entry", None) or getattr(case, "mode", None)
    if entry in ("data", "train", "eval", "predict"):
      return f"main --mode {entry}"
    if entry is None:
      return self.entry_points[0]
    return entry


PROPERTIES = [
    Property("annotations", "a bad annotation JSON is one named error; a refused run "
             "writes no result", ("main --mode data", "main --mode train", "main --mode eval",
                                  "score"), annotation_case(), check_annotations, 60),
    Property("features", "a bad .npy is one named error; no pickle, no huge allocation",
             ("main --mode data", "main --mode train", "main --mode eval", "main --mode predict"),
             feature_case(), check_features, 60),
    Property("layouts", "every layout reads; a missing stream or subset is a named error",
             ("main --mode data", "main --mode predict"), layout_entry_case(), check_layouts, 40),
    Property("config", "a bad config is refused naming the field; no workdir is created",
             ("main --mode data", "main --mode eval", "main --mode train"), config_case(),
             check_config, 60),
    Property("run_config", "a damaged config.json of a run is refused naming the file and "
             "field; the run is untouched", ("main --mode predict", "main --mode eval",
                                             "main --mode train"),
             run_config_case(), check_run_config, 40),
    Property("run_files", "a damaged file of a run (data.json, splits.json, classes.json, "
             "rules.json, labels, metrics, a checkpoint) is one named error or read as "
             "documented", ("main --mode eval", "main --mode predict", "main --mode train",
                           "main --mode data"), run_file_case(), check_run_files, 30),
    Property("outputs", "an output that aliases an input never changes an input",
             ("main --mode predict", "main --mode data", "score", "report", "wtalc_convert"),
             output_case(), check_outputs, 30),
    Property("symlinks", "inputs through symbolic links read or are named errors",
             ("main --mode data", "main --mode predict", "main --mode eval", "score", "report",
              "wtalc_convert"), link_case(), check_symlinks, 20),
    Property("leftovers", "an interrupted write's leftovers never become results",
             ("main --mode train", "main --mode eval", "main --mode predict"), leftover_case(),
             check_leftovers, 10),
    Property("changed_config", "a changed config never reuses old results",
             ("main --mode train", "main --mode eval", "main --mode data", "main --mode predict"),
             config_change(), check_changed_config, 8),
    Property("score", "jaxseg.score: one named error or a valid table", ("score",),
             score_case(), check_score, 100),
    Property("report", "jaxseg.report: one named error or a valid report", ("report",),
             report_case(_results_shape()), check_report, 30),
    Property("wtalc", "jaxseg.data.wtalc_convert: one named error or a readable conversion",
             ("wtalc_convert",), wtalc_case(), check_wtalc, 100),
]
PROPERTY = {p.name: p for p in PROPERTIES}


# ================================================================= tests


@pytest.fixture(scope="module", autouse=True)
def _cache(compilation_cache):
  """The module's training runs share one persistent XLA compilation cache."""
  yield


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  w = World(tmp_path_factory.mktemp("invariants"))
  yield w
  print("\nexamples by command and exit status:", dict(sorted(w.outcomes.items(), key=str)))
  assert tree_state(w.base) == w.base_state, "the base inputs changed"


def _fuzz(name: str):
  prop = PROPERTY[name]

  def test(world, case):  # pylint: disable=redefined-outer-name
    prop.check(world, case)

  for case in REGRESSIONS.get(name, ()):
    test = example(case=case)(test)
  test = fuzz_settings(prop.examples)(given(case=prop.strategy)(test))
  test.__doc__ = prop.promise
  return test


test_annotations = _fuzz("annotations")
test_features = _fuzz("features")
test_layouts = _fuzz("layouts")
test_config = _fuzz("config")
test_run_config = _fuzz("run_config")
test_run_files = _fuzz("run_files")
test_outputs = _fuzz("outputs")
test_symlinks = _fuzz("symlinks")
test_leftovers = _fuzz("leftovers")
test_changed_config = _fuzz("changed_config")
test_score = _fuzz("score")
test_report = _fuzz("report")
test_wtalc = _fuzz("wtalc")


def test_in_process_runs_match_a_fresh_process(world):  # pylint: disable=redefined-outer-name
  """The harness runs ``jaxseg.main`` in process; a fresh process gives the same
  exit status and error line (a bad flag value, a NaN feature file, and a
  coordinator address without a port, which reached jax.distributed.initialize)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with world.example("data", "cfg.py") as ex:
    write_npy_damage(ex.p("data/features/te9.npy"), NpyDamage("value", ("nan", 0.5, 3)),
                     outside=ex.p("outside"))
    for argv in (ex.main_args("wd", "data", "--config.train.num_steps=abc"),
                 ex.main_args("wd", "data"),
                 ex.main_args("wd", "train", "--config.distributed.coordinator_address=abc")):
      here = call_main(argv)
      there = subprocess.run([sys.executable, "-m", "jaxseg.main", *argv], cwd=repo,
                             capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, JAX_PLATFORMS="cpu"))
      assert here.error is None and here.rc == there.returncode == 2, (here, there.stderr)
      line = [l for l in here.stderr.splitlines() if l.startswith("error:")]
      assert line and line == [l for l in there.stderr.splitlines() if l.startswith("error:")]
      shutil.rmtree(ex.p("wd"), ignore_errors=True)
