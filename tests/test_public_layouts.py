"""The public THUMOS14 / ActivityNet layouts as shipped, end to end, and --mode predict.

Each tree is written by :mod:`tests.public_layouts` exactly as the public code
bases ship it; a run reads it with no override but the paths (and, for speed
only, fewer steps and a narrower embedding).
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from configs import activitynet13_i3d, thumos14_i3d, thumos14_wtalc_i3d
from jaxseg import config as config_lib
from jaxseg import config_checks
from jaxseg import evaluate
from jaxseg import rules as rules_lib
from jaxseg import metrics
from jaxseg import predict
from jaxseg import score
from jaxseg import subsets
from jaxseg import train
from jaxseg import run_data
from jaxseg import workdir as workdir_lib
from jaxseg.data import layouts
from jaxseg.data import reader_common
from jaxseg.data import readers
from jaxseg.data.video import DataError
from tests import public_layouts

# End-to-end: trains, runs subprocesses or full-size networks (pytest -m "not slow"
# skips the module).
pytestmark = pytest.mark.slow


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# For speed only: the layouts need no other override.
FAST = {"train.num_steps": 2, "model.embed_dim": 32, "train.batch_size": 4,
        "train.progress": False}


def _fast_flags():
  return [f"--config.{k}={v}" for k, v in FAST.items()]


def _score_csv(tmp, gt_path, pred_path, *extra):
  out = os.path.join(str(tmp), f"score_{len(os.listdir(str(tmp)))}.csv")
  assert score.main(["--ground-truth", gt_path, "--predictions", pred_path,
                     "--output", out, *extra]) == 0
  return pd.read_csv(out, index_col=0).loc["mean"]


def _same_numbers(scored, summary):
  """Every mAP / average column of the score CSV equals the run's summary exactly."""
  keys = [k for k in scored.index if k.startswith(("mAP@", "avg"))]
  assert keys
  for k in keys:
    assert float(scored[k]) == summary[k], (k, float(scored[k]), summary[k])


# ------------------------------------------------------------ BaSNet / LACP


@pytest.fixture(scope="module")
def basnet(tmp_path_factory):
  """The BaSNet/LACP tree trained from the command line, no override but the paths."""
  root = tmp_path_factory.mktemp("basnet")
  gt, fdir, vids = public_layouts.basnet_tree(root)
  work = os.path.join(str(root), "run")
  cmd = [sys.executable, "-m", "jaxseg.main", "--config", "configs/thumos14_i3d.py",
         "--workdir", work, f"--config.data.annotation_path={gt}",
         f"--config.data.features_dir={fdir}", *_fast_flags()]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return {"root": str(root), "gt": gt, "features": fdir, "work": work, "videos": vids,
          "log": proc.stdout + proc.stderr}


def test_basnet_layout_trains_and_evaluates_with_paths_only(basnet):
  log = basnet["log"]
  assert "layout 'subset/stream', detected" in log
  assert os.path.join(basnet["features"], "<subset>", "{rgb,flow}", "<vid>.npy") in log
  assert "train subset: 'train', test subset: 'test' (auto: no 'validation'" in log
  res = json.load(open(os.path.join(basnet["work"], "results.json")))
  assert 0 <= res["selected"]["mAP@0.5"] <= 100
  classes = json.load(open(os.path.join(basnet["work"], "classes.json")))
  assert classes == {"class_names": list(public_layouts.CLASSES), "feature_dim": 2048,
                     "stream_widths": {"rgb": 1024, "flow": 1024}}


