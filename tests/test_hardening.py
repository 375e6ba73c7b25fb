"""Hostile ids and pickles, silent wrong results, tracebacks instead of a
named error. One test (or a few) per numbered case of
the issue; docs/reliability.md lists them.

Most cases call the library in-process; the few that are about the command
line itself (exit status 2, one ``error:`` line, no traceback) run it in a
subprocess that fails during flag parsing, before JAX starts. Training runs
use configs/test.py with 8 steps and one shared synthetic dataset.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxseg import config as config_lib
from jaxseg import config_checks
from jaxseg import evaluate
from jaxseg import rules as rules_lib
from jaxseg import score
from jaxseg import train
from jaxseg import run_data
from jaxseg import workdir as workdir_lib
from jaxseg.data import io
from jaxseg.data import points
from jaxseg.data import readers
from jaxseg.data import wtalc
from jaxseg.data import wtalc_convert
from jaxseg.data.video import DataError
from tests.helpers import finished_run, make_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE = 25.0 / 16.0
STEPS = 8


# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="module", autouse=True)
def _cache(compilation_cache):
  """This module's runs share one persistent XLA compilation cache."""
  yield


def _feats(t, d, value):
  return (value + 0.001 * np.arange(t)[:, None] + np.zeros((1, d))).astype(np.float32)


def _anet(tmp_path, database, *, lengths=None, dim=4):
  """Writes ``gt.json`` and ``features/<vid>.npy`` for the ids that are plain names."""
  ann = tmp_path / "gt.json"
  ann.write_text(json.dumps({"database": database}))
  fdir = tmp_path / "features"
  fdir.mkdir(exist_ok=True)
  for k, vid in enumerate(database):
    if "/" not in vid and vid not in ("", ".", ".."):
      np.save(fdir / f"{vid}.npy", _feats((lengths or {}).get(vid, 10), dim, k))
  return str(ann), str(fdir)


def _db(n_train=4, n_test=2, train_annotated=True):
  db = {}
  for k in range(n_train):
    anns = [{"segment": [1.0, 3.0], "label": "Jump" if k % 2 else "Bowl"}]
    db[f"tr{k}"] = {"subset": "validation", "duration": 6.4,
                    "annotations": anns if train_annotated else []}
  for k in range(n_test):
    db[f"te{k}"] = {"subset": "test", "duration": 6.4,
                    "annotations": [{"segment": [0.5, 2.0], "label": "Bowl"}]}
  return db


def _anet_config(ann, fdir, **overrides):
  return make_config(**{"data.format": "activitynet", "data.annotation_path": ann,
                        "data.features_dir": fdir, "data.feature_dim": 4,
                        "train.validation_fraction": 0.0, "inference.rules": "jaxseg",
                        **overrides})


def _obj(items):
  out = np.empty(len(items), dtype=object)
  for i, x in enumerate(items):
    out[i] = x
  return out


def _wtalc(tmp_path, **replace):
  """A 3-video W-TALC bundle; ``replace`` maps an array name to what to save instead."""
  d = tmp_path / "wtalc"
  d.mkdir()
  arrays = {
      "videoname": np.array([b"video_validation_1", b"video_test_2", b"video_test_3"]),
      "subset": np.array([b"validation", b"test", b"test"]),
      "classlist": np.array([b"Diving", b"Archery"]),
      "duration": np.array([[10.0], [8.0], [6.0]]),
      "segments": _obj([[[1.0, 2.5], [4.0, 6.0]], [[0.5, 1.5]], []]),
      "labels": _obj([[b"Archery", b"Diving"], [b"Diving"], []]),
      "F": _obj([_feats(12, 6, 0), _feats(9, 6, 1), _feats(7, 6, 2)]),
  }
  arrays.update(replace)
  for name, arr in arrays.items():
    np.save(d / f"{name}.npy", arr, allow_pickle=True)
  return str(d)


class _Payload:
  """Pickles as a call to ``os.system`` creating ``path`` (run by ``np.load(allow_pickle=True)``)."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (os.system, (f"touch {self.path}",))


def _json(path):
  with open(path) as f:
    return json.load(f)


def _cli(*args, timeout=120):
  return subprocess.run([sys.executable, "-m", "jaxseg.main", *args], cwd=REPO,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                        text=True, timeout=timeout)


def _one_error_line(stderr):
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), stderr
  assert "Traceback" not in stderr
  return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One finished 8-step run of configs/test.py (copy it before changing it)."""
  return finished_run(tmp_path_factory.mktemp("hardening"), STEPS)


def _copy(trained, tmp_path, name="run"):
  dst = tmp_path / name
  shutil.copytree(trained["workdir"], dst)
  return dst


