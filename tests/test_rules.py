"""Inference rules as one validated value, the presets, and ``inference.rules = "auto"``:
chosen on the validation hold-out only, recorded, and reproduced by eval and predict."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from configs import activitynet12_i3d, synthetic, synthetic_small, thumos14_i3d
from jaxseg import config as config_lib
from jaxseg import presets
from jaxseg import config_checks
from jaxseg import evaluate
from jaxseg import inference
from jaxseg import metrics
from jaxseg import predict
from jaxseg import rules as rules_lib
from jaxseg import train
from jaxseg import workdir as workdir_lib
from jaxseg.data import batching
from tests.helpers import forbid_test_split, make_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def _cache(compilation_cache):
  yield


# ------------------------------------------------------------ the value


def test_rules_hold_every_field_of_the_config_and_nothing_else():
  inference = config_lib.base_config().inference
  r = rules_lib.from_config(inference, "jaxseg")
  assert r.name == "jaxseg"
  for field in rules_lib.RULE_FIELDS:
    want = inference[field]
    got = getattr(r, field)
    assert (tuple(want) if isinstance(want, tuple) else want) == got, field
  with pytest.raises(dataclasses.FrozenInstanceError):
    r.nms_iou = 0.5  # frozen: built once, never changed per video
  # The fields a rule set does not hold are not detection rules.
  assert set(inference) - set(rules_lib.RULE_FIELDS) == {"batch_size", "rules",
                                                          "rule_candidates"}


@pytest.mark.parametrize("field,value", [
    ("nms_iou", -5.0), ("nms_iou", float("nan")), ("class_top_ratio", 2.0),
    ("extent", "bogus"), ("score_source", "both"), ("cas_thresholds", ()),
    ("cas_thresholds", (0.5, 1.5)), ("keep_top_class", 1), ("max_proposals_per_video", 0),
    ("contrast_loc_weight", 1.5), ("outer_scale", -1.0), ("outer_outside", "zero")])
def test_a_bad_field_is_refused_naming_it(field, value):
  raw = config_lib.base_config().to_dict()
  raw["inference"][field] = value
  with pytest.raises(config_lib.ConfigError, match=f"config.inference.{field}"):
    rules_lib.from_config(raw["inference"], "jaxseg")
  # A run's config.json is read into a ConfigDict as it is, then validated.
  with pytest.raises(config_lib.ConfigError, match=f"config.inference.{field}"):
    config_checks.validate(ml_collections.ConfigDict(raw))


def test_presets_apply_their_rules_over_the_config_fields():
  inference = config_lib.base_config().inference
  inference.nms_iou = 0.45  # a field no preset sets: every candidate keeps it
  got = rules_lib.candidates(inference)
  assert list(got) == list(config_lib.PRESETS)
  assert all(r.nms_iou == 0.45 for r in got.values())
  assert got["jaxseg"].fields() == {**rules_lib.from_config(inference, "jaxseg").fields()}
  for name in ("paper", "printed"):
    for field, value in presets.PRESET_RULES[name].items():
      assert getattr(got[name], field) == value
  # Section 4.7 as printed: proposals from C_a, their own extent, classes by s_a > 0.
  paper = got["paper"]
  assert (paper.proposal_cas, paper.extent, paper.score_source, paper.keep_top_class,
          paper.class_top_ratio, paper.contrast_loc_weight) == (
              "average", "proposal", "average", False, 0.0, 0.5)
  assert paper.same_detections(got["printed"]) and not paper.same_detections(got["jaxseg"])
  inference.rules = "paper"
  assert list(rules_lib.candidates(inference)) == ["paper"]
  for bad, field in ((("jaxseg", "jaxseg"), "rule_candidates"), (("nope",), "rule_candidates"),
                     ((), "rule_candidates")):
    inference.rules, inference.rule_candidates = "auto", bad
    with pytest.raises(config_lib.ConfigError, match=f"config.inference.{field}"):
      rules_lib.candidates(inference)
  inference.rules = "best"
  with pytest.raises(config_lib.ConfigError, match="config.inference.rules"):
    rules_lib.candidates(inference)


def test_every_dataset_config_has_the_three_presets():
  for module in (thumos14_i3d, activitynet12_i3d, synthetic, synthetic_small):
    for preset in (None, *config_lib.PRESETS):
      c, base = module.get_config(preset), module.get_config()
      if c.data.format == "activitynet":
        for x in (c, base):
          x.data.annotation_path, x.data.features_dir = "gt.json", "features"
      config_checks.validate(c)
      if preset in (None, "jaxseg"):
        assert c.to_dict() == base.to_dict() and c.inference.rules == "auto"
      elif preset == "paper":
        for key, value in presets.PAPER_PRESET:
          assert c[key.split(".")[0]][key.split(".")[1]] == value, key
        # Only the listed fields move: the loss readings the print needs to train
        # stay at jaxseg's values, the labels at the dataset's.
        diff = {k for k, v in config_lib.flatten(c.to_dict()).items()
                if config_lib.flatten(base.to_dict())[k] != v}
        assert diff <= {k for k, _ in presets.PAPER_PRESET}
        assert (c.loss.classification_normalization, c.loss.segment_normalization,
                c.loss.topk_count, c.loss.propagation_similarity,
                c.loss.propagation_normalization,
                c.loss.propagation_grad_through_similarity) == (
                    "labels", "instances", "instances", "cosine", "pairs", False)
      else:
        for key, value in presets.PAPER_AS_PRINTED:
          assert c[key.split(".")[0]][key.split(".")[1]] == value, key
        assert c.inference.rules == "printed" and c.loss.gamma == 0.02
  with pytest.raises(config_lib.ConfigError, match="unknown preset 'papr'"):
    thumos14_i3d.get_config("papr")


def test_auto_needs_a_validation_split():
  c = make_config(**{"train.validation_fraction": 0.0})
  with pytest.raises(config_lib.ConfigError, match="config.inference.rules: 'auto'"):
    config_checks.validate(c)
  c.inference.rules = "jaxseg"
  config_checks.validate(c)


def test_an_older_run_reads_as_its_own_fields():
  c = config_lib.base_config().to_dict()
  del c["inference"]["rules"], c["inference"]["rule_candidates"]
  old = config_lib.with_added_fields(c)
  assert old["inference"]["rules"] == "jaxseg"


# ------------------------------------------------------- auto, end to end


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """One finished run of configs/test.py under inference.rules = "auto"."""
  root = tmp_path_factory.mktemp("auto")
  c = make_config(root / "data")
  c.train.num_steps = 8
  workdir = str(root / "run")
  out = train.train_and_evaluate(c, workdir)
  return {"config": c, "workdir": workdir, "out": out, "root": root}


def _loaded(run, which="final"):
  return workdir_lib.load_run(run["config"], run["workdir"], which=which)


@pytest.mark.slow
def test_auto_chooses_the_best_candidate_on_validation(run):
  loaded = _loaded(run)
  rules, res, scores = evaluate.choose_rules(run["config"], loaded.model, loaded.state.params,
                                             loaded.data.validation)
  assert list(scores) == list(config_lib.PRESETS)
  # Each candidate's score is its own evaluation, and the chosen one the best
  # mean mAP over thresholds (the earlier candidate on ties).
  best, best_score = None, -1.0
  for name, r in rules_lib.candidates(run["config"].inference).items():
    own = evaluate.evaluate_params(run["config"], loaded.model, loaded.state.params,
                                   loaded.data.validation, rules=r)["summary"]
    assert own == pytest.approx(scores[name])
    mean = float(np.mean([v for k, v in own.items() if k.startswith("mAP@")]))
    if mean > best_score:
      best, best_score = name, mean
  assert rules.name == best and res["summary"] == pytest.approx(scores[best])


@pytest.mark.slow
def test_the_choice_is_in_every_result_file(run):
  work = run["workdir"]
  with open(os.path.join(work, "rules.json")) as f:
    choice = json.load(f)
  with open(os.path.join(work, "results.json")) as f:
    results = json.load(f)
  assert results["rules"] == choice == run["out"]["rules"]
  for which in ("final", "selected"):
    rec = choice[which]
    assert rec["rules"] == "auto" and rec["split"] == "validation"
    assert set(rec["candidates"]) == set(config_lib.PRESETS)
    assert rec["chosen"] in rec["candidates"]
  with open(os.path.join(work, "detections.json")) as f:
    assert json.load(f)["provenance"]["rules"] == choice["final"]["chosen"]
  with open(os.path.join(work, "results.md")) as f:
    md = f.read()
  assert "## Inference rules" in md and f"| {choice['final']['chosen']}" in md
  with open(os.path.join(work, "results.csv")) as f:
    assert f.readline().split(",")[2] == "rules"
  from jaxseg import report  # pylint: disable=g-import-not-at-top
  for which in ("final", "selected"):
    assert report.run_table([work], which)["rules"].tolist() == [choice[which]["chosen"]]


@pytest.mark.slow
def test_the_test_split_is_scored_under_the_chosen_rules(run):
  loaded = _loaded(run)
  chosen = rules_lib.read_choice(run["config"], run["workdir"], "final", loaded.step)
  res = evaluate.evaluate_params(run["config"], loaded.model, loaded.state.params,
                                 loaded.data.test, rules=chosen)
  got = run["out"]["final"]
  for key, value in res["summary"].items():
    assert got[key] == pytest.approx(value), key
  # The independent scorer on the written detections agrees.
  with open(os.path.join(run["workdir"], "detections.json")) as f:
    pred = json.load(f)
  table = metrics.detection_map(loaded.data.test.ground_truth(), pred,
                                tuple(run["config"].eval.tiou_thresholds),
                                protocol=run["config"].eval.protocol,
                                class_names=loaded.data.test.class_names,
                                feature_rate=run["config"].data.feature_rate)
  assert 100 * table.loc["mean", 0.5] == pytest.approx(got["mAP@0.5"], abs=1e-6)


@pytest.mark.slow
def test_the_choice_never_reads_the_test_split(run, tmp_path, monkeypatch):
  work = str(tmp_path / "run")
  shutil.copytree(run["workdir"], work)
  os.remove(os.path.join(work, "rules.json"))
  forbid_test_split(monkeypatch)
  with pytest.raises(AssertionError, match="the test split was read"):
    evaluate.evaluate_workdir(run["config"], work)
  # The choice was made and written before the test split was touched: the same.
  with open(os.path.join(work, "rules.json")) as f:
    again = json.load(f)
  with open(os.path.join(run["workdir"], "rules.json")) as f:
    assert json.load(f) == again


@pytest.mark.slow
def test_eval_reproduces_the_choice(run, tmp_path):
  work = str(tmp_path / "run")
  shutil.copytree(run["workdir"], work)
  before = open(os.path.join(work, "rules.json")).read()
  out = evaluate.evaluate_workdir(run["config"], work)
  assert open(os.path.join(work, "rules.json")).read() == before
  assert out["final"] == pytest.approx(run["out"]["final"])


def _features(run, out_dir):
  """The test videos' features as a flat folder for predict."""
  os.makedirs(out_dir)
  for v in _loaded(run).data.test.videos[:4]:
    np.save(os.path.join(out_dir, f"{v.video_id}.npy"), v.features)
  return out_dir