def test_predict_scores_exactly_as_mode_eval(basnet, tmp_path):
  """End to end: predict on the unannotated test features, score against
  gt.json: the numbers --mode eval reports for the same run, exactly."""
  config = predict.run_config(basnet["work"])
  reported = evaluate.evaluate_workdir(config, basnet["work"])["selected"]
  out = str(tmp_path / "pred")
  info = predict.predict_folder(basnet["work"], os.path.join(basnet["features"], "test"),
                                out)
  assert info["num_videos"] == 4 and "layout 'stream'" in info["layout"]
  scored = _score_csv(tmp_path, basnet["gt"], os.path.join(out, "detections.json"),
                      "--subset", "test")
  _same_numbers(scored, reported)
  # The CAS of every video, (T, N), and no plot unless asked.
  assert sorted(os.listdir(out)) == [predict.OUTPUT_MARKER, "cas", "detections.json"]
  for vid, t, _, _ in basnet["videos"]["test"]:
    with np.load(os.path.join(out, "cas", vid + ".npz")) as z:
      assert z["cas_cls"].shape == z["cas_loc"].shape == z["cas_a"].shape == (t, 2)
      np.testing.assert_allclose(z["cas_a"], (z["cas_cls"] + z["cas_loc"]) / 2, rtol=1e-6)
      assert list(z["class_names"]) == list(public_layouts.CLASSES)


def test_predict_reads_every_layout_alike(basnet, tmp_path):
  """The whole tree (subset/stream), one subset (stream) and joined 2048-d
  files (flat) give the same detections; plots on request."""
  joined = tmp_path / "joined"
  joined.mkdir()
  for vid, _, _, _ in basnet["videos"]["test"]:
    parts = [np.load(os.path.join(basnet["features"], "test", s, vid + ".npy"))
             for s in ("rgb", "flow")]
    np.save(joined / f"{vid}.npy", np.concatenate(parts, axis=1))
  got = {}
  for name, folder in (("stream", os.path.join(basnet["features"], "test")),
                       ("flat", str(joined))):
    out = str(tmp_path / f"out_{name}")
    info = predict.predict_folder(basnet["work"], folder, out, plots=(name == "flat"))
    assert f"layout {name!r}" in info["layout"]
    got[name] = json.load(open(os.path.join(out, "detections.json")))["results"]
  assert got["stream"] == got["flat"]
  assert len(os.listdir(tmp_path / "out_flat" / "plots")) == 4
  whole = predict.predict_folder(basnet["work"], basnet["features"], str(tmp_path / "all"))
  assert "layout 'subset/stream'" in whole["layout"] and whole["num_videos"] == 10


