"""Runs that cannot destroy or mislead: the output rule of ``--mode predict``,
"finished" as a fact of training, and sweeps (``--seeds``, ablate) that never
report an earlier config's results."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxseg import ablation
from jaxseg import config as config_lib
from jaxseg import config_checks
from jaxseg import evaluate
from jaxseg import predict
from jaxseg import run_data
from jaxseg import seeds
from jaxseg import train
from jaxseg import workdir as workdir_lib
from jaxseg.data.video import DataError
from tests.helpers import finished_run, snapshot

# End-to-end: trains, runs subprocesses or full-size networks (pytest -m "not slow"
# skips the module).
pytestmark = pytest.mark.slow


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8


@pytest.fixture(scope="module", autouse=True)
def _cache(compilation_cache):
  yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One finished run of configs/test.py and a flat folder of test-video features."""
  run = finished_run(tmp_path_factory.mktemp("binding"), STEPS)
  config, workdir, root = run["config"], run["workdir"], run["root"]
  feats = root / "features"
  feats.mkdir()
  run = workdir_lib.load_run(config, str(workdir))
  for v in run.data.test.videos[:3]:
    np.save(feats / f"{v.video_id}.npy", v.features)
  return {"config": config, "workdir": workdir, "root": root, "features": feats}


def _copy(trained, tmp_path, name="run"):
  dst = tmp_path / name
  shutil.copytree(trained["workdir"], dst)
  return dst


# ------------------------------------------------------------ output rule


def test_predict_never_writes_over_or_into_an_input(trained, tmp_path):
  run = _copy(trained, tmp_path)
  feats = tmp_path / "features"
  shutil.copytree(trained["features"], feats)
  before = {"run": snapshot(run), "features": snapshot(feats)}
  other = _copy(trained, tmp_path, "other_run")
  for out, what in ((run, "the run"), (feats, "the features folder"),
                    (run / "predictions", "the run"), (feats / "out", "the features folder"),
                    (tmp_path, "the features folder"), (other / "sub", "lies inside the run")):
    with pytest.raises(config_lib.ConfigError, match=what):
      predict.predict_folder(str(run), str(feats), str(out), overwrite=True)
  assert {"run": snapshot(run), "features": snapshot(feats)} == before
  assert not os.path.exists(other / "sub")


def test_overwrite_replaces_only_a_folder_predict_made(trained, tmp_path):
  feats = str(trained["features"])
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("keep me")
  with pytest.raises(config_lib.ConfigError, match="replaces only a folder --mode predict wrote"):
    predict.predict_folder(str(trained["workdir"]), feats, str(mine), overwrite=True)
  assert (mine / "notes.txt").read_text() == "keep me"
  out = tmp_path / "pred"
  predict.predict_folder(str(trained["workdir"]), feats, str(out))
  assert (out / predict.OUTPUT_MARKER).is_file()
  mode = os.stat(out).st_mode & 0o777
  umask = os.umask(0)
  os.umask(umask)
  assert mode == 0o777 & ~umask
  with pytest.raises(config_lib.ConfigError, match="already exists"):
    predict.predict_folder(str(trained["workdir"]), feats, str(out))
  predict.predict_folder(str(trained["workdir"]), feats, str(out), overwrite=True)
  link = tmp_path / "link"
  link.symlink_to(out)
  with pytest.raises(config_lib.ConfigError, match="is a symlink"):
    predict.predict_folder(str(trained["workdir"]), feats, str(link), overwrite=True)
  assert link.is_symlink() and not any(p.name.endswith(".old") for p in tmp_path.iterdir())


def test_a_killed_predicts_leftovers_are_removed_at_the_next_start(trained, tmp_path):
  out = tmp_path / "pred"
  left = tmp_path / ".pred.abc12345.tmp"  # tempfile.mkdtemp's name for it
  left.mkdir()
  (left / predict.OUTPUT_MARKER).write_text("")
  (left / "detections.json").write_text("{")
  keep = [".pred.keep1234.tmp",  # not ours: no marker, not empty
          ".pred.x.abc12345.tmp",  # the temporary folder of another output, pred.x
          ".pred.mine.old"]  # not a temporary name
  for name in keep:
    (tmp_path / name).mkdir()
    (tmp_path / name / predict.OUTPUT_MARKER).write_text("")
  (tmp_path / keep[0] / predict.OUTPUT_MARKER).unlink()
  (tmp_path / keep[0] / "x").write_text("x")
  predict.predict_folder(str(trained["workdir"]), str(trained["features"]), str(out))
  assert not left.exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep + ["pred"])


