"""End-to-end training on configs/test.py: outputs, determinism, resume."""

import json
import logging
import os
import shutil

import jax
import numpy as np
import pandas as pd
import pytest

from configs import test as test_config
from jaxseg import config as config_lib
from jaxseg import evaluate
from jaxseg import state as state_lib
from jaxseg import train
from jaxseg import run_data
from jaxseg import workdir as workdir_lib
from jaxseg.data import batching
from tests.helpers import make_config

# End-to-end: trains, runs subprocesses or full-size networks (pytest -m "not slow"
# skips the module).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _cache(compilation_cache):
  """This module's runs share one persistent XLA compilation cache."""
  yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """One synthetic dataset shared by every run of this module."""
  return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp("full"))
  c = make_config(**{"data.synthetic.output_dir": data_dir})
  out = train.train_and_evaluate(c, workdir)
  return c, workdir, out


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_outputs_written(full_run):
  c, workdir, out = full_run
  for name in ("config.json", "metrics.jsonl", "segment_labels.npz", "splits.json",
               "detections.json", "detections_selected.json", "results.csv",
               "results.md", "results.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  with open(os.path.join(workdir, "detections.json")) as f:
    det = json.load(f)
  with open(os.path.join(c.data.synthetic.output_dir, "annotations.json")) as f:
    database = json.load(f)["database"]
  assert set(det["results"]) == {v for v, a in database.items() if a["subset"] == "test"}
  table = pd.read_csv(os.path.join(workdir, "results.csv"), index_col=0)
  assert list(table.index) == ["final", "selected"]
  for t in c.eval.tiou_thresholds:
    col = f"mAP@{t:g}"
    assert 0.0 <= table.loc["final", col] <= 100.0
    assert table.loc["final", col] == pytest.approx(out["final"][col], abs=1e-3)
  assert 0.0 <= out["final"]["cls_mAP"] <= 100.0


def test_metrics_log_every_step_and_validation(full_run):
  c, workdir, _ = full_run
  recs = _read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  train_steps = [r["step"] for r in recs if r["kind"] == "train"]
  assert train_steps == list(range(c.train.log_every, c.train.num_steps + 1, c.train.log_every))
  for r in recs:
    if r["kind"] == "train":
      for key in ("total", "classification", "segment", "sphere", "propagation", "grad_norm"):
        assert np.isfinite(r[key]), key
  val_steps = [r["step"] for r in recs if r["kind"] == "validation"]
  assert val_steps == [6, 12]


def test_loss_decreases_on_training_data(full_run):
  _, workdir, _ = full_run
  recs = [r for r in _read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["kind"] == "train"]
  assert recs[-1]["classification"] < recs[0]["classification"]


def test_same_seed_same_results(full_run, tmp_path, data_dir):
  c, workdir, out = full_run
  again = train.train_and_evaluate(c, str(tmp_path / "again"))
  assert again["final"] == out["final"]
  with open(os.path.join(workdir, "detections.json")) as f:
    a = json.load(f)
  with open(tmp_path / "again" / "detections.json") as f:
    b = json.load(f)
  assert a["results"] == b["results"]
  # What produced them travels with them; only the work directory differs.
  assert a["provenance"].pop("workdir") != b["provenance"].pop("workdir")
  assert a["provenance"] == b["provenance"]
  for key in ("dataset_fingerprint", "label_seed", "git_commit", "versions", "config"):
    assert key in a["provenance"]
  table = pd.read_csv(os.path.join(workdir, "results.csv"), index_col=0)
  assert table.loc["final", "jax"] == jax.__version__
  assert table.loc["final", "label_seed"] == c.labels.seed


def test_device_data_trains_exactly_like_host_batches(full_run, tmp_path, caplog):
  """train.device_data='on' (indices sent, batch gathered in the step) changes nothing."""
  c, workdir, out = full_run
  assert c.train.device_data == "auto"  # on a CPU: host batches
  on = config_lib.with_overrides(c, **{"train.device_data": "on"})
  with caplog.at_level(logging.INFO, logger="absl"):
    got = train.train_and_evaluate(on, str(tmp_path / "on"))
  assert "training data on the device: on (config)" in caplog.text
  host = [r for r in _read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["kind"] == "train"]
  dev = [r for r in _read_jsonl(str(tmp_path / "on" / "metrics.jsonl")) if r["kind"] == "train"]
  assert len(host) == len(dev)
  for a, b in zip(host, dev):
    for key in ("total", "classification", "segment", "sphere", "propagation", "grad_norm"):
      assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (a["step"], key)
  for col, value in out["final"].items():
    assert got["final"][col] == pytest.approx(value, abs=1e-6), col


def test_bfloat16_compute_trains_like_float32(full_run, data_dir, tmp_path):
  """model.compute_dtype='bfloat16': the same steps, losses within bf16 rounding."""
  c = make_config(**{"data.synthetic.output_dir": data_dir})
  del full_run  # it generated the dataset
  data = run_data.prepare_data(c, str(tmp_path))
  loader = batching.TrainLoader(
      data.train, data.segment_labels.labels, batch_size=c.train.batch_size,
      max_length=c.train.max_length, buckets=c.train.length_buckets, seed=c.seed,
      crop_mode="uniform", subsample="uniform")
  runs = {}
  for dtype in ("float32", "bfloat16"):
    cd = config_lib.with_overrides(c, **{"model.compute_dtype": dtype})
    model = state_lib.make_model(cd, data.dataset.feature_dim, data.dataset.num_classes)
    optimizer = state_lib.make_optimizer(cd)
    state = state_lib.init_state(cd, model, optimizer, data.dataset.feature_dim)
    step = train.make_train_step(cd, model, optimizer)
    totals = []
    for s in range(12):
      state, metrics = step(state, loader.batch(s))
      assert float(metrics["finite"]) == 1.0, (dtype, s)
      totals.append(float(metrics["total"]))
    runs[dtype] = np.array(totals)
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(state.params))
  np.testing.assert_allclose(runs["bfloat16"][0], runs["float32"][0], rtol=2e-2)
  np.testing.assert_allclose(runs["bfloat16"], runs["float32"], rtol=0.1)
  assert np.any(runs["bfloat16"] != runs["float32"])  # it did compute in bf16


