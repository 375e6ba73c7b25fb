"""Data-parallel training on 8 fake CPU devices, in one and in two processes.

JAX fixes its device count when its backend starts, and this pytest process
keeps one CPU device. The 8-device parts therefore run in child processes
(``jax_num_cpu_devices``), write what they saw to files in ``tmp_path`` and
this process asserts on them:

* one child with 8 devices: the sharded train step against the single-device
  step (losses, parameters, optimizer state), how the batch and the state are
  laid out on the devices, the batch-size error, and a whole
  ``train.train_and_evaluate`` run of ``configs/test.py``;
* two children with 4 devices each, joined by ``jax.distributed`` over
  localhost (the multi-host code path: ``process_rows``,
  ``make_array_from_process_local_data``, Orbax saving from every process), run
  the same config and must reproduce the one-process run; a second launch
  resumes from their checkpoint;
* this process (1 device) restores both runs' checkpoints and re-evaluates.
"""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pandas as pd
import pytest

from configs import test as test_config
from jaxseg import config as config_lib
from jaxseg import config_checks
from jaxseg import evaluate
from jaxseg import parallel
from jaxseg import state as state_lib
from jaxseg import train
from jaxseg import workdir as workdir_lib
from tests.helpers import make_config

# End-to-end: trains, runs subprocesses or full-size networks (pytest -m "not slow"
# skips the module).
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 8
NUM_STEPS = 3  # of the step-equivalence check