def _dets(rows):
  return [(d["label"], round(d["score"], 4), tuple(round(x, 4) for x in d["segment"]))
          for d in rows]


@pytest.mark.slow
def test_predict_uses_the_choice_and_refuses_without_it(run, tmp_path):
  feats = _features(run, str(tmp_path / "feats"))
  got = predict.predict_folder(run["workdir"], feats, str(tmp_path / "pred"), which="final")
  with open(os.path.join(got["out_dir"], "detections.json")) as f:
    written = json.load(f)
  chosen = rules_lib.read_choice(run["config"], run["workdir"], "final", got["step"])
  assert written["provenance"]["rules"] == chosen.name
  # The same detections as the chosen rules give on those videos, and (where
  # the candidates differ) not those of another candidate.
  loaded = _loaded(run)
  ds = predict.read_folder(feats, loaded.data.test.class_names,
                           loaded.data.dataset.feature_dim,
                           feature_rate=run["config"].data.feature_rate)
  for name, r in rules_lib.candidates(run["config"].inference).items():
    other = inference.predict(
        evaluate.make_apply_fn(loaded.model), {"params": loaded.state.params},
        batching.eval_batches(ds, batch_size=4, buckets=run["config"].train.length_buckets),
        videos=ds, class_names=ds.class_names, rules=r,
        topk_ratio=run["config"].loss.topk_ratio)["results"]
    same = all(_dets(other[v]) == _dets(written["results"][v]) for v in other)
    assert same == (name == chosen.name or r.same_detections(chosen)), name
  work = str(tmp_path / "norules")
  shutil.copytree(run["workdir"], work)
  os.remove(os.path.join(work, "rules.json"))
  with pytest.raises(config_lib.ConfigError, match="rules.json: missing.*--mode eval"):
    predict.predict_folder(work, feats, str(tmp_path / "pred2"), which="final")
  assert not os.path.exists(tmp_path / "pred2")
  step = got["step"]
  for bad, match in (
      ({"final": {"chosen": "best", "step": step}}, "final.chosen: 'best'"),
      ({"final": {"chosen": ["paper"], "step": step}}, r"final.chosen: \['paper'\]"),
      ({"final": {"chosen": "paper"}}, "made for step None, the final checkpoint is step"),
      # A run trained further since its evaluation: the choice is for another step.
      ({"final": {"chosen": "paper", "step": step - 2}}, f"made for step {step - 2}, "
       f"the final checkpoint is step {step}"),
      ({"final": 5}, "field 'final': missing or not an object"), ([], "field 'final'")):
    with open(os.path.join(work, "rules.json"), "w") as f:
      json.dump(bad, f)
    with pytest.raises(config_lib.ConfigError, match=match):
      predict.predict_folder(work, feats, str(tmp_path / "pred2"), which="final")
  with open(os.path.join(work, "rules.json"), "w") as f:
    f.write("[" * 100000 + "]" * 100000)
  with pytest.raises(config_lib.ConfigError, match="rules.json: .*nested too deeply"):
    predict.predict_folder(work, feats, str(tmp_path / "pred2"), which="final")
  assert not os.path.exists(tmp_path / "pred2")