def test_interrupted_run_resumes_to_same_result(full_run, tmp_path, monkeypatch):
  c, workdir, out = full_run
  resumed_dir = str(tmp_path / "resumed")
  original = batching.TrainLoader.batch

  def crash_at_7(self, step):
    if step == 7:
      raise KeyboardInterrupt("simulated kill")
    return original(self, step)

  monkeypatch.setattr(batching.TrainLoader, "batch", crash_at_7)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(c, resumed_dir)
  monkeypatch.setattr(batching.TrainLoader, "batch", original)
  # Checkpoint at step 4 (checkpoint_every=4) and a log line at step 4 and 6 survive.
  logged = [r["step"] for r in _read_jsonl(os.path.join(resumed_dir, "metrics.jsonl"))]
  assert max(logged) == 6
  res = train.train_and_evaluate(c, resumed_dir)
  assert res["final"] == out["final"]
  assert res["selected_step"] == out["selected_step"]
  ref = [{k: v for k, v in r.items() if k != "steps_per_s"}
         for r in _read_jsonl(os.path.join(workdir, "metrics.jsonl"))]
  got = [{k: v for k, v in r.items() if k != "steps_per_s"}
         for r in _read_jsonl(os.path.join(resumed_dir, "metrics.jsonl"))]
  assert got == ref


def test_workdir_of_another_config_is_refused(full_run):
  c, workdir, _ = full_run
  other = make_config(**{"data.synthetic.output_dir": c.data.synthetic.output_dir,
                         "loss.gamma": 0.5})
  with pytest.raises(config_lib.ConfigError, match="loss.gamma"):
    train.train_and_evaluate(other, workdir)


def test_eval_mode_reproduces_reported_numbers_and_plots(full_run):
  c, workdir, out = full_run
  c = make_config(**{"data.synthetic.output_dir": c.data.synthetic.output_dir,
                     "eval.num_plot_videos": 2})
  again = evaluate.evaluate_workdir(c, workdir)
  assert again["final"] == out["final"]
  assert again["selected"] == out["selected"]
  plots = sorted(os.listdir(os.path.join(workdir, "plots")))
  assert len(plots) == 2 and all(p.endswith(".png") for p in plots)
  selected = workdir_lib.restore_params(c, workdir, which="selected")
  final = workdir_lib.restore_params(c, workdir, which="final")
  assert jax.tree.structure(selected) == jax.tree.structure(final)
  same = all(np.array_equal(a, b)
             for a, b in zip(jax.tree.leaves(selected), jax.tree.leaves(final)))
  assert same == (out["selected_step"] == c.train.num_steps)


def _listing(*folders):
  """``{path: (size, mtime_ns)}`` of every file and folder under ``folders``."""
  out = {}
  for folder in folders:
    for root, dirs, files in os.walk(folder):
      for name in dirs + files:
        path = os.path.join(root, name)
        st = os.stat(path)
        out[path] = (st.st_size if name in files else 0, st.st_mtime_ns)
  return out


def test_reading_a_run_back_writes_nothing(full_run, tmp_path, data_dir):
  """load_run creates and modifies no file; --mode eval rewrites only its reports."""
  c, workdir, _ = full_run
  run_dir = str(tmp_path / "run")
  shutil.copytree(workdir, run_dir)
  before = _listing(run_dir, data_dir)
  for which in ("final", "selected"):
    run = workdir_lib.load_run(c, run_dir, which=which)
    assert run.step > 0
  assert _listing(run_dir, data_dir) == before
  evaluate.evaluate_workdir(c, run_dir)
  after = _listing(run_dir, data_dir)
  changed = sorted(os.path.relpath(p, run_dir) for p in set(before) | set(after)
                   if before.get(p) != after.get(p))
  assert set(changed) <= {"detections.json", "detections_selected.json", "results.csv",
                          "results.md", "results.json", "rules.json"}, changed
  # A run that is not there is an error, not a fresh workdir.
  with pytest.raises(config_lib.ConfigError, match="holds no run"):
    workdir_lib.load_run(c, str(tmp_path / "nothing"))
  assert not os.path.exists(tmp_path / "nothing")


