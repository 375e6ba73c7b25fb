"""Metric writers (TensorBoard without TensorFlow) and the run-comparison report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing import event_file_loader

from jaxseg import metric_writers
from jaxseg import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# End-to-end: trains, runs subprocesses or full-size networks (pytest -m "not slow"
# skips the module).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _cache(compilation_cache):
  """This module's runs share one persistent XLA compilation cache."""
  yield


def _accumulator(log_dir: str):
  acc = event_accumulator.EventAccumulator(
      log_dir, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
  acc.Reload()
  return acc


def test_tensorboard_scalars_images_and_hparams_read_back(tmp_path):
  w = metric_writers.create(["tensorboard"], str(tmp_path), start_step=0, project="")
  w.write_hparams({"train.learning_rate": 1e-3, "labels.mode": "one-segment",
                   "loss.use_sphere": True})
  for step in (10, 20, 30):
    w.write_scalars(step, {"train/total": 1.0 / step, "train/learning_rate": 1e-3})
  image = np.zeros((12, 34, 3), np.uint8)
  image[:, :17, 0] = 255
  w.write_images(30, {"cas/video_a": image})
  w.close()
  acc = _accumulator(str(tmp_path / "tensorboard"))
  assert [(e.step, e.value) for e in acc.Scalars("train/total")] == [
      (10, pytest.approx(0.1)), (20, pytest.approx(0.05)), (30, pytest.approx(1 / 30))]
  assert [e.step for e in acc.Scalars("train/learning_rate")] == [10, 20, 30]
  (img,) = acc.Images("cas/video_a")
  assert (img.step, img.width, img.height) == (30, 34, 12)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  decoded = np.asarray(Image.open(io.BytesIO(img.encoded_image_string)))
  np.testing.assert_array_equal(decoded, image)
  # The hparams plugin's session-start record, with each value in its typed slot.
  from tensorboard.plugins.hparams import plugin_data_pb2  # pylint: disable=g-import-not-at-top
  (path,) = [os.path.join(tmp_path, "tensorboard", f)
             for f in os.listdir(tmp_path / "tensorboard")]
  found = None
  for event in event_file_loader.EventFileLoader(path).Load():
    for value in event.summary.value:
      if value.metadata.plugin_data.plugin_name == "hparams":
        found = plugin_data_pb2.HParamsPluginData.FromString(
            value.metadata.plugin_data.content).session_start_info.hparams
  assert found is not None
  assert found["train.learning_rate"].number_value == pytest.approx(1e-3)
  assert found["labels.mode"].string_value == "one-segment"
  assert found["loss.use_sphere"].bool_value is True


def test_resumed_run_replaces_what_the_interrupted_one_logged_past_its_checkpoint(tmp_path):
  first = metric_writers.create(["tensorboard"], str(tmp_path), start_step=0, project="")
  for step in range(1, 8):
    first.write_scalars(step, {"loss": float(step)})
  first.close()
  # Killed at step 7; the checkpoint it resumes from is step 4.
  second = metric_writers.create(["tensorboard"], str(tmp_path), start_step=4, project="")
  for step in range(5, 10):
    second.write_scalars(step, {"loss": 100.0 + step})
  second.close()
  got = [(e.step, e.value) for e in _accumulator(str(tmp_path / "tensorboard")).Scalars("loss")]
  assert got == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0),
                 (5, 105.0), (6, 106.0), (7, 107.0), (8, 108.0), (9, 109.0)]


def test_optional_backends_need_their_package(monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # import fails as if not installed
  with pytest.raises(ValueError, match=r"train.log_to='wandb'.*not installed"):
    metric_writers.check_backends(["wandb"])
  metric_writers.check_backends(["tensorboard"])  # installed: no error


def test_cli_log_to_a_missing_backend_is_one_error_line_and_writes_nothing(tmp_path):
  code = ("import sys; sys.modules['wandb'] = None; "  # as if not installed
          "from jaxseg import main; main.run()")
  work = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-c", code, "--config", os.path.join(REPO, "configs", "test.py"),
       "--workdir", str(work), "--config.train.log_to=('wandb',)"],
      cwd=str(tmp_path), env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO),
      capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip() == ("error: config.train.log_to='wandb': the package 'wandb' "
                                 "is not installed (pip install wandb)")
  assert os.listdir(tmp_path) == []


def test_wandb_writer_calls(monkeypatch, tmp_path):
  calls = []

  class Run:
    config = types.SimpleNamespace(update=lambda d, **k: calls.append(("config", d)))
    log = staticmethod(lambda d, step: calls.append(("log", step, d)))
    finish = staticmethod(lambda: calls.append(("finish",)))

  fake = types.ModuleType("wandb")
  fake.init = lambda **kwargs: calls.append(("init", kwargs["name"])) or Run()
  fake.Image = lambda a: ("image", a.shape)
  monkeypatch.setitem(sys.modules, "wandb", fake)
  w = metric_writers.create(["wandb"], str(tmp_path / "run1"), start_step=0, project="p")
  w.write_hparams({"a": 1, "b": "x"})
  w.write_scalars(3, {"loss": np.float32(0.5)})
  w.write_images(3, {"cas": np.zeros((2, 3, 3))})
  w.close()
  assert calls == [("init", "run1"), ("config", {"a": 1.0, "b": "x"}),
                   ("log", 3, {"loss": 0.5}), ("log", 3, {"cas": ("image", (2, 3, 3))}),
                   ("finish",)]