@pytest.mark.slow
def test_predict_validates_the_runs_config(run, tmp_path):
  feats = _features(run, str(tmp_path / "feats"))
  work = str(tmp_path / "bad")
  shutil.copytree(run["workdir"], work)
  path = os.path.join(work, "config.json")
  with open(path) as f:
    c = json.load(f)
  c["inference"]["nms_iou"] = -5
  with open(path, "w") as f:
    json.dump(c, f)
  cmd = [sys.executable, "-m", "jaxseg.main", "--mode", "predict", "--workdir", work,
         "--predict_features", feats, "--predict_out", str(tmp_path / "pred")]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "config.json" in lines[0] and "inference.nms_iou" in lines[0]
  assert "Traceback" not in proc.stderr and not os.path.exists(tmp_path / "pred")
  for bad in ({"train": 5}, [], [5], "abc"):
    with open(path, "w") as f:
      json.dump(bad, f)
    with pytest.raises(config_lib.ConfigError, match="config.json"):
      predict.run_config(work)
    # --mode eval and a training rerun read it through config_diff: an error
    # naming the file, or (a section of the wrong type) the fields that differ.
    try:
      diff = workdir_lib.config_diff(run["config"], work)
    except config_lib.ConfigError as e:
      assert "config.json" in str(e)
    else:
      assert diff and any(d.startswith("train.") for d in diff)
  for raw in (b"\xff\xfe{}", b"[" * 100000 + b"]" * 100000):
    with open(path, "wb") as f:
      f.write(raw)
    for read in (predict.run_config, lambda w: workdir_lib.config_diff(run["config"], w)):
      with pytest.raises(config_lib.ConfigError, match="config.json: (not UTF-8|.*nested)"):
        read(work)