# ------------------------------------------------------ 1. ids are never paths


@pytest.mark.parametrize("vid", ["/abs/secret", "../x", "../../x/y", "..", "a\\b"])
def test_an_id_that_is_a_path_is_refused_naming_it(tmp_path, vid):
  db = _db()
  db[vid] = {"subset": "test", "annotations": []}
  ann, fdir = _anet(tmp_path, db)
  with pytest.raises(DataError, match="not usable as a file name") as e:
    readers.read_activitynet(ann, fdir)
  assert repr(vid) in str(e.value) and ann in str(e.value)


def test_a_wtalc_name_that_is_a_path_is_refused(tmp_path):
  d = _wtalc(tmp_path, videoname=np.array([b"video_1", b"../../etc/x", b"video_3"]))
  with pytest.raises(DataError, match=r"videoname\.npy.*'\.\./\.\./etc/x'"):
    wtalc.read_wtalc(d, "F.npy")


@pytest.mark.parametrize("subset", ["../x", "a/b", ".."])
def test_a_subset_that_is_a_path_is_refused_naming_file_and_video(tmp_path, subset):
  """A subset is a folder name of the subset layouts: never a path."""
  db = _db()
  first = next(iter(db))
  db[first]["subset"] = subset
  (tmp_path / "anet").mkdir()
  ann, fdir = _anet(tmp_path / "anet", db)
  with pytest.raises(DataError) as e:
    readers.read_activitynet(ann, fdir)
  assert str(e.value).startswith(f"{ann}: video {first!r}: subset {subset!r}: not usable")
  d = _wtalc(tmp_path, subset=np.array([b"validation", subset.encode(), b"test"]))
  with pytest.raises(DataError) as e:
    wtalc.read_wtalc(d, "F.npy")
  assert str(e.value).startswith(
      f"{os.path.join(d, 'subset.npy')}: video 'video_test_2': subset {subset!r}: not usable")