# Runs with 8 CPU devices. argv[1]: JSON {"out", "data_dir", "workdir", "bad_workdir",
# "num_steps"}; writes out/eight.json, out/single.npz, out/sharded.npz.
_EIGHT_DEVICES = r'''
import json, os, re, sys, time
import jax
jax.config.update("jax_num_cpu_devices", 8)
import numpy as np
from configs import test as test_config
from jaxseg import parallel, train
from jaxseg import state as state_lib
from jaxseg.data import batching


args = json.loads(sys.argv[1])
out = {"device_count": jax.device_count(), "times": {}}
t0 = time.time()
c = test_config.get_config()
c.train.batch_size = 8
c.data.synthetic.output_dir = args["data_dir"]
D, N, T = 16, 4, 64

# -- 1. the sharded step against the single-device step, from the same init.
rng = np.random.default_rng(0)
def make_batch(n_real):
  feats, labs, ys = [], [], []
  for _ in range(n_real):
    t = int(rng.integers(10, T + 1))
    y = np.zeros(N, np.float32)
    present = rng.choice(N, size=int(rng.integers(1, 3)), replace=False)
    y[present] = 1
    u = np.zeros((t, N), np.uint8)
    for n in present:
      u[rng.integers(t), n] = 1
    feats.append(rng.standard_normal((t, D)).astype(np.float32))
    labs.append(u)
    ys.append(y)
  return batching.stack_batch(feats, labs, ys, batch_size=8, buckets=(T,),
                              feature_dim=D, num_classes=N)
batches = [make_batch(7)] + [make_batch(8) for _ in range(int(args["num_steps"]) - 1)]
model = state_lib.make_model(c, D, N)
optimizer = state_lib.make_optimizer(c)
single_state = state_lib.init_state(c, model, optimizer, D)
single_step = train.make_train_step(c, model, optimizer)
mesh = parallel.make_mesh(c.parallel.num_devices)
rows = parallel.process_rows(8, mesh)
sharded_state = parallel.replicate(state_lib.init_state(c, model, optimizer, D), mesh)
sharded_step = train.make_train_step(c, model, optimizer)
metrics = {"single": [], "sharded": []}
for i, b in enumerate(batches):
  single_state, m1 = single_step(single_state, b)
  sb = parallel.shard_batch({k: v[rows] for k, v in b.items()}, mesh, 8)
  if i == 0:
    layout = {}
    for k, v in sb.items():
      layout[k] = {
          "spec_is_data": v.sharding.spec == jax.sharding.PartitionSpec("data"),
          "spec": str(v.sharding.spec), "shape": list(v.shape),
          "shards": [{"device": s.device.id, "rows": [s.index[0].start, s.index[0].stop],
                      "shape": list(s.data.shape),
                      "equal": bool(np.array_equal(np.asarray(s.data), b[k][s.index[0]]))}
                     for s in v.addressable_shards]}
    out["batch_layout"] = layout
    hlo = sharded_step.lower(sharded_state, sb).compile().as_text()
    out["collectives"] = re.findall(
        r"= \S+ (all-reduce|all-gather|all-to-all|reduce-scatter|collective-permute)"
        r"(?:-start)?\(", hlo)
    out["entry_params"] = re.findall(r"\bf32\[\d+,{},{}\]".format(T, D), hlo)
  sharded_state, m8 = sharded_step(sharded_state, sb)
  metrics["single"].append({k: float(v) for k, v in m1.items()})
  metrics["sharded"].append({k: float(v) for k, v in m8.items()})
out["metrics"] = metrics
out["state_replicated"] = all(
    x.sharding.is_fully_replicated and len(x.sharding.device_set) == 8
    for x in jax.tree.leaves(sharded_state))
flat = lambda s: {jax.tree_util.keystr(p): np.asarray(x)
                  for p, x in jax.tree_util.tree_leaves_with_path((s.params, s.opt_state))}
np.savez(os.path.join(args["out"], "single.npz"), **flat(single_state))
np.savez(os.path.join(args["out"], "sharded.npz"), **flat(sharded_state))
out["times"]["step_equivalence"] = time.time() - t0

# -- 2. batch sizes and device counts that do not fit.
t0 = time.time()
errors = {}
for name, field, value in (("batch6", "batch_size", 6), ("devices3", "num_devices", 3),
                           ("devices9", "num_devices", 9)):
  bad = test_config.get_config()
  bad.data.synthetic.output_dir = args["data_dir"]
  bad.train.batch_size = 8
  (bad.train if field == "batch_size" else bad.parallel)[field] = value
  try:
    train.train_and_evaluate(bad, args["bad_workdir"])
    errors[name] = None
  except ValueError as e:
    errors[name] = {"type": type(e).__name__, "message": str(e)}
out["errors"] = errors
out["times"]["errors"] = time.time() - t0
out["bad_workdir_created"] = os.path.exists(args["bad_workdir"])

# -- 3. a whole run on 8 devices.
t0 = time.time()
res = train.train_and_evaluate(c, args["workdir"])
out["final"] = res["final"]
out["times"]["train_and_evaluate"] = time.time() - t0
with open(os.path.join(args["out"], "eight.json"), "w") as f:
  json.dump(out, f)
'''

# One of two processes with 4 CPU devices each. argv[1]: JSON
# {"out", "data_dir", "workdir", "port", "process_id", "evaluate"}.
_TWO_PROCESSES = r'''
import json, os, sys, time
import jax
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
from configs import test as test_config
from jaxseg import parallel, train

args = json.loads(sys.argv[1])
t0 = time.time()
c = test_config.get_config()
c.train.batch_size = 8
c.data.synthetic.output_dir = args["data_dir"]
c.distributed.coordinator_address = f"localhost:{args['port']}"
c.distributed.num_processes = 2
c.distributed.process_id = args["process_id"]
# Device-resident training data here, host batches in the 8-device run: the
# comparison of the two runs checks that path across processes too.
c.train.device_data = "on"
res = train.train_and_evaluate(c, args["workdir"], evaluate=args["evaluate"])
mesh = parallel.make_mesh()
rows = parallel.process_rows(8, mesh)
out = {"process_index": jax.process_index(), "process_count": jax.process_count(),
       "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
       "rows": [rows.start, rows.stop], "final": res["final"], "seconds": time.time() - t0}
with open(os.path.join(args["out"], f"process{args['process_id']}.json"), "w") as f:
  json.dump(out, f)
jax.distributed.shutdown()
'''