def test_nonfinite_loss_stops_with_step_and_term(tmp_path, data_dir):
  c = make_config(**{"data.synthetic.output_dir": data_dir, "train.learning_rate": 1e30,
                     "train.num_steps": 8})
  with pytest.raises(train.NonFiniteError, match=r"at step \d+"):
    train.train_and_evaluate(c, str(tmp_path / "nan"))


def test_point_labels_end_to_end(full_run, tmp_path):
  """labels.mode='points': an LACP-style CSV (naming held-out videos too) trains."""
  c, _, _ = full_run
  with open(os.path.join(c.data.synthetic.output_dir, "annotations.json")) as f:
    database = json.load(f)["database"]
  classes = sorted({a["label"] for v in database.values() for a in v["annotations"]})
  fps = {}
  lines = ["class,class_index,start_frame,stop_frame,video_id,point"]
  for vid, entry in database.items():
    if entry["subset"] != "validation":
      continue
    fps[vid] = 30.0
    for a in entry["annotations"]:
      s, e = (float(x) for x in a["segment"])
      mid = int((s + e) / 2 * 30.0)
      lines.append(f"{a['label']},{classes.index(a['label'])},{int(s * 30)},{int(e * 30)},"
                   f"{vid},{mid}")
  (tmp_path / "points.csv").write_text("\n".join(lines) + "\n")
  (tmp_path / "fps.json").write_text(json.dumps(fps))
  pc = make_config(**{"data.synthetic.output_dir": c.data.synthetic.output_dir,
                  "labels.mode": "points", "labels.points_csv": str(tmp_path / "points.csv"),
                  "labels.fps_json": str(tmp_path / "fps.json"), "train.num_steps": 4})
  workdir = str(tmp_path / "points_run")
  train.train_and_evaluate(pc, workdir, evaluate=False)
  from jaxseg.data import labels as labels_lib
  seg = labels_lib.load_segment_labels(os.path.join(workdir, "segment_labels.npz"))
  assert seg.mode == "points"
  # One labeled segment per instance of every training video, inside the instance.
  with open(os.path.join(workdir, "splits.json")) as f:
    held_out = set(json.load(f)["validation"])
  for vid, entry in database.items():
    if entry["subset"] != "validation" or vid in held_out:
      continue
    u = seg.labels[vid]
    assert u.sum() >= 1
    for t, n in zip(*np.nonzero(u)):
      inside = [a for a in entry["annotations"] if classes.index(a["label"]) == n
                and float(a["segment"][0]) - 1 <= t / c.data.feature_rate
                <= float(a["segment"][1]) + 1]
      assert inside, (vid, t, n)


def test_tensorboard_has_every_scalar_of_metrics_jsonl(full_run):
  """train.log_to='tensorboard' (default): the same values as metrics.jsonl, at its steps."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  c, workdir, _ = full_run
  acc = event_accumulator.EventAccumulator(
      os.path.join(workdir, "tensorboard"),
      size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
  acc.Reload()
  records = _read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  train_recs = [r for r in records if r["kind"] == "train"]
  val_recs = [r for r in records if r["kind"] == "validation"]
  assert [r["step"] for r in train_recs] == [4, 8, 12]
  assert [r["step"] for r in val_recs] == [6, 12]

  def series(tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]

  weights = {"classification": 1.0, "segment": c.loss.alpha, "sphere": c.loss.beta,
             "propagation": c.loss.gamma}
  for term, w in weights.items():
    assert series(f"train/{term}") == [(r["step"], pytest.approx(r[term], rel=1e-6))
                                       for r in train_recs]
    assert series(f"train/weighted/{term}") == [
        (r["step"], pytest.approx(w * r[term], rel=1e-6)) for r in train_recs]
  for key in ("total", "grad_norm", "steps_per_s"):
    assert series(f"train/{key}") == [(r["step"], pytest.approx(r[key], rel=1e-6))
                                      for r in train_recs]
  assert series("train/learning_rate") == [(s, pytest.approx(c.train.learning_rate))
                                           for s in (4, 8, 12)]
  for t in c.eval.tiou_thresholds:
    tag = f"mAP@{t:g}"
    assert series(f"validation/{tag}") == [(r["step"], pytest.approx(r[tag], abs=1e-5))
                                           for r in val_recs]
  assert series("validation/cls_mAP") == [(r["step"], pytest.approx(r["cls_mAP"], abs=1e-5))
                                          for r in val_recs]
  images = [t for t in acc.Tags()["images"] if t.startswith("cas/")]
  assert len(images) == c.train.log_images
  for tag in images:
    assert [e.step for e in acc.Images(tag)] == [6, 12]
    assert acc.Images(tag)[0].width > 100