def test_overwrite_never_removes_a_run_inside_an_old_output(trained, tmp_path):
  out = tmp_path / "pred"
  predict.predict_folder(str(trained["workdir"]), str(trained["features"]), str(out))
  shutil.copytree(trained["workdir"], out / "run2")
  before = snapshot(out / "run2")
  with pytest.raises(config_lib.ConfigError, match="would remove the run .*run2"):
    predict.predict_folder(str(trained["workdir"]), str(trained["features"]), str(out),
                           overwrite=True)
  assert snapshot(out / "run2") == before


def test_cli_predict_without_an_output_is_one_error_line(trained):
  proc = subprocess.run(
      [sys.executable, "-m", "jaxseg.main", "--mode", "predict", "--workdir",
       str(trained["workdir"]), "--predict_features", str(trained["features"]),
       "--predict_out", ""], capture_output=True, text=True, cwd=REPO, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: --mode predict needs --predict_features and --predict_out (folders)"]


def test_cli_predict_into_the_run_is_one_error_line_and_the_run_survives(trained, tmp_path):
  run = _copy(trained, tmp_path)
  before = snapshot(run)
  proc = subprocess.run(
      [sys.executable, "-m", "jaxseg.main", "--mode", "predict", "--workdir", str(run),
       "--predict_features", str(trained["features"]), "--predict_out", str(run),
       "--overwrite"], capture_output=True, text=True, cwd=REPO, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "may not be, contain or lie inside the run" in errors[0]
  assert "Traceback" not in proc.stderr and snapshot(run) == before


# ---------------------------------------------------------------- finished


def test_an_unfinished_run_is_neither_evaluated_nor_used_to_predict(trained, tmp_path):
  run = _copy(trained, tmp_path)
  before = snapshot(run)
  # The same run seen by a config asking for more steps: interrupted at step 8.
  longer = config_lib.with_overrides(trained["config"], **{"train.num_steps": 12})
  with pytest.raises(config_lib.ConfigError, match=r"unfinished run \(step 8 of "
                     r"train.num_steps = 12\)"):
    evaluate.evaluate_workdir(longer, str(run))
  assert snapshot(run) == before  # no results.json that makes it look finished
  cfg = json.loads((run / "config.json").read_text())
  cfg["train"]["num_steps"] = 12  # as a rerun asking for 12 steps writes it, then killed
  (run / "config.json").write_text(json.dumps(cfg))
  before = snapshot(run)
  with pytest.raises(config_lib.ConfigError, match="unfinished run"):
    predict.predict_folder(str(run), str(trained["features"]), str(tmp_path / "p"))
  assert not os.path.exists(tmp_path / "p")
  # --mode eval with the original 8-step config: the run was started for 12.
  with pytest.raises(config_lib.ConfigError, match=r"step 8 of train.num_steps = 12"):
    evaluate.evaluate_workdir(trained["config"], str(run))
  assert snapshot(run) == before


def test_a_run_config_missing_a_field_is_one_error_naming_file_and_field(trained, tmp_path):
  run = _copy(trained, tmp_path)
  cfg = json.loads((run / "config.json").read_text())
  del cfg["data"]["annotation_path"]
  (run / "config.json").write_text(json.dumps(cfg))
  before = snapshot(run)
  with pytest.raises(config_lib.ConfigError) as e:
    predict.predict_folder(str(run), str(trained["features"]), str(tmp_path / "p"))
  assert str(e.value) == (f"{run / 'config.json'}: config.data.annotation_path: missing "
                          "(every field is listed in jaxseg/config.py base_config)")
  assert snapshot(run) == before and not os.path.exists(tmp_path / "p")


def test_dangling_checkpoints_are_named_not_called_unfinished(trained, tmp_path):
  run = _copy(trained, tmp_path)
  shutil.rmtree(run / "checkpoints")
  os.symlink(tmp_path / "gone", run / "checkpoints")
  with pytest.raises(config_lib.ConfigError) as e:
    predict.predict_folder(str(run), str(trained["features"]), str(tmp_path / "p"))
  assert str(e.value).startswith(f"{run / 'checkpoints'}: dangling symbolic link")
  assert not os.path.exists(tmp_path / "p")


def test_predict_names_an_unreadable_selected_checkpoint(trained, tmp_path):
  run = _copy(trained, tmp_path)
  best = run / "checkpoints" / "best"
  step = max(int(d) for d in os.listdir(best) if d.isdigit())
  for root, _, files in os.walk(best / str(step)):
    for f in files:
      open(os.path.join(root, f), "wb").close()  # every file of it emptied
  with pytest.raises(config_lib.ConfigError) as e:
    predict.predict_folder(str(run), str(trained["features"]), str(tmp_path / "p"))
  assert str(e.value).startswith(f"{run}/checkpoints/best: a checkpoint there is unreadable")
  with pytest.raises(config_lib.ConfigError, match=f"{run}/checkpoints/best: "):
    evaluate.evaluate_workdir(trained["config"], str(run))


def test_a_metrics_log_with_foreign_lines_resumes(tmp_path):
  """metrics.jsonl is jaxseg's own log: on resume, lines that are no record of
  it (a cut line, a number, a list) are dropped, the records up to the step kept."""
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 2, "loss": 1.0}\nNaN\n[1, 2]\n{"step": "x"}\n{"step": 6}\n{"ste')
  workdir_lib.MetricsLog(str(path), resume_step=4)
  assert path.read_text() == '{"step": 2, "loss": 1.0}\n'
  assert not (tmp_path / "p").exists()


# ------------------------------------------------------------------ sweeps


def test_a_seeds_rerun_with_another_config_refuses_instead_of_reporting_the_old_one(
    trained, tmp_path):
  c = config_lib.with_overrides(trained["config"], **{"train.num_steps": 4})
  sweep = str(tmp_path / "sweep")
  first = seeds.run_seeds(c, sweep, 1)
  old = (tmp_path / "sweep" / "seeds.csv").read_bytes()
  changed = config_lib.with_overrides(c, **{"train.learning_rate": 3e-3, "loss.alpha": 0.5})
  with pytest.raises(config_lib.ConfigError, match="loss.alpha: 0.1 -> 0.5.*train.learning_rate"):
    seeds.run_seeds(changed, sweep, 1)
  assert (tmp_path / "sweep" / "seeds.csv").read_bytes() == old
  # --overwrite starts the runs over under the new config.
  again = seeds.run_seeds(changed, sweep, 1, overwrite=True)
  cfg = json.loads((tmp_path / "sweep" / "seed_0" / "config.json").read_text())
  assert cfg["train"]["learning_rate"] == 3e-3 and not again.equals(first)


def test_an_interrupted_seed_is_finished_not_taken_as_done(trained, tmp_path):
  c = config_lib.with_overrides(trained["config"], **{"train.num_steps": 4})
  sweep = tmp_path / "sweep"
  short = config_lib.with_overrides(c, **{"train.num_steps": 2})
  train.train_and_evaluate(seeds.seed_config(short, 0), str(sweep / "seed_0"))  # "killed" at 2
  seeds.run_seeds(c, str(sweep), 1)
  with open(sweep / "seed_0" / "results.json") as f:
    assert json.load(f)["final"]["step"] == 4
  steps = [json.loads(l)["step"] for l in open(sweep / "seed_0" / "metrics.jsonl")
           if json.loads(l)["kind"] == "train"]
  assert steps[-1] == 4


@pytest.mark.parametrize("num_seeds", [0, -1])
def test_ablate_refuses_a_seed_count_below_one(trained, tmp_path, num_seeds):
  with pytest.raises(config_lib.ConfigError, match=f"--seeds: expected at least 1, got {num_seeds}"):
    ablation.run_ablation(trained["config"], str(tmp_path / "abl"), num_seeds=num_seeds)
  c = config_lib.with_overrides(trained["config"], **{"ablation.label_modes": ()})
  with pytest.raises(config_lib.ConfigError, match="ablation.label_modes"):
    ablation.run_ablation(c, str(tmp_path / "abl"))
  assert not os.path.exists(tmp_path / "abl")


def test_seeds_with_eval_is_refused():
  proc = subprocess.run(
      [sys.executable, "-m", "jaxseg.main", "--config", "configs/test.py", "--workdir",
       "/nonexistent/never", "--mode", "eval", "--seeds", "2"],
      capture_output=True, text=True, cwd=REPO, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: --seeds applies to --mode train and ablate, not eval")


# ---------------------------------------------------- validated everywhere


@pytest.mark.parametrize("streams,message", [
    (("rgb", "rgb"), "names a stream twice"), (("",), "stream ''"),
    (("../x/rgb",), "stream '../x/rgb': not usable as a file name")])
def test_stream_names_are_plain_and_distinct(trained, streams, message):
  c = config_lib.with_overrides(trained["config"], **{"data.feature_streams": streams})
  with pytest.raises(config_lib.ConfigError, match=f"config.data.feature_streams: .*{message}"):
    config_checks.validate(c)


def test_json_past_the_readers_limits_is_one_error_naming_the_file(tmp_path):
  from jaxseg.data import io  # pylint: disable=g-import-not-at-top
  from jaxseg.data.video import DataError  # pylint: disable=g-import-not-at-top
  for name, text, message in (
      ("digits.json", '{"a": ' + "9" * 5001 + "}", "unreadable"),
      ("deep.json", "[" * 100000 + "]" * 100000, "nested too deeply"),
      ("deeper.json", '{"a": ' * 100 + "1" + "}" * 100, "nested deeper than 64 levels"),
      ("surrogate.json", '{"database": {"\\ud800": {}}}', "lone surrogate escape")):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError) as e:
      io.load_json(str(tmp_path / name), "annotation")
    assert str(e.value).startswith(f"{tmp_path / name}: ") and message in str(e.value)
  (tmp_path / "pair.json").write_text('{"a": "\\ud83d\\ude00"}')  # a pair: one character
  assert io.load_json(str(tmp_path / "pair.json")) == {"a": "\U0001F600"}


def test_mode_data_refuses_a_run_of_another_config(trained, tmp_path):
  run = _copy(trained, tmp_path)
  before = snapshot(run)
  other = config_lib.with_overrides(trained["config"], **{"labels.seed": 7})
  with pytest.raises(config_lib.ConfigError, match=r"labels.seed: 0 -> 7"):
    workdir_lib.describe_data(other, str(run))
  assert snapshot(run) == before


@pytest.mark.parametrize("record", [
    {"class_names": ["a"], "feature_dim": 16, "stream_widths": {"rgb": 12, "flow": 8}},
    {"class_names": ["a"], "feature_dim": 16, "stream_widths": {"rgb": "8", "flow": 8}},
    {"class_names": ["a"], "feature_dim": 16, "stream_widths": [8, 8]},
    {"class_names": ["a"], "feature_dim": True}])
def test_a_malformed_class_record_is_one_error_naming_the_file(tmp_path, record):
  (tmp_path / run_data.CLASSES_FILE).write_text(json.dumps(record))
  with pytest.raises(DataError, match=f"{tmp_path / run_data.CLASSES_FILE}: expected"):
    run_data.load_run_classes(str(tmp_path))


def test_class_records_without_stream_widths_still_read(tmp_path):
  (tmp_path / run_data.CLASSES_FILE).write_text(
      json.dumps({"class_names": ["a", "b"], "feature_dim": 16}))
  assert run_data.load_run_classes(str(tmp_path)) == (["a", "b"], 16, {})


def test_out_of_host_memory_is_one_error_line(tmp_path):
  """A MemoryError (a huge feature file padded into a batch) is one line, exit 2."""
  code = ("from jaxseg import train\n"
          "def oom(*a, **k):\n  raise MemoryError()\n"
          "train.train_and_evaluate = oom\n"
          "from jaxseg import main; main.run()")
  proc = subprocess.run(
      [sys.executable, "-c", code, "--config", os.path.join(REPO, "configs", "test.py"),
       "--workdir", str(tmp_path / "run")], cwd=str(tmp_path), capture_output=True,
      text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO))
  assert proc.returncode == 2
  assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(
      "error: out of memory in --mode train (host memory)")
  assert "Traceback" not in proc.stderr
