"""Reliability end to end: kills, partial files, numerical faults and bad data.

Most runs go through the real command line (``python -m jaxseg.main``) in a
subprocess, on configs/test.py with 24 steps (checkpoint every 4, validation
every 6, two checkpoints kept). One uninterrupted run is the reference every
interrupted run must reproduce exactly: ``results.json`` ("final",
"selected", per-class AP), both detection files (less the workdir and git
commit in their provenance) and the metrics log (less its timing field).

The subprocesses share a persistent XLA compilation cache in the module's
tmp folder, so only the reference run pays for compiling; a cache hit runs
the same executable, so the comparisons are unaffected.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pandas as pd
import pytest

from configs import test as test_config
from jaxseg import checkpoints as checkpoints_lib
from jaxseg import config as config_lib
from jaxseg import evaluate
from jaxseg import rules as rules_lib
from jaxseg import train
from jaxseg import run_data
from jaxseg import workdir as workdir_lib
from jaxseg.data import batching
from jaxseg.data import labels as labels_lib
from jaxseg.data.video import Dataset, Instance, Video
from tests.helpers import make_config

# End-to-end: trains, runs subprocesses or full-size networks (pytest -m "not slow"
# skips the module).
pytestmark = pytest.mark.slow


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 24
KILL_SEED = int(os.environ.get("JAXSEG_KILL_SEED", "8"))  # vary it to explore kill points
# Orbax 0.12.8 saves step N into "N.orbax-checkpoint-tmp" and renames it to
# "N" when complete (atomicity.AtomicRenameTemporaryPath); older releases
# appended "-<timestamp>". Both must be ignored when looking for the latest.
TMP_SUFFIX = ".orbax-checkpoint-tmp"


# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """Folders shared by the module: synthetic data and the compilation cache."""
  root = tmp_path_factory.mktemp("reliability")
  return {"data": str(root / "data"), "cache": str(root / "xla-cache"), "root": root}


def _env(base):
  return dict(os.environ, JAX_PLATFORMS="cpu",
              JAX_COMPILATION_CACHE_DIR=base["cache"],
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")


def _command(base, workdir, *flags):
  return [sys.executable, "-m", "jaxseg.main", "--config", "configs/test.py",
          "--workdir", str(workdir), f"--config.data.synthetic.output_dir={base['data']}",
          f"--config.train.num_steps={NUM_STEPS}", *flags]


def _run(base, workdir, *flags, timeout=300):
  return subprocess.run(_command(base, workdir, *flags), cwd=REPO, env=_env(base),
                        capture_output=True, text=True, timeout=timeout)


def _finalized_steps(workdir, which="latest"):
  d = os.path.join(workdir, "checkpoints", which)
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def _read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k != "steps_per_s"}
            for line in f]


def _outputs(workdir):
  """What a finished run reports, less what legitimately differs (paths, timing)."""
  with open(os.path.join(workdir, "results.json")) as f:
    res = json.load(f)
  out = {k: res[k] for k in ("final", "selected", "per_class_ap_final")}
  for name in ("detections.json", "detections_selected.json"):
    with open(os.path.join(workdir, name)) as f:
      det = json.load(f)
    for key in ("workdir", "git_commit"):  # where and from which tree, not what
      det.get("provenance", {}).pop(key, None)
    out[name] = det
  out["metrics"] = _read_metrics(workdir)
  return out


def _assert_same_outputs(got, ref):
  assert got["final"] == ref["final"]
  assert got["selected"] == ref["selected"]
  assert got["per_class_ap_final"] == ref["per_class_ap_final"]
  assert got["detections.json"] == ref["detections.json"]
  assert got["detections_selected.json"] == ref["detections_selected.json"]
  assert got["metrics"] == ref["metrics"]


@pytest.fixture(scope="module")
def reference(base):
  """One uninterrupted run of the command line; also generates the data."""
  workdir = base["root"] / "reference"
  proc = _run(base, workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Resumed" not in proc.stderr
  out = _outputs(workdir)
  assert out["final"]["step"] == NUM_STEPS
  return workdir, out


# ------------------------------------------------------------ interrupted runs


def _start_and_kill(base, workdir, rng, trigger, max_delay):
  """Starts a run, SIGKILLs it ``U(0, max_delay)`` s after checkpoint ``trigger``.

  Returns:
    ``(killed, latest)``: whether the kill landed during training (before the
    last step's checkpoint) and the newest complete checkpoint left on disk.
  """
  log = open(os.path.join(base["root"], f"{os.path.basename(workdir)}.log"), "w")
  proc = subprocess.Popen(_command(base, workdir), cwd=REPO, env=_env(base),
                          stdout=log, stderr=subprocess.STDOUT)
  try:
    deadline = time.monotonic() + 240
    while not [s for s in _finalized_steps(workdir) if s >= trigger]:
      if proc.poll() is not None or time.monotonic() > deadline:
        break
      time.sleep(0.005)
    time.sleep(float(rng.uniform(0.0, max_delay)))
    finished = proc.poll() is not None
    if not finished:
      os.kill(proc.pid, signal.SIGKILL)
    rc = proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
    log.close()
  if finished:
    with open(log.name) as f:
      assert rc == 0, f.read()[-3000:]
  else:
    assert rc == -signal.SIGKILL
  steps = _finalized_steps(workdir)
  latest = max(steps) if steps else None
  killed = not finished and latest is not None and latest < NUM_STEPS
  return killed, latest


def test_sigkill_at_a_random_step_then_rerun_equals_uninterrupted(base, reference):
  _, ref = reference
  rng = np.random.default_rng(KILL_SEED)
  # A seeded random kill point: after a random checkpoint, a random delay. If
  # the run got past training before the kill (a fast machine), try again
  # earlier; the last attempt kills right at the first checkpoint.
  plans = [(int(rng.choice([4, 8, 12])), 0.05), (4, 0.02), (4, 0.0)]
  for attempt, (trigger, max_delay) in enumerate(plans):
    workdir = base["root"] / f"killed{attempt}"
    killed, latest = _start_and_kill(base, workdir, rng, trigger, max_delay)
    left = sorted(os.listdir(workdir / "checkpoints" / "latest"))
    print(f"attempt {attempt}: kill after checkpoint {trigger} + U(0, {max_delay}) s: "
          f"{'killed' if killed else 'finished'}, latest complete checkpoint {latest}, "
          f"left in checkpoints/latest: {left}")
    if killed:
      break
  else:
    pytest.fail("the run always finished training before the kill landed")
  assert not os.path.exists(workdir / "results.json")
  # Rerun the very same command to completion.
  proc = _run(base, workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"Resumed from {workdir}/checkpoints/latest at step {latest}." in proc.stderr
  _assert_same_outputs(_outputs(workdir), ref)


def test_partly_written_checkpoint_is_never_picked(base, reference):
  """The save of the last step died before its rename; the rerun resumes
  from the step before, and a metrics line cut mid-write is dropped."""
  ref_dir, ref = reference
  workdir = base["root"] / "partial"
  shutil.copytree(ref_dir, workdir)
  latest = workdir / "checkpoints" / "latest"
  assert _finalized_steps(workdir) == [NUM_STEPS - 4, NUM_STEPS]
  # An unfinished save of the last step, as Orbax 0.12.8 leaves it: not renamed
  # yet, its largest file cut in half ...
  partial = latest / f"{NUM_STEPS}{TMP_SUFFIX}"
  os.rename(latest / str(NUM_STEPS), partial)
  files = sorted((p for p in partial.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  big = files[-1]
  big.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
  # ... and one with the older timestamped name, holding garbage.
  legacy = latest / f"{NUM_STEPS}{TMP_SUFFIX}-1732612345678"
  legacy.mkdir()
  (legacy / "_CHECKPOINT_METADATA").write_text("{")
  # The run died before any result was written; its log ends in a cut line.
  for name in ("results.json", "results.csv", "results.md", "detections.json",
               "detections_selected.json"):
    os.remove(workdir / name)
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 21, "kind": "tra')
  proc = _run(base, workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"at step {NUM_STEPS - 4}." in proc.stderr
  assert _finalized_steps(workdir) == [NUM_STEPS - 4, NUM_STEPS]
  _assert_same_outputs(_outputs(workdir), ref)


_SLOW_BEST_SAVE = """
import os, signal, sys, time
from absl import app
from jaxseg import checkpoints as checkpoints_lib
from jaxseg import main
from jaxseg.data import batching

STEP = int(os.environ["RELIABILITY_STEP"])
real_rename = os.rename


def rename(src, dst, *args, **kwargs):
  # The best checkpoint of STEP takes 2 s to finalize (a slow disk).
  if os.path.basename(os.path.dirname(dst)) == "best" and os.path.basename(dst) == str(STEP):
    time.sleep(2.0)
  return real_rename(src, dst, *args, **kwargs)


os.rename = rename
made = []
real_managers = checkpoints_lib.checkpoint_managers
checkpoints_lib.checkpoint_managers = (
    lambda *a, **kw: made.extend(real_managers(*a, **kw)) or tuple(made))
real_batch = batching.TrainLoader.batch


def batch(self, step):
  if step == STEP:  # killed once the latest checkpoint of STEP is complete
    made[0].wait_until_finished()
    os.kill(os.getpid(), signal.SIGKILL)
  return real_batch(self, step)


batching.TrainLoader.batch = batch
sys.argv = ["jaxseg.main"] + sys.argv[1:]
app.run(main.main)
"""


def test_kill_while_the_best_checkpoint_is_still_being_written(base, reference):
  _, ref = reference
  # The last validation step before the end that set a new best score: a best
  # checkpoint is written there, and a batch is still asked for after it.
  best, step = float("-inf"), None
  for rec in ref["metrics"]:
    if rec["kind"] == "validation" and rec["step"] < NUM_STEPS and rec["selection"] > best:
      best, step = rec["selection"], rec["step"]
  assert step is not None and step % 6 == 0
  # checkpoint_every=6 makes the step a checkpoint step too; it changes no number.
  flags = ["--config.train.checkpoint_every=6"]
  workdir = base["root"] / "slow-best"
  proc = subprocess.run(
      [sys.executable, "-c", _SLOW_BEST_SAVE, *_command(base, workdir, *flags)[3:]],
      cwd=REPO, env=dict(_env(base), RELIABILITY_STEP=str(step)), capture_output=True,
      text=True, timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  assert _finalized_steps(workdir) == [s for s in (step - 6, step) if s > 0]
  proc = _run(base, workdir, *flags)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = _outputs(workdir)
  # (The metrics log is not compared: with checkpoint_every=6 and log_every=4 the
  # first train record after the resume averages only the steps after it.)
  assert got["final"] == ref["final"]
  assert got["per_class_ap_final"] == ref["per_class_ap_final"]
  assert got["detections.json"]["results"] == ref["detections.json"]["results"]
  assert got["selected"] == ref["selected"]


# -------------------------------------------------------------- metrics log


def test_metrics_log_drops_a_cut_line_and_lines_past_the_resume_step(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  recs = [{"step": 4, "kind": "train", "total": 1.5},
          {"step": 6, "kind": "validation", "selection": 2.0},
          {"step": 8, "kind": "train", "total": 1.25}]
  text = "".join(json.dumps(r) + "\n" for r in recs)
  with open(path, "w") as f:
    f.write(text + '{"step": 12, "kind": "train", "tot')  # a crash mid-write
  log = workdir_lib.MetricsLog(path, resume_step=8)
  with open(path) as f:
    assert f.read() == text
  log.write({"step": 12, "kind": "train", "total": 1.0})
  with open(path) as f:
    assert [json.loads(line) for line in f] == recs + [{"step": 12, "kind": "train",
                                                        "total": 1.0}]
  workdir_lib.MetricsLog(path, resume_step=4)
  with open(path) as f:
    assert [json.loads(line) for line in f] == recs[:1]
  workdir_lib.MetricsLog(path, resume_step=0)
  assert os.path.getsize(path) == 0


# ------------------------------------------------- results written atomically


RESULT_FILES = ("detections.json", "detections_selected.json", "results.csv",
                "results.md", "results.json")


def _tiny_results(config):
  """Inputs of ``evaluate.write_results`` for a one-video, one-class split."""
  video = Video("v1", "test", np.zeros((4, 2), np.float32), 1.0, 4.0, [Instance(0.0, 2.0, 0)])
  ds = Dataset(["a"], [video])
  data = run_data.RunData(ds, ds, None, ds,
                       labels_lib.SegmentLabels(labels={}, mode="one-segment", seed=0))
  table = pd.DataFrame({0.5: [0.25, 0.25]}, index=["a", "mean"])
  final = {"predictions": {"results": {"v1": [
      {"label": "a", "score": 0.9, "segment": [0.0, 2.0]}]}},
           "summary": {"mAP@0.5": 25.0}, "table": table}
  return data, final


@pytest.mark.parametrize("crash_at", range(len(RESULT_FILES)))
def test_crash_while_writing_results_leaves_previous_files_intact(tmp_path, monkeypatch,
                                                                  crash_at):
  config = test_config.get_config()
  data, final = _tiny_results(config)
  old = {name: f"previous {name}\n".encode() for name in RESULT_FILES}
  for name, content in old.items():
    (tmp_path / name).write_bytes(content)
  real_replace = os.replace
  calls = []

  def crashing_replace(src, dst):
    calls.append(os.path.basename(dst))
    if len(calls) > crash_at:
      with open(src, "r+b") as f:  # the new content is half on disk ...
        f.truncate(os.path.getsize(src) // 2)
      raise OSError(28, "No space left on device")  # ... when the process dies
    real_replace(src, dst)

  monkeypatch.setattr(os, "replace", crashing_replace)
  with pytest.raises(OSError, match="No space left"):
    choice = rules_lib.choice_record(12, "jaxseg", {"jaxseg": final["summary"]}, "auto",
                                     "validation")
    evaluate.write_results(config, str(tmp_path), data, final, final, 12, 12,
                           {"final": choice, "selected": choice})
  monkeypatch.setattr(os, "replace", real_replace)
  assert calls[-1] == RESULT_FILES[crash_at]
  for i, name in enumerate(RESULT_FILES):
    content = (tmp_path / name).read_bytes()
    if i < crash_at:  # written before the crash: complete new files
      assert content != old[name]
      if name.endswith(".json"):
        json.loads(content)
    else:  # never a truncated file: the previous one is intact
      assert content == old[name], name


# ----------------------------------------------------------- numerical faults


BAD_STEP = 5  # the 6th batch (0-based step index)


def _poison(monkeypatch, bad_step):
  """NaN in every real feature of the first video of batch ``bad_step``."""
  original = batching.TrainLoader.batch

  def batch(self, step):
    b = original(self, step)
    if step == bad_step:
      b = dict(b)
      b["features"] = b["features"].copy()
      b["features"][0, b["mask"][0]] = np.nan
    return b

  monkeypatch.setattr(batching.TrainLoader, "batch", batch)


def _spy_managers(monkeypatch):
  made = []
  original = checkpoints_lib.checkpoint_managers

  def spy(workdir, config, **kwargs):
    managers = original(workdir, config, **kwargs)
    made.extend(managers)
    return managers

  monkeypatch.setattr(checkpoints_lib, "checkpoint_managers", spy)
  return made


def _restore_raw(manager, step):
  return manager.restore(step, args=ocp.args.StandardRestore())


def _all_finite(tree):
  return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def test_nonfinite_step_stops_naming_step_and_term_and_keeps_good_checkpoint(
    base, reference, tmp_path, monkeypatch):
  workdir = tmp_path / "nan"
  _poison(monkeypatch, BAD_STEP)
  made = _spy_managers(monkeypatch)
  with pytest.raises(train.NonFiniteError) as info:
    train.train_and_evaluate(make_config(base["data"]), str(workdir))
  msg = str(info.value)
  assert f"at step {BAD_STEP};" in msg
  assert "non-finite classification" in msg  # NaN features: C_cls, so eq. 4, is NaN
  assert "skip_nonfinite" in msg
  latest, best = made
  latest.wait_until_finished()
  best.wait_until_finished()
  # The boundary after the bad step (6: validation) raised before any save:
  # the newest checkpoint is the one of step 4, finite, with no bad step in it.
  assert latest.all_steps() == [4]
  assert best.all_steps() == []
  state = _restore_raw(latest, 4)
  assert int(state["step"]) == 4
  assert int(state["first_bad_step"]) == -1 and int(state["num_skipped"]) == 0
  assert _all_finite(state["params"]) and _all_finite(state["opt_state"])
  assert [r["step"] for r in _read_metrics(workdir)] == [4]
  for m in made:
    m.close()


def test_skip_nonfinite_skips_the_batch_and_counts_it(base, reference, tmp_path,
                                                      monkeypatch):
  workdir = tmp_path / "skip"
  bad = 6  # consumed as the 7th batch: checkpoint "7" follows it
  _poison(monkeypatch, bad)
  made = _spy_managers(monkeypatch)
  c = make_config(base["data"], **{"train.skip_nonfinite": True, "train.num_steps": 8,
                       "train.checkpoint_every": 1, "train.keep_checkpoints": 3,
                       "train.validation_fraction": 0.0, "inference.rules": "jaxseg"})
  train.train_and_evaluate(c, str(workdir), evaluate=False)
  latest = made[0]
  assert latest.all_steps() == [6, 7, 8]
  s6, s7, s8 = (_restore_raw(latest, s) for s in (6, 7, 8))
  # The bad batch left parameters and optimizer state exactly as they were;
  # the next good batch moved them again.
  for key in ("params", "opt_state"):
    for a, b in zip(jax.tree.leaves(s6[key]), jax.tree.leaves(s7[key])):
      np.testing.assert_array_equal(a, b)
  assert not all(np.array_equal(a, b) for a, b in
                 zip(jax.tree.leaves(s7["params"]), jax.tree.leaves(s8["params"])))
  assert _all_finite(s8["params"])
  assert [int(s["num_skipped"]) for s in (s6, s7, s8)] == [0, 1, 1]
  assert int(s8["first_bad_step"]) == bad and int(s8["step"]) == 8
  recs = [r for r in _read_metrics(workdir) if r["kind"] == "train"]
  assert [(r["step"], r["skipped"]) for r in recs] == [(4, 0), (8, 1)]
  assert recs[0]["finite"] == 1.0 and recs[1]["finite"] == 0.75
  for m in made:
    m.close()


# ------------------------------------------------------------------ bad data


BAD_VIDEO = "video_test_0000003"


@pytest.fixture(scope="module")
def anet_with_a_nan_video(base, reference):
  """The synthetic data as a plain ActivityNet-format dataset, one video's
  feature file holding a NaN."""
  root = base["root"] / "anet"
  shutil.copytree(base["data"], root)
  path = root / "features" / f"{BAD_VIDEO}.npy"
  feats = np.load(path)
  feats[5, 2] = np.nan
  np.save(path, feats)
  with open(root / "annotations.json") as f:
    database = json.load(f)["database"]
  assert database[BAD_VIDEO]["subset"] == "test"
  flags = ["--config.data.format=activitynet",
           f"--config.data.annotation_path={root / 'annotations.json'}",
           f"--config.data.features_dir={root / 'features'}"]
  return root, str(path), database, flags


def test_nan_feature_file_is_rejected_before_training(base, anet_with_a_nan_video):
  _, path, _, flags = anet_with_a_nan_video
  workdir = base["root"] / "bad-data"
  proc = _run(base, workdir, *flags)
  assert proc.returncode == 2, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last == (f"error: {path}: video '{BAD_VIDEO}': features: 1 non-finite value(s) "
                  "(NaN or inf), first at segment 5, dim 2")
  # Only the workdir claim (config.json, and the lock file) precedes loading the data.
  assert sorted(os.listdir(workdir)) == [".lock", "config.json"]


@pytest.fixture(scope="module")
def skip_run(base, anet_with_a_nan_video):
  _, _, _, flags = anet_with_a_nan_video
  workdir = base["root"] / "skip-bad"
  proc = _run(base, workdir, *flags, "--config.data.skip_bad_videos=True",
              "--config.train.num_steps=8")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


def test_skip_bad_videos_runs_and_reports_the_skipped_video(skip_run, anet_with_a_nan_video):
  workdir, proc = skip_run
  _, path, database, _ = anet_with_a_nan_video
  assert "skipped 1 bad video(s)" in proc.stderr
  assert f"{path}: video '{BAD_VIDEO}': features: 1 non-finite value(s)" in proc.stderr
  with open(workdir / "detections.json") as f:
    detected = set(json.load(f)["results"])
  assert detected == {v for v, e in database.items() if e["subset"] == "test"} - {BAD_VIDEO}
  with open(workdir / "results.json") as f:
    assert json.load(f)["final"]["step"] == 8


def test_skipped_videos_are_recorded_in_results(skip_run):
  workdir, _ = skip_run
  with open(workdir / "results.json") as f:
    prov = json.load(f)["provenance"]
  assert [v for v, _ in prov["skipped_videos"]] == [BAD_VIDEO]