@pytest.mark.slow
def test_the_thumos14_paper_preset_trains_on_activitynet_layout_data(tmp_path):
  """``configs/thumos14_i3d.py:paper`` end to end on a small dataset in the
  ActivityNet layout it reads (the synthetic generator writes that layout)."""
  from jaxseg.data import synthetic as synthetic_data  # pylint: disable=g-import-not-at-top
  gt = synthetic_data.generate_synthetic(str(tmp_path / "data"), num_classes=4, num_train=24,
                                         num_test=8, feature_dim=16, max_length=300)
  small = make_config()
  c = config_lib.with_overrides(
      thumos14_i3d.get_config("paper"),
      **{"data.annotation_path": gt, "data.features_dir": str(tmp_path / "data" / "features"),
         "data.feature_streams": (), "data.feature_dim": 16, "train.num_steps": 6,
         "train.batch_size": 4, "train.max_length": 128, "train.progress": False,
         "train.validation_fraction": 0.25, "train.length_buckets": (64, 128, 256),
         "train.eval_every": 6, "train.checkpoint_every": 6, "model.embed_dim": 16,
         "train.log_to": ()})
  assert small.model.localization_embedding != c.model.localization_embedding == "shared"
  out = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert out["rules"]["final"]["chosen"] == "paper"
  assert set(out["rules"]["final"]["candidates"]) == {"paper"}
  assert 0 <= out["final"]["mAP@0.1"] <= 100


@pytest.mark.parametrize("spec,reason", [
    ("configs/synthetic_small.py:nope", "unknown preset 'nope'; the presets are"),
    ("configs/test.py:paper", "get_config() takes 0 positional arguments")])
@pytest.mark.slow
def test_a_bad_preset_names_its_reason_on_one_line(spec, reason, tmp_path):
  proc = subprocess.run([sys.executable, "-m", "jaxseg.main", "--config", spec, "--workdir",
                         str(tmp_path / "w")], capture_output=True, text=True, cwd=REPO,
                        timeout=120)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: --config:") and reason in lines[0]
  assert not os.path.exists(tmp_path / "w")