def _env(cache_dir=None):
  """The children's environment; ``cache_dir``: a persistent XLA compilation cache,
  so the second two-process launch loads what the first compiled (the evaluation)
  instead of compiling it again. A cache hit runs the same executable: no result
  changes."""
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env.pop("XLA_FLAGS", None)
  if cache_dir is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("parallel")
  d = {name: str(root / name) for name in ("out", "data", "eight", "two", "bad", "cache")}
  os.makedirs(d["out"])
  return d


@pytest.fixture(scope="module")
def eight(dirs):
  """The 8-device child's report (it also generates the synthetic data)."""
  args = {"out": dirs["out"], "data_dir": dirs["data"], "workdir": dirs["eight"],
          "bad_workdir": dirs["bad"], "num_steps": NUM_STEPS}
  t0 = time.time()
  proc = subprocess.run([sys.executable, "-c", _EIGHT_DEVICES, json.dumps(args)],
                        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=400)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(os.path.join(dirs["out"], "eight.json")) as f:
    out = json.load(f)
  out["wall"] = time.time() - t0
  return out


def _launch_two(dirs, *, evaluate):
  port = _free_port()
  procs = []
  for pid in range(2):
    args = {"out": dirs["out"], "data_dir": dirs["data"], "workdir": dirs["two"],
            "port": port, "process_id": pid, "evaluate": evaluate}
    procs.append(subprocess.Popen(
        [sys.executable, "-c", _TWO_PROCESSES, json.dumps(args)], cwd=REPO,
        env=_env(dirs["cache"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  logs, deadline = ["", ""], time.time() + 150
  try:
    for i, p in enumerate(procs):
      try:
        logs[i] = p.communicate(timeout=max(deadline - time.time(), 1))[1]
      except subprocess.TimeoutExpired:
        p.kill()
        logs[i] = p.communicate()[1] + "\n(killed after 150 s: waiting on a collective?)"
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  for pid, p in enumerate(procs):
    assert p.returncode == 0, f"process {pid}:\n" + logs[pid][-4000:]
  reports = []
  for pid in range(2):
    with open(os.path.join(dirs["out"], f"process{pid}.json")) as f:
      reports.append(json.load(f))
  return reports


@pytest.fixture(scope="module")
def two(dirs, eight):
  """Two processes x 4 devices: train (no eval), then a second launch resumes and evaluates."""
  del eight  # the data is generated by then
  first = _launch_two(dirs, evaluate=False)
  second = _launch_two(dirs, evaluate=True)
  return first, second


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


# ---------------------------------------------------------------- one process


def test_sharded_step_matches_single_device_step(eight, dirs):
  assert eight["device_count"] == 8
  single, sharded = eight["metrics"]["single"], eight["metrics"]["sharded"]
  assert len(single) == len(sharded) == NUM_STEPS
  for step, (a, b) in enumerate(zip(single, sharded)):
    assert a["finite"] == b["finite"] == 1.0
    for key in ("classification", "segment", "sphere", "propagation", "total", "grad_norm"):
      # Same math; only the order of the cross-device sums differs (float32).
      np.testing.assert_allclose(b[key], a[key], rtol=2e-6, atol=1e-7,
                                 err_msg=f"step {step} {key}")
  assert single[0]["total"] != single[1]["total"]  # the batches differ
  ref = np.load(os.path.join(dirs["out"], "single.npz"))
  got = np.load(os.path.join(dirs["out"], "sharded.npz"))
  assert sorted(ref.files) == sorted(got.files)
  lr = test_config.get_config().train.learning_rate
  checked = 0
  for name in ref.files:
    if "loc_head" in name and "bias" in name:
      # The losses on C_loc (eq. 5-6, 7-10, 13) are invariant to a per-class
      # offset, so this bias's gradient is 0 up to float rounding, and Adam
      # turns that rounding into steps of up to ~lr either way: its value is
      # noise in both runs, bounded by what Adam can move it.
      for arr in (ref[name], got[name]):
        assert np.all(np.abs(arr) <= 3 * NUM_STEPS * lr), name
      continue
    np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-7, err_msg=name)
    checked += 1
  assert checked >= 18  # 6 params and their 2 Adam moments each, the counters


def test_batch_is_sharded_and_state_replicated(eight):
  layout = eight["batch_layout"]
  assert set(layout) == {"features", "mask", "lengths", "video_labels", "segment_labels",
                         "num_labeled"}
  for key, info in layout.items():
    assert info["spec_is_data"], (key, info["spec"])
    assert info["shape"][0] == BATCH
    shards = info["shards"]
    assert len(shards) == 8, key
    assert sorted(s["device"] for s in shards) == list(range(8))
    assert sorted(tuple(s["rows"]) for s in shards) == [(i, i + 1) for i in range(8)]
    for s in shards:
      assert s["shape"] == [BATCH // 8] + info["shape"][1:], key
      assert s["equal"], f"{key}: device {s['device']} holds the wrong rows"
  assert eight["state_replicated"]
  # The compiled per-device program sees one video of (T=64, D=16) features,
  # gathers nothing and reduces once (XLA fuses the gradient all-reduces).
  assert eight["entry_params"] and set(eight["entry_params"]) == {"f32[1,64,16]"}
  assert "all-gather" not in eight["collectives"]
  assert "all-reduce" in eight["collectives"]


def test_batch_size_not_divisible_by_devices_is_refused(eight):
  err = eight["errors"]
  assert err["batch6"]["type"] == "ConfigError"
  assert err["batch6"]["message"] == (
      "config.train.batch_size: 6 is not divisible by the number of devices (8)")
  assert err["devices3"]["type"] == "ConfigError"
  assert "config.train.batch_size: 8 is not divisible by the number of devices (3)" in (
      err["devices3"]["message"])
  assert "config.parallel.num_devices: 9 requested but 8 device(s)" in (
      err["devices9"]["message"])
  assert not eight["bad_workdir_created"]  # refused before touching the disk
  # The same rule without devices: config.validate with a device count.
  c = test_config.get_config()
  c.train.batch_size = 12
  with pytest.raises(config_lib.ConfigError, match=r"config\.train\.batch_size: 12 .* \(8\)"):
    config_checks.validate(c, num_devices=8)
  config_checks.validate(c, num_devices=4)


def test_checkpoint_from_8_devices_evaluates_on_1(eight, dirs):
  assert jax.device_count() == 1
  c = make_config(dirs["data"], **{"train.batch_size": BATCH})
  with open(os.path.join(dirs["eight"], "results.json")) as f:
    reported = json.load(f)["final"]
  assert reported["step"] == c.train.num_steps
  for key, value in eight["final"].items():
    assert reported[key] == pytest.approx(value, abs=1e-9)
  run = workdir_lib.load_run(c, dirs["eight"], which="final")
  assert run.step == c.train.num_steps
  for leaf in jax.tree.leaves(run.state.params):
    assert leaf.sharding.device_set == {jax.devices()[0]}
  again = evaluate.evaluate_workdir(c, dirs["eight"])
  # The 8-device evaluation ran the same per-device program on replicated
  # parameters, and Orbax restores the exact float32 values: equal to the last
  # bit, the tolerance only absorbs float64 summation in the mAP average.
  for key, value in again["final"].items():
    assert value == pytest.approx(reported[key], rel=1e-12, abs=1e-12), key
  assert reported["mAP@0.1"] > 0  # the run detects something


# -------------------------------------------------------------- two processes


def test_two_processes_reproduce_one_process(two, eight, dirs):
  first, second = two
  for launch in (first, second):
    assert [r["process_index"] for r in launch] == [0, 1]
    for r in launch:
      assert (r["process_count"], r["device_count"], r["local_device_count"]) == (2, 8, 4)
    assert [r["rows"] for r in launch] == [[0, 4], [4, 8]]
  # Same global batches, same devices' programs: the same training curve ...
  ref = _read_jsonl(os.path.join(dirs["eight"], "metrics.jsonl"))
  got = _read_jsonl(os.path.join(dirs["two"], "metrics.jsonl"))
  assert [(r["step"], r["kind"]) for r in got] == [(r["step"], r["kind"]) for r in ref]
  for a, b in zip(ref, got):
    for key in ("classification", "segment", "sphere", "propagation", "total", "selection"):
      if key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)
  # ... and, evaluated after resuming from the 2-process checkpoint, the same results.
  for r in second:
    for key, value in eight["final"].items():
      assert r["final"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
  with open(os.path.join(dirs["two"], "results.json")) as f:
    assert json.load(f)["final"]["step"] == test_config.get_config().train.num_steps


def test_two_process_checkpoint_restores_on_1_device(two, dirs):
  del two
  c = make_config(dirs["data"], **{"train.batch_size": BATCH})
  a = workdir_lib.load_run(c, dirs["eight"]).state
  b = workdir_lib.load_run(c, dirs["two"]).state
  assert int(a.step) == int(b.step) == c.train.num_steps
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a.params),
                          jax.tree.leaves(b.params)):
    if "loc_head" in jax.tree_util.keystr(path) and "bias" in jax.tree_util.keystr(path):
      continue  # rounding noise amplified by Adam, see the step-equivalence test
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-7,
                               err_msg=jax.tree_util.keystr(path))


# ---------------------------------------------------------------- unit pieces


def test_process_rows_and_shard_batch_on_one_device():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == (parallel.DATA_AXIS,)
  assert parallel.process_rows(6, mesh) == slice(0, 6)
  x = np.arange(12, dtype=np.float32).reshape(6, 2)
  out = parallel.shard_batch({"x": x, "video_ids": ["a"]}, mesh, 6)
  assert set(out) == {"x"}
  np.testing.assert_array_equal(np.asarray(out["x"]), x)
  with pytest.raises(ValueError, match="feeds 6 of the 6 rows"):
    parallel.shard_batch({"x": x[:4]}, mesh, 6)
  with pytest.raises(ValueError, match="config.parallel.num_devices: 2 requested"):
    parallel.make_mesh(2)


# ------------------------------------------------------------------ benchmark


def test_scaling_benchmark_quick_on_8_fake_devices(tmp_path):
  env = _env()
  env.pop("JAX_PLATFORMS")  # the script sets what it needs itself
  # Two device counts, the ends of the default 1, 2, 4, 8 (test_scaling_benchmark_helpers
  # checks that default): each count compiles its own step, most of the run's time.
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "benchmarks", "scaling.py"), "--quick",
       "--fake-cpu-devices", "8", "--devices", "1", "8", "--out", str(tmp_path)],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  df = pd.read_csv(tmp_path / "scaling.csv")
  assert list(df["devices"]) == [1, 8]
  assert list(df["B_per_device"]) == [8, 1]
  assert np.all(df["median_ms"] > 0) and np.all(df["shard_ms"] > 0)
  # Same global batch, same first step on every device count ...
  np.testing.assert_allclose(df["loss_total"], df["loss_total"][0], rtol=1e-5)
  np.testing.assert_allclose(df["loss_grad_norm"], df["loss_grad_norm"][0], rtol=1e-5)
  assert df["max_rel_diff"].max() < 1e-5
  # ... and each device's program holds its share of the batch only.
  temp = df.set_index("devices")["temp_mib_per_device"]
  assert temp[8] < temp[1] / 4
  assert "8 fake CPU devices" in (tmp_path / "scaling.md").read_text()


def test_scaling_benchmark_helpers():
  from benchmarks import scaling  # pylint: disable=g-import-not-at-top
  assert scaling.default_device_counts(8, 16) == [1, 2, 4, 8]
  assert scaling.default_device_counts(6, 12) == [1, 2, 4, 6]
  assert scaling.default_device_counts(8, 6) == [1, 2]
  rows = [{"devices": n, **{f"loss_{k}": 1.0 for k in scaling.TERMS}} for n in (1, 2)]
  assert scaling.check_losses_match(rows, rtol=1e-6) == 0.0
  rows[1]["loss_sphere"] = 1.001
  with pytest.raises(SystemExit, match=r"\(2, 0\.00099"):
    scaling.check_losses_match(rows, rtol=1e-6)