def _fake_run(path, config: dict, final: dict):
  os.makedirs(path)
  with open(os.path.join(path, "results.json"), "w") as f:
    json.dump({"final": final, "selected": final, "provenance": {"config": config}}, f)


def test_report_table_shows_metrics_and_only_differing_config(tmp_path, capsys):
  base = {"seed": 0, "train": {"learning_rate": 1e-4, "num_steps": 100},
          "labels": {"mode": "one-segment"}, "data": {"synthetic": {"output_dir": "/x"}}}
  other = json.loads(json.dumps(base))
  other["labels"]["mode"] = "two-segment"
  other["data"]["synthetic"]["output_dir"] = "/y"  # where data lives: not a difference
  m1 = {"step": 100, "mAP@0.1": 50.0, "mAP@0.5": 20.0, "avg0.1:0.5": 35.0, "cls_mAP": 90.0}
  m2 = {"step": 100, "mAP@0.1": 40.0, "mAP@0.5": 30.0, "avg0.1:0.5": 35.0, "cls_mAP": 80.0}
  _fake_run(tmp_path / "runs" / "a", base, m1)
  _fake_run(tmp_path / "runs" / "b", other, m2)
  out = tmp_path / "rep"
  assert report.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
  table = pd.read_csv(out / "report.csv", index_col="run")
  assert list(table.index) == ["a", "b"]
  assert list(table["labels.mode"]) == ["one-segment", "two-segment"]
  assert "train.learning_rate" not in table.columns
  assert "data.synthetic.output_dir" not in table.columns
  assert list(table["mAP@0.5"]) == [20.0, 30.0]
  assert list(table["cls_mAP"]) == [90.0, 80.0]
  assert (out / "report.md").read_text().count("two-segment") == 1
  assert (out / "report.png").stat().st_size > 0
  assert "two-segment" in capsys.readouterr().out