@pytest.mark.slow
def test_timelines_never_write_outside_the_workdir(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  before = set(os.listdir(tmp_path))
  config = config_lib.with_overrides(trained["config"], **{"eval.num_plot_videos": 12})
  evaluate.evaluate_workdir(config, str(workdir))
  pngs = sorted(os.listdir(workdir / "plots"))
  assert len(pngs) == 12 and all(p.endswith(".png") for p in pngs)
  assert set(os.listdir(tmp_path)) == before
  # An id that got past the readers still cannot name a path to write.
  run = workdir_lib.load_run(config, str(workdir))
  run.data.test.videos[0].video_id = "../../escape"
  with pytest.raises(DataError, match="'../../escape'"):
    evaluate.write_timelines(run, str(workdir / "plots2"), 2,
                            rules=rules_lib.read_choice(run.config, str(workdir), "final", run.step))
  assert not (tmp_path.parent / "escape.png").exists()
  assert not os.path.exists(os.path.join(workdir, "..", "..", "escape.png"))


# ------------------------------------------------ 2. no pickle code ever runs


@pytest.mark.parametrize("array", ["duration", "videoname", "segments", "F"])
def test_a_pickle_payload_is_refused_and_not_run(tmp_path, array):
  marker = tmp_path / "pwned"
  evil = _obj([_Payload(str(marker)), 1.0, 2.0])
  d = _wtalc(tmp_path, **{array: evil})
  with pytest.raises(DataError, match=f"{array}.npy") as e:
    wtalc.read_wtalc(d, "F.npy")
  assert not marker.exists()
  if array in ("duration", "videoname"):  # plain arrays: never unpickled at all
    assert "pickled object array" in str(e.value)
  else:  # object arrays: the restricted unpickler names what it refused
    assert "refusing to unpickle" in str(e.value) and "system" in str(e.value)


def _same_dataset(a, b):
  """Field by field: classes, ids, subsets, durations, instances, video-level
  labels, features (bit for bit) and ambiguous intervals."""
  assert b.class_names == a.class_names
  assert [v.video_id for v in b.videos] == [v.video_id for v in a.videos]
  for va, vb in zip(a.videos, b.videos):
    assert vb.subset == va.subset and vb.duration == va.duration
    assert vb.features.tobytes() == va.features.tobytes()
    assert [(i.start, i.end, i.label) for i in vb.instances] == \
        [(i.start, i.end, i.label) for i in va.instances]
    assert vb.extra_labels == va.extra_labels
    np.testing.assert_array_equal(vb.video_labels(len(a.class_names)),
                                  va.video_labels(len(a.class_names)))
  assert b.ambiguous == a.ambiguous


@pytest.mark.parametrize("extras", [False, True])
def test_wtalc_converts_to_a_pickle_free_layout_that_reads_back_the_same(tmp_path, extras):
  """Every file of the bundle survives: with labels_all.npy (video_test_3 shows
  Archery but has no annotated instance) and Ambiguous_test.txt, the
  conversion reads back the same, and the video-level labels and ambiguous
  intervals are not lost."""
  d = _wtalc(tmp_path)
  if extras:
    np.save(os.path.join(d, "labels_all.npy"),
            _obj([[b"Archery", b"Diving"], [b"Diving"], [b"Archery"]]), allow_pickle=True)
    with open(os.path.join(d, wtalc.WTALC_AMBIGUOUS_FILE), "w") as f:
      f.write("video_test_2 0.2 0.4\nvideo_test_3 1.0 2.0\n")
  out = tmp_path / "converted"
  assert wtalc_convert.main(["--wtalc-dir", d, "--features-file", "F.npy",
                             "--out", str(out)]) == 0
  a = wtalc.read_wtalc(d, "F.npy")
  b = wtalc_convert.read_converted(str(out))
  _same_dataset(a, b)
  if extras:
    assert a.videos[2].extra_labels == (1,) and a.videos[2].instances == []
    assert a.ambiguous == {"video_test_2": [(0.2, 0.4)], "video_test_3": [(1.0, 2.0)]}
    assert (out / wtalc.WTALC_AMBIGUOUS_FILE).read_bytes() == \
        open(os.path.join(d, wtalc.WTALC_AMBIGUOUS_FILE), "rb").read()
    assert sorted(os.listdir(out)) == [wtalc.WTALC_AMBIGUOUS_FILE, "annotations.json",
                                       "features"]
  else:
    assert sorted(os.listdir(out)) == ["annotations.json", "features"]
  for f in os.listdir(out / "features"):  # plain arrays, readable without pickle
    np.load(out / "features" / f, allow_pickle=False)
  assert wtalc_convert.main(["--wtalc-dir", d, "--features-file", "F.npy",
                             "--out", str(out)]) == 2  # never overwrites


@pytest.mark.parametrize("rate", ["0", "-3", "nan", "inf"])
def test_wtalc_convert_refuses_a_bad_feature_rate_in_one_line(tmp_path, capsys, rate):
  d = _wtalc(tmp_path)
  out = tmp_path / "converted"
  assert wtalc_convert.main(["--wtalc-dir", d, "--features-file", "F.npy",
                             "--out", str(out), "--feature-rate", rate]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: --feature-rate: ")
  assert not out.exists()


def test_activitynet_video_labels_are_checked(tmp_path):
  ann = tmp_path / "gt.json"
  fdir = tmp_path / "f"
  fdir.mkdir()
  np.save(fdir / "v.npy", np.zeros((4, 3), np.float32))
  for labels, msg in (("Diving", "must be a list of class names"),
                      (["Diving", 3], "must be a list of class names"),
                      (["Bowling"], "video_labels\\[0\\]: unknown class 'Bowling'")):
    ann.write_text(json.dumps({"database": {"v": {
        "subset": "test", "annotations": [{"segment": [0, 1], "label": "Diving"}],
        "video_labels": labels}}}))
    with pytest.raises(DataError, match=f"{ann}: video 'v'.*{msg}"):
      readers.read_activitynet(str(ann), str(fdir), class_names=["Diving"])


# ----------------------------- 3. a workdir is bound to its data; overwrite


def test_changed_data_refuses_to_resume_naming_what_changed(tmp_path):
  ann, fdir = _anet(tmp_path, _db())
  config = _anet_config(ann, fdir)
  workdir = str(tmp_path / "run")
  workdir_lib.claim_workdir(config, workdir)
  run_data.prepare_data(config, workdir)
  record = _json(os.path.join(workdir, "data.json"))
  assert set(record) >= {"dataset_fingerprint", "segment_labels_sha256", "class_names"}
  run_data.prepare_data(config, workdir)  # same data: fine
  db = _db()
  db["tr1"]["annotations"][0]["segment"] = [1.0, 4.0]  # an instance moved
  (tmp_path / "gt.json").write_text(json.dumps({"database": db}))
  with pytest.raises(DataError, match="data changed.*dataset fingerprint.*--overwrite"):
    run_data.prepare_data(config, workdir)
  for v in db.values():  # a class removed
    for a in v["annotations"]:
      a["label"] = "Bowl"
  (tmp_path / "gt.json").write_text(json.dumps({"database": db}))
  with pytest.raises(DataError, match=r"classes \['Bowl', 'Jump'\] -> \['Bowl'\]"):
    run_data.read_data(config, workdir)  # --mode eval refuses too


def test_changed_labels_refuse_to_resume(tmp_path):
  ann, fdir = _anet(tmp_path, _db())
  config = _anet_config(ann, fdir)
  workdir = str(tmp_path / "run")
  workdir_lib.claim_workdir(config, workdir)
  run_data.prepare_data(config, workdir)
  labels = os.path.join(workdir, "segment_labels.npz")
  with open(labels, "ab") as f:
    f.write(b"\0")
  with pytest.raises(DataError, match="segment_labels.npz was modified"):
    run_data.prepare_data(config, workdir)


def test_overwrite_starts_over_and_keeps_unknown_files(tmp_path):
  ann, fdir = _anet(tmp_path, _db())
  config = _anet_config(ann, fdir)
  workdir = tmp_path / "run"
  workdir_lib.claim_workdir(config, str(workdir))
  run_data.prepare_data(config, str(workdir))
  for sub in ("latest/4", "best/4"):
    (workdir / "checkpoints" / sub).mkdir(parents=True)
  (workdir / "checkpoints" / "notes.txt").write_text("mine")
  (workdir / "plots").mkdir()
  (workdir / "plots" / "tr0.png").write_bytes(b"png")
  (workdir / "plots" / "keep.pdf").write_bytes(b"pdf")
  for name in ("metrics.jsonl", "results.json", "my_notes.md"):
    (workdir / name).write_text("x")
  workdir_lib.claim_workdir(config, str(workdir), overwrite=True)  # same config
  left = sorted(p.relative_to(workdir).as_posix() for p in workdir.rglob("*"))
  assert left == [".lock", "checkpoints", "checkpoints/notes.txt", "config.json",
                  "my_notes.md", "plots", "plots/keep.pdf"] or left == [
                      "checkpoints", "checkpoints/notes.txt", "config.json",
                      "my_notes.md", "plots", "plots/keep.pdf"]


def test_cosine_makes_num_steps_resume_breaking(tmp_path):
  for schedule, refused in (("cosine", True), ("constant", False)):
    workdir = str(tmp_path / schedule)
    workdir_lib.claim_workdir(make_config(**{"train.schedule": schedule}), workdir)
    longer = make_config(**{"train.schedule": schedule, "train.num_steps": 24})
    if refused:
      with pytest.raises(config_lib.ConfigError, match="train.num_steps: 12 -> 24"):
        workdir_lib.claim_workdir(longer, workdir)
    else:
      workdir_lib.claim_workdir(longer, workdir)  # a longer constant run resumes


# ---------------------------------------------------------------- 4. the lock


def _hold_lock(workdir):
  code = ("import sys, time; from jaxseg import workdir as w; w.acquire_lock(sys.argv[1]); "
          "print('locked', flush=True); time.sleep(600)")
  proc = subprocess.Popen([sys.executable, "-c", code, str(workdir)], cwd=REPO,
                          stdout=subprocess.PIPE, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.stdout.readline().strip() == "locked"
  return proc


@pytest.mark.slow
def test_a_second_run_is_refused_naming_the_holder_and_a_killed_holder_never_blocks(
    trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  holder = _hold_lock(workdir)
  try:
    with pytest.raises(workdir_lib.WorkdirBusyError, match=f"pid {holder.pid}"):
      train.train_and_evaluate(trained["config"], str(workdir))
    before = _json(workdir / "results.json")["final"]
    # --mode eval reads without the lock, and does not trip over it.
    out = evaluate.evaluate_workdir(trained["config"], str(workdir))
    assert out["final"]["mAP@0.5"] == pytest.approx(before["mAP@0.5"])
  finally:
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
  assert os.path.exists(workdir / ".lock")  # a stale file: the kernel dropped the lock
  fd = workdir_lib.acquire_lock(str(workdir))
  try:
    assert (workdir / ".lock").read_text().strip() == str(os.getpid())
  finally:
    os.close(fd)


# -------------------------------------------------------- 5. duplicate ids


def test_duplicate_video_ids_are_refused(tmp_path):
  ann, fdir = _anet(tmp_path, _db())
  with open(ann) as f:
    text = f.read().replace('"te1":', '"te0":')
  with open(ann, "w") as f:
    f.write(text)
  with pytest.raises(DataError, match=f"{ann}: duplicate key 'te0'"):
    readers.read_activitynet(ann, fdir)
  d = _wtalc(tmp_path, videoname=np.array([b"v1", b"v2", b"v1"]))
  with pytest.raises(DataError, match=r"duplicate video id\(s\) \['v1'\]"):
    wtalc.read_wtalc(d, "F.npy")


# ------------------------------------------------------ 6. the scoring CLI


def _score_files(tmp_path, pred_text=None):
  gt = tmp_path / "gt.json"
  gt.write_text(json.dumps({"database": {"a": {"subset": "test", "duration": 10.0,
      "annotations": [{"segment": [1.0, 2.0], "label": "x"}]}}}))
  pred = tmp_path / "pred.json"
  pred.write_text(pred_text or json.dumps(
      {"results": {"a": [{"segment": [1.0, 2.0], "label": "x", "score": 0.9}]}}))
  return ["--ground-truth", str(gt), "--predictions", str(pred)]


@pytest.mark.parametrize("tiou, message", [
    ("0", "outside (0, 1]"), ("0,0.5", "outside (0, 1]"), ("nan", "outside (0, 1]"),
    ("0:1:1e-9", "at most 100"), ("0.01:1:0.001", "at most 100")])
def test_score_refuses_bad_thresholds_before_any_work(tmp_path, capsys, tiou, message):
  t0 = time.time()
  assert score.main(_score_files(tmp_path) + ["--tiou", tiou]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: --tiou") and message in err and err.count("\n") == 1
  assert time.time() - t0 < 5


def test_score_refuses_duplicate_keys_in_predictions(tmp_path, capsys):
  pred = ('{"results": {"a": [{"segment": [1.0, 2.0], "label": "x", "score": 0.9}], '
          '"a": []}}')
  assert score.main(_score_files(tmp_path, pred)) == 2
  assert "duplicate key 'a'" in capsys.readouterr().err


def test_hostile_wtalc_shapes_are_named_errors(tmp_path):
  """A segments entry that is a number, and a subset.npy of shape (3, 0)."""
  for sub in ("a", "b"):
    (tmp_path / sub).mkdir()
  d = _wtalc(tmp_path / "a", segments=_obj([[[1.0, 2.5], [4.0, 6.0]], 3.0, []]))
  with pytest.raises(DataError, match=r"segments\.npy: video 'video_test_2': expected a "
                     r"list of \[start, end\], got 3\.0"):
    wtalc.read_wtalc(d, "F.npy")
  d = _wtalc(tmp_path / "b", subset=np.zeros((3, 0), "S4"))
  with pytest.raises(DataError, match=r"subset\.npy: holds 0 names but videoname\.npy "
                     r"holds 3"):
    wtalc.read_wtalc(d, "F.npy")


def test_a_damaged_run_file_is_a_named_error(trained, tmp_path):
  """A garbled segment_labels.npz, a splits.json or data.json of the wrong shape:
  --mode eval names the file; nothing is written."""
  for name, content, message in (
      ("segment_labels.npz", b"PK\x03\x04garbled", "cannot read segment labels"),
      ("splits.json", b"null", 'expected {"validation"'),
      ("splits.json", b'{"validation": ["no_such_video"]}', "are not training videos"),
      ("data.json", b"[]", "expected a JSON object")):
    run = _copy(trained, tmp_path, name=f"run_{name}_{len(content)}")
    (run / name).write_bytes(content)
    with pytest.raises(DataError) as e:
      evaluate.evaluate_workdir(trained["config"], str(run))
    assert str(e.value).startswith(str(run / name)) and message in str(e.value)


def test_a_workdir_holding_an_input_is_refused(tmp_path):
  """--workdir = the annotation file's folder: the run would replace a
  classes.json (or any file it writes) there, and --overwrite remove it."""
  ann, fdir = _anet(tmp_path, _db())
  config = _anet_config(ann, fdir)
  before = sorted(os.listdir(tmp_path))
  for workdir in (tmp_path, tmp_path / "features"):
    with pytest.raises(config_lib.ConfigError, match=r"config.data.(annotation_path|"
                       rf"features_dir): .* lies in --workdir {workdir}"):
      workdir_lib.describe_data(config, str(workdir))
    with pytest.raises(config_lib.ConfigError, match="lies in --workdir"):
      train.train_and_evaluate(config, str(workdir))
  inside = tmp_path / "features" / "run"
  with pytest.raises(config_lib.ConfigError, match=rf"--workdir {inside} lies in "
                     r"config.data.features_dir"):
    train.train_and_evaluate(config, str(inside))
  assert sorted(os.listdir(tmp_path)) == before and not inside.exists()


# ------------------------------------ 7. values that used to fail after training


@pytest.mark.parametrize("overrides, field", [
    ({"train.grad_clip_norm": float("nan")}, "train.grad_clip_norm"),
    ({"inference.outer_scale": float("inf")}, "inference.outer_scale"),
    ({"loss.topk_ratio": float("inf")}, "loss.topk_ratio"),
    ({"train.weight_decay": float("inf")}, "train.weight_decay"),
    ({"data.feature_rate": float("inf")}, "data.feature_rate"),
    ({"inference.class_threshold": float("-inf")}, "inference.class_threshold"),
    ({"seed": -1}, "seed"),
    ({"labels.seed": -3}, "labels.seed"),
    ({"train.schedule": "cosine", "train.num_steps": 1}, "train.num_steps"),
    ({"data.synthetic.feature_dim": 0}, "data.synthetic.feature_dim"),
    ({"eval.tiou_thresholds": (float("nan"),)}, "eval.tiou_thresholds"),
    ({"eval.tiou_thresholds": ("0.5",)}, "eval.tiou_thresholds"),
    ({"eval.averages": (("avg", 0.1, float("nan")),)}, "eval.averages"),
    ({"data.train_subset": "test"}, "data.train_subset"),
    ({"data.ambiguous_path": "\x00"}, "data.ambiguous_path"),
    ({"distributed.coordinator_address": "abc"}, "distributed.coordinator_address"),
    ({"distributed.coordinator_address": "host:99999"}, "distributed.coordinator_address"),
    ({"distributed.num_processes": 2, "distributed.process_id": 2}, "distributed.process_id"),
    ({"model.embed_dim": 10 ** 23}, "model.embed_dim"),
    ({"train.length_buckets": (64, 2 ** 40)}, "train.length_buckets"),
])
def test_values_that_failed_after_training_are_refused_up_front(overrides, field):
  with pytest.raises(config_lib.ConfigError, match=f"^config.{field}: "):
    config_checks.validate(make_config(**overrides))


@pytest.mark.parametrize("field, value, expected", [
    ("train.num_steps", "12", "an integer"), ("train.progress", 1, "True or False"),
    ("loss.alpha", "0.1", "a number"), ("data.format", 3, "a string"),
    ("train.length_buckets", 64, "a list")])
def test_every_field_has_its_type(field, value, expected):
  c = make_config()
  section, leaf = field.rsplit(".", 1)
  node = c
  for name in section.split("."):
    node = node[name]
  del node[leaf]
  node[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=f"config.{field}: expected {expected}"):
    config_checks.validate(c)


def test_an_unknown_field_in_a_config_file_is_refused():
  c = make_config()
  c.train.num_step = 10  # a typo would otherwise be ignored
  with pytest.raises(config_lib.ConfigError, match="config.train.num_step: unknown field"):
    config_checks.validate(c)


@pytest.mark.parametrize("args, message", [
    (["--config=configs/test.py", "--config.train.foo=1"], "config.train.foo: unknown field"),
    (["--config=/nonexistent.py"], "--config: cannot load the config file"),
    (["--config=configs/test.py", "--config.train.num_steps=abc"], "config.train.num_steps"),
    (["--config=configs/test.py", "--config.train.grad_clip_norm=nan"],
     "config.train.grad_clip_norm: must be finite"),
    (["--mode=eval"], "--config is required with --mode eval"),
    (["--config=configs/test.py", "--config.train.num_steps=3", "--config.train.foo=1"],
     "config.train.foo: unknown field"),
    (["--config=tests/fixtures/config_without_get_config.py", "--config.train.num_steps=3"],
     "--config: cannot load the config file: AttributeError"),
    (["--config=tests/fixtures/config_returning_a_dict.py"],
     "--config: the config file's get_config() returned dict"),
    (["--config=tests/fixtures/config_returning_none.py"],
     "--config: the config file's get_config() returned NoneType"),
    (["--config=configs/test.py", "stray"], "unexpected arguments ['stray']")])
@pytest.mark.slow
def test_cli_flag_errors_are_one_line_and_exit_2(tmp_path, args, message):
  workdir = tmp_path / "run"
  proc = _cli(*args, "--workdir", str(workdir))
  assert proc.returncode == 2, proc.stderr
  assert message in _one_error_line(proc.stderr)
  assert not workdir.exists()


# ------------------------------------------- 8. workdir faults; disk full


def test_a_workdir_that_is_a_file_or_under_one_is_refused(tmp_path):
  f = tmp_path / "file"
  f.write_text("x")
  for workdir, what in ((f, "is a file"), (f / "run", "is under a file")):
    with pytest.raises(config_lib.ConfigError, match=f"{workdir}: --workdir {what}"):
      train.train_and_evaluate(make_config(), str(workdir))
  assert f.read_text() == "x"


def test_read_only_or_full_disk_is_one_line(tmp_path, monkeypatch):
  from jaxseg import main as main_lib  # pylint: disable=g-import-not-at-top

  def refuse(*args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "ro"))
  monkeypatch.setattr(os, "makedirs", refuse)
  with pytest.raises(OSError) as e:
    train.train_and_evaluate(make_config(), str(tmp_path / "ro" / "run"))
  assert main_lib.os_error_line(e.value) == f"{tmp_path / 'ro'}: read-only file system"
  monkeypatch.undo()
  # A full disk while writing a result names the file and keeps the old one.
  path = tmp_path / "results.json"
  path.write_text("old")

  def full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(os, "fsync", full)
  with pytest.raises(OSError) as e:
    io.atomic_write_text(str(path), "new")
  assert main_lib.os_error_line(e.value) == f"{path}: no space left on device"
  assert path.read_text() == "old" and os.listdir(tmp_path) == ["results.json"]


@pytest.mark.slow
def test_disk_full_while_checkpointing_keeps_the_previous_one_and_resumes(
    trained, tmp_path, monkeypatch):
  config = trained["config"]
  workdir = str(tmp_path / "run")
  save = ocp.CheckpointManager.save

  def save_until_full(self, step, *args, **kwargs):
    if step >= 8:
      raise ValueError("RESOURCE_EXHAUSTED: Error writing ...: No space left on device "
                       "[OS error: No space left on device] (784 more lines)")
    return save(self, step, *args, **kwargs)
  monkeypatch.setattr(ocp.CheckpointManager, "save", save_until_full)
  with pytest.raises(OSError) as e:
    train.train_and_evaluate(config, workdir)
  assert e.value.errno == errno.ENOSPC and e.value.filename.endswith("checkpoints")
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "latest"))) == ["4"]
  monkeypatch.undo()  # space freed
  train.train_and_evaluate(config, workdir)
  ref = _json(trained["workdir"] / "results.json")
  got = _json(os.path.join(workdir, "results.json"))
  assert got["final"] == ref["final"] and got["selected"] == ref["selected"]


# ----------------------------------- 9. a corrupted newest checkpoint


@pytest.mark.slow
def test_a_truncated_newest_checkpoint_falls_back_to_the_newest_intact_one(
    trained, tmp_path, caplog):
  workdir = _copy(trained, tmp_path)
  latest = workdir / "checkpoints" / "latest"
  assert sorted(os.listdir(latest)) == ["4", "8"]
  for name in ("results.json", "metrics.jsonl"):
    os.rename(workdir / name, tmp_path / name)
  truncated = 0
  for root, _, files in os.walk(latest / "8"):
    for f in files:
      p = os.path.join(root, f)
      if os.path.getsize(p) > 64 and not f.endswith((".json", "_METADATA")):
        with open(p, "r+b") as fh:
          fh.truncate(16)
        truncated += 1
  assert truncated
  train.train_and_evaluate(trained["config"], str(workdir))
  assert "checkpoint unreadable" in caplog.text and "step 4" in caplog.text
  assert sorted(os.listdir(latest)) == ["4", "8"]
  assert "latest-8" in os.listdir(workdir / "checkpoints" / "unreadable")
  got = _json(workdir / "results.json")
  ref = _json(tmp_path / "results.json")
  assert got["final"] == ref["final"] and got["selected"] == ref["selected"]


# ------------------------------------------------- 10. hostile W-TALC arrays


def test_hostile_wtalc_arrays_are_named_errors(tmp_path):
  cases = [
      ({"videoname": np.array([b"v1", b"\xff\xfe", b"v3"])}, r"videoname\.npy: videoname\[1\]"),
      ({"classlist": np.array([b"Diving", b"Diving"])}, r"classlist\.npy: class\(es\)"),
      ({"videoname": np.array(b"v1")}, r"videoname\.npy: W-TALC array is 0-d"),
      ({"labels": _obj([[b"Arch\xe9ry", b"Diving"], [b"Diving"], []])},
       r"labels\.npy: video 'video_validation_1': labels\[0\]"),
  ]
  for i, (replace, message) in enumerate(cases):
    sub = tmp_path / str(i)
    sub.mkdir()
    with pytest.raises(DataError, match=message):
      wtalc.read_wtalc(_wtalc(sub, **replace), "F.npy")


def test_a_header_claiming_a_huge_shape_is_a_named_error_even_when_skipping(tmp_path):
  ann, fdir = _anet(tmp_path, _db())
  path = os.path.join(fdir, "te1.npy")
  with open(path, "wb") as f:
    np.lib.format.write_array_header_1_0(
        f, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 16)})
    f.write(b"\0" * 64)
  with pytest.raises(DataError, match=r"te1.npy: video 'te1'.*claims shape \(1000000000000, 16\)"):
    readers.read_activitynet(ann, fdir)
  with pytest.warns(UserWarning, match="claims shape"):
    ds = readers.read_activitynet(ann, fdir, skip_bad_videos=True)
  assert [v for v, _ in ds.skipped_videos] == ["te1"]