def test_predict_refuses_wrong_dimension_and_writes_nothing(basnet, tmp_path):
  """Each stream's width is checked against the run's (1536 + 512 has the
  run's total D = 2048 but not its 1024 + 1024), and then the total."""
  bad = tmp_path / "bad"
  for s, width in (("rgb", 1536), ("flow", 512)):
    (bad / s).mkdir(parents=True)
    np.save(bad / s / "video_test_0000001.npy", np.zeros((20, width), np.float32))
  out = tmp_path / "out"
  with pytest.raises(DataError) as e:
    predict.predict_folder(basnet["work"], str(bad), str(out))
  msg = str(e.value)
  assert msg.startswith(str(bad / "rgb" / "video_test_0000001.npy") + ": ")
  assert "stream 'rgb' has width 1536" in msg and "'rgb' of width 1024" in msg
  assert sorted(os.listdir(tmp_path)) == ["bad"]  # no output, no temporary folder
  joined = tmp_path / "joined"
  joined.mkdir()
  np.save(joined / "video_test_0000001.npy", np.zeros((20, 1024), np.float32))
  with pytest.raises(DataError, match="expected 2048, got 1024"):
    predict.predict_folder(basnet["work"], str(joined), str(out))
  # The command line: a named error, exit status 2, nothing written.
  proc = subprocess.run(
      [sys.executable, "-m", "jaxseg.main", "--mode", "predict", "--workdir", basnet["work"],
       "--predict_features", str(bad), "--predict_out", str(out)],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "stream 'rgb' has width 1536" in proc.stderr
  assert sorted(os.listdir(tmp_path)) == ["bad", "joined"]


def test_predict_refuses_an_output_folder_in_use(basnet, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "mine.txt").write_text("keep")
  with pytest.raises(config_lib.ConfigError, match="already exists"):
    predict.predict_folder(basnet["work"], os.path.join(basnet["features"], "test"),
                           str(out))
  assert os.listdir(out) == ["mine.txt"]


def test_mixed_layout_is_a_named_error_before_anything_is_trained(basnet, tmp_path):
  root = tmp_path / "mixed"
  shutil.copytree(basnet["root"], root, ignore=shutil.ignore_patterns("run"))
  vid = "video_test_0000002"
  for s in ("rgb", "flow"):  # one video in the `stream` layout, the rest per subset
    (root / "features" / s).mkdir()
    shutil.move(str(root / "features" / "test" / s / f"{vid}.npy"),
                str(root / "features" / s / f"{vid}.npy"))
  config = config_lib.with_overrides(
      thumos14_i3d.get_config(), **FAST, **{
          "data.annotation_path": str(root / "gt.json"),
          "data.features_dir": str(root / "features")})
  work = tmp_path / "run"
  with pytest.raises(DataError) as e:
    train.train_and_evaluate(config, str(work))
  msg = str(e.value)
  assert "mixed feature layouts" in msg and repr(vid) in msg
  assert str(root / "features" / "test" / "rgb" / f"{vid}.npy") in msg  # paths tried
  assert str(root / "features" / "rgb" / f"{vid}.npy") in msg
  # As for any bad data: only the workdir claim (config.json, and the run's lock)
  # precedes loading it.
  assert sorted(os.listdir(work)) == [".lock", "config.json"]


# ------------------------------------------------------------------ W-TALC


@pytest.fixture(scope="module")
def wtalc(tmp_path_factory):
  root = tmp_path_factory.mktemp("wtalc")
  ann_dir, _, info = public_layouts.wtalc_tree(root)
  config = config_lib.with_overrides(thumos14_wtalc_i3d.get_config(), **FAST,
                                     **{"data.wtalc_dir": ann_dir})
  work = os.path.join(str(root), "run")
  out = train.train_and_evaluate(config, work)
  return {"root": str(root), "ann_dir": ann_dir, "info": info, "config": config,
          "work": work, "out": out}


def test_wtalc_bundle_as_shipped_trains_with_labels_all_and_ambiguous(wtalc):
  data = run_data.read_data(wtalc["config"], wtalc["work"])
  summary = run_data.data_summary(data)
  assert "ambiguous intervals (not evaluated): 4 in 4 videos" in summary
  assert "video-level labels from labels_all.npy" in summary
  assert data.train_subset == "validation" and data.test_subset == "test"
  # The video with a video-level label and no instance trains with L_cls only.
  vid = wtalc["info"]["label_only"]
  video = {v.video_id: v for v in data.dataset.videos}[vid]
  assert video.instances == [] and list(video.video_labels(2)) == [0.0, 1.0]
  assert not data.segment_labels.labels[vid].any()
  log = [json.loads(l) for l in open(os.path.join(wtalc["work"], "metrics.jsonl"))]
  assert all(r["finite"] == 1.0 for r in log if r["kind"] == "train")


@pytest.mark.parametrize("protocol", config_lib.PROTOCOLS)
def test_wtalc_ambiguous_used_by_evaluation_and_score(wtalc, tmp_path, protocol):
  """Training-time evaluation (results.json) and jaxseg.score with the bundle's
  Ambiguous_test.txt agree exactly; the intervals remove detections."""
  config = wtalc["config"]
  if protocol != config.eval.protocol:
    config = config_lib.with_overrides(config, **{"eval.protocol": protocol})
  run = workdir_lib.load_run(wtalc["config"], wtalc["work"], which="selected")
  res = evaluate.evaluate_params(config, run.model, run.state.params, run.data.test,
                                rules=rules_lib.read_choice(config, wtalc["work"], "selected",
                                                           run.step))
  if protocol == wtalc["config"].eval.protocol:
    reported = json.load(open(os.path.join(wtalc["work"], "results.json")))["selected"]
    for k, v in res["summary"].items():
      assert reported[k] == pytest.approx(v, abs=1e-12)
  gt_path = str(tmp_path / "gt.json")
  with open(gt_path, "w") as f:
    json.dump(run.data.test.ground_truth(), f)
  pred_path = str(tmp_path / "pred.json")
  with open(pred_path, "w") as f:
    json.dump({"results": res["predictions"]["results"]}, f)
  amb = os.path.join(wtalc["ann_dir"], "Ambiguous_test.txt")
  scored = _score_csv(tmp_path, gt_path, pred_path, "--protocol", protocol,
                      "--ambiguous", amb)
  _same_numbers(scored, res["summary"])
  pred = res["predictions"]
  with_amb = metrics.detection_map(run.data.test.ground_truth(), pred, [0.5],
                                   protocol=protocol,
                                   ambiguous=run.data.test.ambiguous_of_videos())
  without = metrics.detection_map(run.data.test.ground_truth(), pred, [0.5], protocol=protocol)
  assert with_amb.attrs["num_predictions"] < without.attrs["num_predictions"]


def test_predict_with_a_joined_features_run_reads_extract_folders(wtalc, tmp_path):
  """A run on W-TALC's joined (RGB then flow) features predicts on the folder
  jaxseg.extract writes, FEATURES_DIR/{rgb,flow}/<vid>.npy, as on joined files."""
  data = run_data.read_data(wtalc["config"], wtalc["work"])
  split, joined = tmp_path / "split", tmp_path / "joined"
  joined.mkdir()
  for s in ("rgb", "flow"):
    (split / s).mkdir(parents=True)
  for v in data.test.videos:
    np.save(split / "rgb" / f"{v.video_id}.npy", v.features[:, :1024])
    np.save(split / "flow" / f"{v.video_id}.npy", v.features[:, 1024:])
    np.save(joined / f"{v.video_id}.npy", v.features)
  a = predict.predict_folder(wtalc["work"], str(split), str(tmp_path / "a"))
  b = predict.predict_folder(wtalc["work"], str(joined), str(tmp_path / "b"))
  assert "layout 'stream'" in a["layout"] and "layout 'flat'" in b["layout"]
  load = lambda d: json.load(open(tmp_path / d / "detections.json"))["results"]
  assert load("a") == load("b") and len(load("a")) == 4
  # The same streams one level down (DIR/<subset>/{rgb,flow}/), and joined files
  # beside empty stream folders: the same detections.
  tree = tmp_path / "tree"
  shutil.copytree(split, tree / "test")
  c = predict.predict_folder(wtalc["work"], str(tree), str(tmp_path / "c"))
  assert "layout 'subset/stream'" in c["layout"]
  for s in ("rgb", "flow"):
    (joined / s).mkdir()
  d = predict.predict_folder(wtalc["work"], str(joined), str(tmp_path / "d"))
  assert "layout 'flat'" in d["layout"]
  assert load("c") == load("d") == load("a")


def test_wtalc_full_101_class_bundle_reads(tmp_path):
  ann_dir, features_file, info = public_layouts.wtalc_tree(tmp_path, full=True)
  config = config_lib.with_overrides(
      thumos14_wtalc_i3d.get_config(), **{"data.wtalc_dir": ann_dir,
                                          "data.wtalc_features_file": features_file})
  text = workdir_lib.describe_data(config, str(tmp_path / "run"))
  assert "5 classes" in text and "labels_all.npy" in text
  ds = readers.load_dataset(config.data)
  assert ds.class_names == info["classes"]
  archery = info["classes"].index("Archery")
  train_videos = [v for v in ds.videos if v.subset == "validation"]
  # Every training video shows Archery at the video level only.
  assert all(v.video_labels(5)[archery] == 1.0 for v in train_videos)
  assert all(i.label != archery for v in train_videos for i in v.instances)


# -------------------------------------------------------------- ActivityNet 1.3


def test_activitynet13_json_trains_and_evaluates(tmp_path):
  path, fdir = public_layouts.anet13_tree(tmp_path)
  config = config_lib.with_overrides(
      activitynet13_i3d.get_config(), **FAST,
      **{"data.annotation_path": path, "data.features_dir": fdir})
  out = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert set(out["selected"]) >= {"mAP@0.5", "mAP@0.95", "avg0.5:0.95"}
  data = run_data.read_data(config, str(tmp_path / "run"))
  assert data.train_subset == "training" and data.test_subset == "validation"
  assert {v.subset for v in data.dataset.videos} == {"training", "validation", "testing"}
  assert all(not v.instances for v in data.dataset.videos if v.subset == "testing")
  assert "layout 'flat'" in data.dataset.summary()


# ------------------------------------------------------------- unit pieces


@pytest.mark.parametrize("present, want", [
    (["validation", "test"], ("validation", "test")),
    (["train", "test"], ("train", "test")),
    (["training", "validation", "testing"], ("training", "validation")),
])
def test_auto_subsets(present, want):
  tr, te, note = subsets.resolve_subsets("auto", "auto", present)
  assert (tr, te) == want and "auto" in note
  assert subsets.resolve_subsets("train", "test", present) == ("train", "test", "")
  assert subsets.resolve_subsets("auto", want[1], present)[:2] == want


def test_auto_subsets_without_a_known_pair_lists_the_subsets():
  with pytest.raises(DataError, match=r"hold subsets \['a', 'b'\]"):
    subsets.resolve_subsets("auto", "auto", ["a", "b"])


def test_split_file_needs_a_named_subset():
  c = thumos14_i3d.get_config()
  c.data.annotation_path, c.data.features_dir = "gt.json", "f"
  c.data.train_split_file = "train.txt"
  with pytest.raises(config_lib.ConfigError, match="data.train_subset"):
    config_checks.validate(c)


def _touch(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.save(path, np.zeros((3, 2), np.float32))


@pytest.mark.parametrize("name, parts", [
    ("flat", ["{vid}.npy"]),
    ("subset", ["{sub}/{vid}.npy"]),
    ("stream", ["rgb/{vid}.npy", "flow/{vid}.npy"]),
    ("subset/stream", ["{sub}/rgb/{vid}.npy", "{sub}/flow/{vid}.npy"]),
])
def test_detect_and_scan_each_layout(tmp_path, name, parts):
  videos = [("a", "train"), ("b", "test")]
  for vid, sub in videos:
    for p in parts:
      _touch(str(tmp_path / p.format(vid=vid, sub=sub)))
  lay = layouts.detect_layout(str(tmp_path), videos, ("rgb", "flow"))
  assert lay.name == name
  scanned, found = layouts.scan_folder(str(tmp_path), ("rgb", "flow"))
  assert scanned.name == name and sorted(v for v, _ in found) == ["a", "b"]


def test_missing_features_list_the_paths_tried(tmp_path):
  _touch(str(tmp_path / "train" / "rgb" / "a.npy"))
  _touch(str(tmp_path / "train" / "flow" / "a.npy"))
  with pytest.raises(DataError) as e:
    layouts.detect_layout(str(tmp_path), [("a", "train"), ("b", "test")], ("rgb", "flow"))
  msg = str(e.value)
  assert "\n" not in msg  # one error line
  assert "feature file missing for annotated video 'b'" in msg
  for p in ("test/rgb/b.npy", "rgb/b.npy", "b.npy", "test/b.npy"):
    assert str(tmp_path / p) in msg


def test_scan_refuses_two_layouts_and_bad_ids(tmp_path):
  _touch(str(tmp_path / "a.npy"))
  _touch(str(tmp_path / "rgb" / "b.npy"))
  _touch(str(tmp_path / "flow" / "b.npy"))
  with pytest.raises(DataError, match="mixed feature layouts"):
    layouts.scan_folder(str(tmp_path), ("rgb", "flow"))
  with pytest.raises(DataError, match="not usable as a file name"):
    layouts.detect_layout(str(tmp_path), [("../x", "test")], ())


def test_read_ambiguous_text_and_json(tmp_path):
  txt = tmp_path / "Ambiguous_test.txt"
  txt.write_text("video_test_0000004 12.3 15.0\n\nvideo_test_0000004 20 21.5 \n"
                 "video_test_0000006 1 2\n")
  assert reader_common.read_ambiguous(str(txt)) == {
      "video_test_0000004": [(12.3, 15.0), (20.0, 21.5)], "video_test_0000006": [(1.0, 2.0)]}
  js = tmp_path / "amb.json"
  js.write_text(json.dumps({"v": [[1, 2]]}))
  assert reader_common.read_ambiguous(str(js)) == {"v": [(1.0, 2.0)]}
  bad = tmp_path / "bad.txt"
  bad.write_text("v 1 2\nv 3\n")
  with pytest.raises(DataError, match=r"bad\.txt: line 2: expected 'video start end'"):
    reader_common.read_ambiguous(str(bad))
  bad.write_text("v 5 2\n")
  with pytest.raises(DataError, match=r"line 1: end 2.0 < start 5.0"):
    reader_common.read_ambiguous(str(bad))


def test_scan_reports_a_video_missing_from_the_first_stream(tmp_path):
  """Ids come from every stream folder: rgb/b.npy missing with flow/b.npy
  present is an error naming rgb/b.npy, never a dropped video."""
  for vid in ("a", "b"):
    _touch(str(tmp_path / "flow" / f"{vid}.npy"))
  _touch(str(tmp_path / "rgb" / "a.npy"))
  with pytest.raises(DataError) as e:
    layouts.scan_folder(str(tmp_path), ("rgb", "flow"))
  msg = str(e.value)
  assert msg.startswith(str(tmp_path / "rgb" / "b.npy") + ": feature file missing for video 'b'")
  assert str(tmp_path / "flow" / "b.npy") in msg


@pytest.mark.parametrize("subset_layout", [False, True])
def test_scan_reports_a_missing_stream_folder(tmp_path, subset_layout):
  """A subset (or the folder) with flow/ but no rgb/ is an error naming the
  missing folder, never a silently dropped subset."""
  _touch(str(tmp_path / "train" / "rgb" / "a.npy"))
  _touch(str(tmp_path / "train" / "flow" / "a.npy"))
  base = tmp_path / "test" if subset_layout else tmp_path
  if not subset_layout:
    for s in ("rgb", "flow"):
      os.remove(tmp_path / "train" / s / "a.npy")
      os.rmdir(tmp_path / "train" / s)
    os.rmdir(tmp_path / "train")
  _touch(str(base / "flow" / "b.npy"))
  with pytest.raises(DataError) as e:
    layouts.scan_folder(str(tmp_path), ("rgb", "flow"))
  assert str(e.value).startswith(f"{base / 'rgb'}: stream folder missing")


def test_an_empty_folder_error_names_each_path_once(tmp_path):
  for streams in ((), ("rgb", "flow")):
    with pytest.raises(DataError) as e:
      layouts.scan_folder(str(tmp_path), streams)
    looked = str(e.value).split("looked for ", 1)[1].rstrip(")")
    paths = looked.replace(" and ", ", ").split(", ")
    assert len(paths) == len(set(paths)) == (4 if streams else 2)


def test_a_video_missing_from_one_stream_names_that_streams_file(tmp_path):
  _touch(str(tmp_path / "rgb" / "a.npy"))
  _touch(str(tmp_path / "flow" / "a.npy"))
  _touch(str(tmp_path / "rgb" / "b.npy"))
  with pytest.raises(DataError) as e:
    layouts.detect_layout(str(tmp_path), [("a", "train"), ("b", "train")], ("rgb", "flow"))
  assert str(e.value).startswith(f"{tmp_path / 'flow' / 'b.npy'}: feature file missing")