@pytest.mark.parametrize("results, field", [
    ({"final": 5}, "field 'final': expected an object of metrics"),
    ({"final": {"mAP@0.5": "high"}}, "field final.mAP@0.5: expected a number"),
    ({"final": {"mAP@abc": 1.0}}, "field final.mAP@abc: not a metric jaxseg writes"),
    ({"final": {"mAP@0.5": 10 ** 400}}, "field final.mAP@0.5: not a metric jaxseg writes"),
    ({"final": {"mAP@0.5": 1.0}, "provenance": "x"}, "field 'provenance'"),
    ({"final": {"mAP@0.5": 1.0}, "provenance": {"config": []}}, "field 'provenance'"),
    ([], "expected an object"),
    ({"final": {"mAP@0.5": 1.0}, "provenance": {"config": {}}}, "provenance.label_mode"),
])
def test_report_on_malformed_results_is_one_error_naming_file_and_field(
    tmp_path, capsys, results, field):
  run = tmp_path / "runs" / "a"
  run.mkdir(parents=True)
  (run / "results.json").write_text(json.dumps(results))
  out = tmp_path / "rep"
  assert report.main([str(run), "--out", str(out), "--fig5", "mAP@0.5"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith(f"error: {run / 'results.json'}: ")
  assert field in err and "Traceback" not in err
  assert not out.exists()


def test_report_reads_results_without_provenance(tmp_path, capsys):
  run = tmp_path / "runs" / "a"
  run.mkdir(parents=True)
  (run / "results.json").write_text(json.dumps({"final": {"mAP@0.5": 12.5}}))
  assert report.main([str(run), "--out", str(tmp_path / "rep")]) == 0
  table = pd.read_csv(tmp_path / "rep" / "report.csv", index_col="run")
  assert list(table["mAP@0.5"]) == [12.5] and list(table["commit"]) == ["(unknown)"]


def test_report_marks_runs_from_uncommitted_code(tmp_path, capsys):
  for name, commit in (("a", "0123abc"), ("b", "0123abc-dirty")):
    _fake_run(tmp_path / "runs" / name, {"seed": 0}, {"step": 1, "mAP@0.5": 1.0})
    res = json.loads((tmp_path / "runs" / name / "results.json").read_text())
    res["provenance"]["git_commit"] = commit
    (tmp_path / "runs" / name / "results.json").write_text(json.dumps(res))
  out = tmp_path / "rep"
  assert report.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
  assert "warning: NOT PUBLISHABLE: 1 of 2 run(s)" in capsys.readouterr().err
  md = (out / "report.md").read_text()
  assert md.startswith("**NOT PUBLISHABLE: 1 of 2 run(s) were made from uncommitted code")
  assert list(pd.read_csv(out / "report.csv", index_col="run")["commit"]) == [
      "0123abc", "0123abc-dirty"]
  os.remove(tmp_path / "runs" / "b" / "results.json")
  assert report.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
  assert "NOT PUBLISHABLE" not in (out / "report.md").read_text()


def test_report_refuses_a_folder_without_runs(tmp_path, capsys):
  (tmp_path / "empty").mkdir()
  assert report.main([str(tmp_path / "empty"), "--out", str(tmp_path / "rep")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "empty" in err and "results.json" in err
  assert not (tmp_path / "rep").exists()


def test_train_with_two_seeds_writes_two_runs_and_their_spread(tmp_path):
  from jaxseg import seeds  # pylint: disable=g-import-not-at-top
  from tests.helpers import make_config  # pylint: disable=g-import-not-at-top
  c = make_config(tmp_path / "data", **{"train.num_steps": 4, "train.eval_every": 4,
                                        "train.log_to": ()})
  work = tmp_path / "s"
  summary = seeds.run_seeds(c, str(work), 2)
  runs = sorted(d for d in os.listdir(work) if d.startswith("seed_"))
  assert runs == ["seed_0", "seed_1"]
  results = [json.loads((work / r / "results.json").read_text()) for r in runs]
  assert [r["provenance"]["seed"] for r in results] == [0, 1]
  assert [r["provenance"]["label_seed"] for r in results] == [0, 1]
  for which in ("final", "selected"):
    for metric in ("mAP@0.1", "mAP@0.5", "cls_mAP"):
      values = np.array([r[which][metric] for r in results])
      assert summary["mean"].loc[which, metric] == pytest.approx(values.mean(), abs=1e-9)
      assert summary["std"].loc[which, metric] == pytest.approx(values.std(ddof=1), abs=1e-9)
  per_run = pd.read_csv(work / "seeds.csv")
  assert len(per_run) == 4 and set(per_run["checkpoint"]) == {"final", "selected"}
  md = (work / "seeds.md").read_text()
  assert "2 seeds" in md and "±" in md and "Inference rules used (runs per preset): final" in md
  # A rerun trains no step of the finished runs; it scores them again, to the
  # same numbers (reports are never reused on trust: tests/test_run_binding.py).
  from jaxseg import train  # pylint: disable=g-import-not-at-top
  before = [json.loads((work / r / "results.json").read_text())["final"] for r in runs]
  real = train.make_train_step
  try:
    train.make_train_step = lambda *a, **k: (lambda *x, **y: 1 / 0)
    seeds.run_seeds(c, str(work), 2)
  finally:
    train.make_train_step = real
  assert [json.loads((work / r / "results.json").read_text())["final"]
          for r in runs] == before


def test_fig5_points_are_the_mean_and_std_per_supervision_level(tmp_path):
  """Hand-built: two one-segment runs, one full and one video-level, and a points run."""
  times = (("video-level", 0.24), ("one-segment", 0.30), ("two-segment", 0.32),
           ("full", 1.17))
  pts = report.annotation_time_points(
      ["one-segment", "full", "one-segment", "video-level", "points"],
      [20.0, 40.0, 30.0, 10.0, 99.0], times)
  assert list(pts["label_mode"]) == ["video-level", "one-segment", "full"]
  assert list(pts["annotation_time"]) == [0.24, 0.30, 1.17]
  assert list(pts["mean"]) == [10.0, 25.0, 40.0]
  assert pts["std"][1] == pytest.approx(np.std([20.0, 30.0], ddof=1))
  assert np.isnan(pts["std"][0]) and list(pts["runs"]) == [1, 2, 1]
  paths = report.write_annotation_time(pts, str(tmp_path), "mAP@0.5", "caption")
  assert [os.path.basename(p) for p in paths] == ["fig5.csv", "fig5.md", "fig5.png"]
  assert "caption" in (tmp_path / "fig5.md").read_text()


def test_report_fig5_from_runs(tmp_path):
  for name, mode, value in (("a", "one-segment", 20.0), ("b", "two-segment", 30.0)):
    _fake_run(tmp_path / "runs" / name, {"labels": {"mode": mode}},
              {"step": 1, "mAP@0.5": value})
    res = json.loads((tmp_path / "runs" / name / "results.json").read_text())
    res["provenance"]["label_mode"] = mode
    (tmp_path / "runs" / name / "results.json").write_text(json.dumps(res))
  out = tmp_path / "rep"
  assert report.main([str(tmp_path / "runs"), "--out", str(out), "--fig5", "mAP@0.5",
                      "--annotation-time", "one-segment=2", "two-segment=3"]) == 0
  pts = pd.read_csv(out / "fig5.csv")
  assert list(pts["label_mode"]) == ["one-segment", "two-segment"]
  assert list(pts["annotation_time"]) == [2.0, 3.0] and list(pts["mean"]) == [20.0, 30.0]