# ------------------------------------------------------- 11. the smaller ones


def test_no_annotated_training_video_is_refused_naming_subset_and_file(tmp_path):
  ann, fdir = _anet(tmp_path, _db(train_annotated=False))
  config = _anet_config(ann, fdir)
  workdir = tmp_path / "run"
  with pytest.raises(DataError, match=f"{ann}: no video of data.train_subset 'validation'"):
    train.train_and_evaluate(config, str(workdir))
  assert sorted(os.listdir(workdir)) == [".lock", "config.json"]


def test_a_points_csv_with_a_bom_reads_and_a_bad_one_leaves_nothing(tmp_path):
  ann, fdir = _anet(tmp_path, _db())
  header = "class,class_index,start_frame,stop_frame,video_id,point\n"
  csv = tmp_path / "points.csv"
  csv.write_bytes(("\ufeff" + header + "Bowl,0,10,50,tr0,30\nJump,1,10,50,tr1,31\n"
                   "Bowl,0,10,50,tr2,32\nJump,1,10,50,tr3,33\n").encode("utf-8"))
  fps = tmp_path / "fps.json"
  fps.write_text(json.dumps({f"tr{k}": 30.0 for k in range(4)}))
  config = _anet_config(ann, fdir, **{"labels.mode": "points", "labels.points_csv": str(csv),
                                      "labels.fps_json": str(fps),
                                      "train.validation_fraction": 0.25})
  ds = readers.read_activitynet(ann, fdir)
  assert sum(len(p) for p in points.read_points(str(csv), str(fps), ds).values()) == 4
  csv.write_text(header + "Bowl,0,10,50,nope,30\n")
  workdir = tmp_path / "run"
  workdir_lib.claim_workdir(config, str(workdir))
  with pytest.raises(DataError, match="unknown video 'nope'"):
    run_data.prepare_data(config, str(workdir))
  assert sorted(os.listdir(workdir)) == ["config.json"]  # no splits.json, no labels


def test_a_symlink_loop_says_so(tmp_path):
  ann, fdir = _anet(tmp_path, _db())
  path = os.path.join(fdir, "te1.npy")
  os.remove(path)
  os.symlink(path, path)
  with pytest.raises(DataError, match="te1.npy: video 'te1': symbolic link loop"):
    readers.read_activitynet(ann, fdir)


@pytest.mark.slow
def test_the_nonfinite_error_names_the_last_good_checkpoint(trained, tmp_path):
  class State:
    first_bad_step, bad_terms = 5, 1
  with pytest.raises(train.NonFiniteError, match="last good checkpoint, step 4, is kept"):
    train.check_finite(State(), trained["config"], "w", last_good=4)
  with pytest.raises(train.NonFiniteError, match="no checkpoint was saved before it"):
    train.check_finite(State(), trained["config"], "w", last_good=None)


def test_a_stale_tmp_file_is_removed_by_the_next_run(tmp_path):
  workdir = tmp_path / "run"
  workdir_lib.claim_workdir(make_config(), str(workdir))
  (workdir / ".results.json.abc123.tmp").write_text("half")
  (workdir / "metrics.jsonl.tmp-4242").write_text("half")
  (workdir / ".my.tmp").write_text("a user's file")
  workdir_lib.claim_workdir(make_config(), str(workdir))
  assert sorted(os.listdir(workdir)) == [".my.tmp", "config.json"]


def test_complex_features_are_refused(tmp_path):
  ann, fdir = _anet(tmp_path, _db())
  np.save(os.path.join(fdir, "te0.npy"), np.ones((5, 4), np.complex64))
  with pytest.raises(DataError, match="te0.npy: video 'te0'.*numeric array, got dtype complex64"):
    readers.read_activitynet(ann, fdir)


def test_a_label_with_surrounding_spaces_is_stripped(tmp_path):
  db = _db()
  db["tr0"]["annotations"][0]["label"] = "Bowl "
  db["tr1"]["annotations"][0]["label"] = " Jump"
  ann, fdir = _anet(tmp_path, db)
  ds = readers.read_activitynet(ann, fdir)
  assert ds.class_names == ["Bowl", "Jump"]
