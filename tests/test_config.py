"""Bad configuration is rejected before anything loads or compiles, naming the field.

Three layers are checked: ``config.validate`` itself (one case per rule),
``train.train_and_evaluate`` / the other entry points (the error
comes before any data is read, any workdir is created or anything is
jitted), and the command line ``python -m jaxseg.main`` (exit status 2,
``error: config.<field>: ...`` on stderr, no workdir left behind).
"""

import json
import math
import os
import subprocess
import sys
import time

import jax
import pytest

from configs import synthetic as synthetic_config
from configs import test as test_config
from jaxseg import config as config_lib
from jaxseg import config_checks
from jaxseg import evaluate
from jaxseg import train
from jaxseg import workdir as workdir_lib
from jaxseg.data import readers
from tests.helpers import make_config, snapshot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rejects(c, field, *, num_devices=1):
  """Asserts validate() raises ConfigError whose message starts with config.<field>."""
  with pytest.raises(config_lib.ConfigError) as info:
    config_checks.validate(c, num_devices=num_devices)
  msg = str(info.value)
  assert msg.startswith(f"config.{field}:"), msg
  return msg


# ------------------------------------------------------------------ validate()


def test_shipped_configs_are_valid():
  # The positive control: every rule below must leave a correct config alone.
  for c in (config_lib.base_config(), test_config.get_config(),
            synthetic_config.get_config()):
    config_checks.validate(c)


# (override, the field the message must name). One row per rule of validate().
BAD = [
    # Negative loss weights.
    ({"loss.alpha": -0.1}, "loss.alpha"),
    ({"loss.beta": -1e-4}, "loss.beta"),
    ({"loss.gamma": -0.02}, "loss.gamma"),
    ({"loss.alpha": math.nan}, "loss.alpha"),
    # Unknown propagation method.
    ({"loss.propagation_method": "sparse"}, "loss.propagation_method"),
    ({"loss.propagation_method": "Dense"}, "loss.propagation_method"),
    # Unknown compute dtype and device-data mode.
    ({"model.compute_dtype": "float16"}, "model.compute_dtype"),
    ({"model.dropout_rng": "philox"}, "model.dropout_rng"),
    ({"model.localization_embedding": "own"}, "model.localization_embedding"),
    # The synthetic world's knobs: a NaN or negative strength, noise, correlation >= 1.
    ({"data.synthetic.core_strength": math.nan}, "data.synthetic.core_strength"),
    ({"data.synthetic.scene_strength": -1.0}, "data.synthetic.scene_strength"),
    ({"data.synthetic.distractor_class_strength": math.inf},
     "data.synthetic.distractor_class_strength"),
    ({"data.synthetic.noise": math.nan}, "data.synthetic.noise"),
    ({"data.synthetic.noise_ar": 1.0}, "data.synthetic.noise_ar"),
    ({"data.synthetic.coverage_mean": 1.0}, "data.synthetic.coverage_mean"),
    ({"data.synthetic.instance_length_median": 0.0}, "data.synthetic.instance_length_median"),
    # The world's structure: evidence layout, cores, context, foreign actions, co-occurrence.
    ({"data.synthetic.class_evidence": "cloud"}, "data.synthetic.class_evidence"),
    ({"data.synthetic.core_fraction": 0.0}, "data.synthetic.core_fraction"),
    ({"data.synthetic.core_fraction": 1.5}, "data.synthetic.core_fraction"),
    ({"data.synthetic.num_cores": 0}, "data.synthetic.num_cores"),
    ({"data.synthetic.context_strength": -0.5}, "data.synthetic.context_strength"),
    ({"data.synthetic.context_strength": math.nan}, "data.synthetic.context_strength"),
    ({"data.synthetic.foreign_action_rate": 1.0}, "data.synthetic.foreign_action_rate"),
    ({"data.synthetic.foreign_action_rate": -0.1}, "data.synthetic.foreign_action_rate"),
    ({"data.synthetic.num_classes": 1, "data.synthetic.two_class_fraction": 0.0,
      "data.synthetic.foreign_action_rate": 0.1}, "data.synthetic.foreign_action_rate"),
    ({"data.synthetic.foreign_action_strength": math.inf},
     "data.synthetic.foreign_action_strength"),
    ({"data.synthetic.two_class_fraction": 1.5}, "data.synthetic.two_class_fraction"),
    ({"data.synthetic.num_classes": 1}, "data.synthetic.two_class_fraction"),
    ({"train.device_data": "gpu"}, "train.device_data"),
    # Margin below 1 (the non-integer margin has its own test).
    ({"loss.margin": 0}, "loss.margin"),
    ({"loss.margin": -2}, "loss.margin"),
    # Top-k ratio below 1.
    ({"loss.topk_ratio": 0.5}, "loss.topk_ratio"),
    ({"loss.topk_ratio": 0.0}, "loss.topk_ratio"),
    ({"loss.topk_ratio": math.nan}, "loss.topk_ratio"),
    # Thresholds out of range.
    ({"inference.cas_thresholds": (0.1, 1.5)}, "inference.cas_thresholds"),
    ({"inference.cas_thresholds": (-0.1, 0.5)}, "inference.cas_thresholds"),
    ({"inference.cas_thresholds": ()}, "inference.cas_thresholds"),
    ({"inference.nms_iou": 1.2}, "inference.nms_iou"),
    ({"inference.nms_iou": -0.1}, "inference.nms_iou"),
    ({"eval.tiou_thresholds": (0.0, 0.5)}, "eval.tiou_thresholds"),
    ({"eval.tiou_thresholds": (0.5, 1.01)}, "eval.tiou_thresholds"),
    ({"eval.tiou_thresholds": ()}, "eval.tiou_thresholds"),
    ({"inference.class_top_ratio": 1.5}, "inference.class_top_ratio"),
    ({"eval.averages": (("avg", 0.7, 0.1),)}, "eval.averages"),
    # Unknown modes and names.
    ({"labels.mode": "three-segment"}, "labels.mode"),
    ({"labels.mode": "points"}, "labels.points_csv"),
    ({"labels.mode": "points", "labels.points_csv": "p.csv"}, "labels.fps_json"),
    ({"data.format": "hdf5"}, "data.format"),
    ({"data.format": "activitynet"}, "data.annotation_path"),
    ({"data.format": "activitynet", "data.annotation_path": "gt.json"}, "data.features_dir"),
    ({"data.format": "wtalc"}, "data.wtalc_dir"),
    ({"data.feature_rate": 0.0}, "data.feature_rate"),
    ({"loss.topk_mode": "all"}, "loss.topk_mode"),
    ({"loss.classification_normalization": "videos"}, "loss.classification_normalization"),
    ({"loss.loc_classification_weight": -1.0}, "loss.loc_classification_weight"),
    ({"loss.loc_classification_topk_ratio": 0.5}, "loss.loc_classification_topk_ratio"),
    ({"inference.contrast_loc_weight": 1.5}, "inference.contrast_loc_weight"),
    ({"loss.propagation_similarity": "l2"}, "loss.propagation_similarity"),
    ({"loss.propagation_normalization": "mean"}, "loss.propagation_normalization"),
    ({"loss.use_classification": False, "loss.use_segment": False,
      "loss.use_sphere": False, "loss.use_propagation": False}, "loss"),
    ({"eval.protocol": "thumos"}, "eval.protocol"),
    ({"inference.score_source": "max"}, "inference.score_source"),
    ({"ablation.label_modes": ("one-segment", "ten-segment")}, "ablation.label_modes"),
    ({"ablation.num_seeds": 0}, "ablation.num_seeds"),
    # Model, training and inference sizes.
    ({"model.dropout_rate": 1.0}, "model.dropout_rate"),
    ({"model.dropout_rate": -0.1}, "model.dropout_rate"),
    ({"model.embed_dim": 0}, "model.embed_dim"),
    ({"train.batch_size": 0}, "train.batch_size"),
    ({"parallel.num_devices": 0}, "parallel.num_devices"),
    ({"train.num_steps": 0}, "train.num_steps"),
    ({"train.learning_rate": 0.0}, "train.learning_rate"),
    ({"train.learning_rate": -1e-3}, "train.learning_rate"),
    ({"train.weight_decay": -5e-4}, "train.weight_decay"),
    ({"train.schedule": "linear"}, "train.schedule"),
    ({"train.max_length": 0}, "train.max_length"),
    ({"train.crop_mode": "center"}, "train.crop_mode"),
    ({"train.length_buckets": ()}, "train.length_buckets"),
    ({"train.length_buckets": (64, 0)}, "train.length_buckets"),
    ({"train.log_every": 0}, "train.log_every"),
    ({"train.eval_every": 0}, "train.eval_every"),
    ({"train.checkpoint_every": 0}, "train.checkpoint_every"),
    ({"train.keep_checkpoints": 0}, "train.keep_checkpoints"),
    ({"train.validation_fraction": 1.0}, "train.validation_fraction"),
    ({"inference.batch_size": 0}, "inference.batch_size"),
    ({"inference.outer_scale": -0.25}, "inference.outer_scale"),
    ({"inference.max_proposals_per_video": 0}, "inference.max_proposals_per_video"),
]


@pytest.mark.parametrize("overrides,field", BAD,
                         ids=[f"{f}={list(o.values())[-1]!r}" for o, f in BAD])
def test_validate_rejects_naming_the_field(overrides, field):
  _rejects(make_config(**overrides), field)


def test_non_integer_margin_is_rejected():
  # ConfigDict keeps margin an int, so a float only arrives by replacing the
  # field (or from a config file that declares it as a float).
  c = make_config()
  del c.loss["margin"]
  c.loss.margin = 2.5
  msg = _rejects(c, "loss.margin")
  assert "integer" in msg and "2.5" in msg
  del c.loss["margin"]
  c.loss.margin = 2.0  # an integral float is a valid margin
  config_checks.validate(c)


def test_synthetic_world_fields_of_another_type_are_rejected():
  # As the margin: a wrong type only arrives by replacing the field.
  for field, value in (("class_evidence", 1), ("num_cores", 1.5), ("context_strength", "0.5")):
    c = make_config()
    del c.data.synthetic[field]
    c.data.synthetic[field] = value
    _rejects(c, f"data.synthetic.{field}")
  c = make_config()
  del c.data.synthetic["num_cores"]
  c.data.synthetic.num_cores = 3.0  # an integral float is a valid count
  config_checks.check_fields(c)


def test_batch_size_must_divide_the_device_count():
  c = make_config(**{"train.batch_size": 4})
  msg = _rejects(c, "train.batch_size", num_devices=3)
  assert "not divisible" in msg and "(3)" in msg
  config_checks.validate(c, num_devices=1)
  config_checks.validate(c, num_devices=2)
  config_checks.validate(c, num_devices=4)
  config_checks.validate(make_config(**{"train.batch_size": 6}), num_devices=3)
  _rejects(make_config(**{"train.batch_size": 6}), "train.batch_size", num_devices=4)


@pytest.mark.parametrize("overrides", [
    {"loss.alpha": 0.0, "loss.beta": 0.0, "loss.gamma": 0.0},
    {"loss.margin": 1},
    {"loss.topk_ratio": 1.0},
    {"inference.cas_thresholds": (0.0, 1.0)},
    {"inference.nms_iou": 0.0},
    {"inference.nms_iou": 1.0},
    {"eval.tiou_thresholds": (1.0,)},
    {"inference.class_top_ratio": 0.0},
    {"model.dropout_rate": 0.0},
    {"train.validation_fraction": 0.0, "inference.rules": "jaxseg"},
    {"parallel.num_devices": 1},
], ids=lambda o: ",".join(f"{k}={v!r}" for k, v in o.items()))
def test_boundary_values_are_accepted(overrides):
  # The documented ranges are inclusive where they say so: the rules are not
  # stricter than the docs.
  config_checks.validate(make_config(**overrides))


def test_the_first_bad_field_is_named():
  c = make_config(**{"loss.alpha": -1.0, "inference.nms_iou": 2.0})
  _rejects(c, "loss.alpha")
  c.loss.alpha = 0.1
  _rejects(c, "inference.nms_iou")


# ------------------------------------- entry points: nothing loads or compiles


@pytest.fixture
def no_work(monkeypatch):
  """Makes compiling, loading data and claiming a workdir fail loudly."""
  def forbidden(what):
    def fail(*args, **kwargs):
      raise AssertionError(f"{what} was called before the config was validated")
    return fail
  monkeypatch.setattr(jax, "jit", forbidden("jax.jit"))
  monkeypatch.setattr(readers, "load_dataset", forbidden("readers.load_dataset"))
  monkeypatch.setattr(workdir_lib, "claim_workdir", forbidden("workdir.claim_workdir"))


ENTRY_CASES = [
    ({"loss.gamma": -1.0}, "loss.gamma"),
    ({"loss.propagation_method": "sparse"}, "loss.propagation_method"),
    ({"loss.topk_ratio": 0.5}, "loss.topk_ratio"),
    ({"eval.tiou_thresholds": (0.5, 1.5)}, "eval.tiou_thresholds"),
    ({"labels.mode": "all-segments"}, "labels.mode"),
]


@pytest.mark.parametrize("overrides,field", ENTRY_CASES, ids=[f for _, f in ENTRY_CASES])
def test_train_rejects_before_loading_compiling_or_writing(overrides, field, tmp_path,
                                                           no_work):
  workdir = tmp_path / "run"
  t0 = time.perf_counter()
  with pytest.raises(config_lib.ConfigError, match=rf"^config\.{field}:"):
    train.train_and_evaluate(make_config(**overrides), str(workdir))
  assert time.perf_counter() - t0 < 5.0
  assert not workdir.exists()


def test_eval_and_data_modes_reject_before_loading(tmp_path, no_work):
  c = make_config(**{"loss.beta": -1.0})
  with pytest.raises(config_lib.ConfigError, match=r"^config\.loss\.beta:"):
    evaluate.evaluate_workdir(c, str(tmp_path / "eval"))
  with pytest.raises(config_lib.ConfigError, match=r"^config\.loss\.beta:"):
    workdir_lib.describe_data(c, str(tmp_path / "data"))
  assert not os.listdir(tmp_path)


# ----------------------------------------------------------- another config


def _dummy_run(workdir, config):
  """A workdir that holds a (fake) finished run of ``config``."""
  workdir_lib.claim_workdir(config, str(workdir))
  (workdir / "checkpoints" / "latest" / "8").mkdir(parents=True)
  (workdir / "checkpoints" / "latest" / "8" / "junk").write_text("not a checkpoint")
  (workdir / "metrics.jsonl").write_text(
      "".join(json.dumps({"step": s, "kind": "train", "total": 1.0}) + "\n"
              for s in (4, 8)))
  (workdir / "results.json").write_text('{"final": {"step": 8}}\n')


def test_workdir_of_another_config_is_refused_and_left_intact(tmp_path):
  workdir = tmp_path / "run"
  old = make_config()
  _dummy_run(workdir, old)
  before = snapshot(workdir)
  other = make_config(**{"loss.gamma": 0.5, "train.learning_rate": 3e-4})
  with pytest.raises(config_lib.ConfigError) as info:
    workdir_lib.claim_workdir(other, str(workdir))
  msg = str(info.value)
  assert "loss.gamma: 0.02 -> 0.5" in msg and "train.learning_rate" in msg
  assert "--overwrite" in msg
  assert snapshot(workdir) == before
  # The same config, or one differing only in rerun-free fields, is accepted.
  workdir_lib.claim_workdir(make_config(), str(workdir))
  workdir_lib.claim_workdir(make_config(**{"train.num_steps": 99, "train.progress": True}),
                      str(workdir))
  assert set(snapshot(workdir)) == set(before)


@pytest.mark.slow
def test_overwrite_replaces_the_old_run(tmp_path):
  workdir = tmp_path / "run"
  _dummy_run(workdir, make_config())
  other = make_config(**{"loss.gamma": 0.5, "train.num_steps": 2,
                     "data.synthetic.output_dir": str(tmp_path / "data")})
  train.train_and_evaluate(other, str(workdir), overwrite=True, evaluate=False)
  with open(workdir / "config.json") as f:
    assert json.load(f)["loss"]["gamma"] == 0.5
  # The fake checkpoint 8 is gone (restoring it would have failed), the log
  # holds only the new run and the old results were removed.
  assert sorted(os.listdir(workdir / "checkpoints" / "latest")) == ["2"]
  with open(workdir / "metrics.jsonl") as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps and max(steps) == 2
  assert not (workdir / "results.json").exists()


def test_unreadable_config_json_is_a_config_error(tmp_path):
  (tmp_path / "config.json").write_text('{"loss": {"alpha": 0.1')
  with pytest.raises(config_lib.ConfigError, match="config.json: malformed JSON at line 1"):
    workdir_lib.claim_workdir(make_config(), str(tmp_path))


# -------------------------------------------------------------- command line


def _cli(workdir, *args, env=None):
  cmd = [sys.executable, "-m", "jaxseg.main", "--config", "configs/test.py",
         "--workdir", str(workdir), *args]
  full_env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                        env=full_env)


@pytest.mark.parametrize("flag,field", [
    ("--config.loss.alpha=-0.5", "loss.alpha"),
    ("--config.loss.propagation_method=sparse", "loss.propagation_method"),
    ("--config.inference.nms_iou=1.5", "inference.nms_iou"),
])
@pytest.mark.slow
def test_cli_exits_2_naming_the_field_and_creates_no_workdir(tmp_path, flag, field):
  workdir = tmp_path / "run"
  proc = _cli(workdir, flag)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(f"error: config.{field}:")
  assert "Traceback" not in proc.stderr
  assert not workdir.exists()


@pytest.mark.slow
def test_cli_batch_size_not_dividing_the_devices(tmp_path):
  workdir = tmp_path / "run"
  proc = _cli(workdir, "--config.train.batch_size=4",
              env={"XLA_FLAGS": "--xla_force_host_platform_device_count=3"})
  assert proc.returncode == 2, proc.stderr
  assert "error: config.train.batch_size: 4 is not divisible by the number of devices (3)" \
      in proc.stderr
  assert not workdir.exists()


@pytest.mark.slow
def test_cli_non_integer_margin_is_a_flag_error(tmp_path):
  # ConfigDict types the field as int, so absl rejects the flag itself before
  # main() runs; jaxseg.main turns that into one error line and exit status 2.
  workdir = tmp_path / "run"
  proc = _cli(workdir, "--config.loss.margin=2.5")
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.startswith("error: ") and "config.loss.margin" in proc.stderr
  assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
  assert not workdir.exists()


@pytest.mark.slow
def test_cli_refuses_a_workdir_of_another_config(tmp_path):
  workdir = tmp_path / "run"
  _dummy_run(workdir, make_config())
  before = snapshot(workdir)
  proc = _cli(workdir, "--config.loss.gamma=0.5")
  assert proc.returncode == 2, proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {workdir} holds a run of another config")
  assert "loss.gamma: 0.02 -> 0.5" in last and "--overwrite" in last
  assert snapshot(workdir) == before


# ------------------------------------------------ gaps (library change needed)


@pytest.mark.parametrize("overrides,field", [
    ({"inference.contrast_on": "norm"}, "inference.contrast_on"),
    ({"inference.class_score": "q_a"}, "inference.class_score"),
    ({"inference.extent": "Localization"}, "inference.extent"),
    ({"inference.proposal_cas": "C_cls"}, "inference.proposal_cas"),
    ({"inference.outer_outside": "zero"}, "inference.outer_outside"),
])
def test_validate_rejects_unknown_inference_options(overrides, field):
  _rejects(make_config(**overrides), field)


def test_extent_from_localization_needs_a_trained_c_loc():
  c = make_config(**{"loss.use_segment": False, "loss.use_sphere": False,
                     "loss.use_propagation": False})
  msg = _rejects(c, "inference.extent")
  assert "'proposal'" in msg
  c.inference.extent = "proposal"
  config_checks.validate(c)
  c.inference.extent = "localization"
  c.loss.loc_classification_weight = 1.0  # eq. 2-4 on C_loc trains it
  config_checks.validate(c)


@pytest.mark.parametrize("overrides,field", [
    ({"train.learning_rate": math.inf}, "train.learning_rate"),
    ({"loss.alpha": math.inf}, "loss.alpha"),
])
def test_validate_rejects_infinite_values(overrides, field):
  _rejects(make_config(**overrides), field)


@pytest.mark.slow
def test_cli_ablate_rejects_before_creating_the_workdir(tmp_path):
  workdir = tmp_path / "run"
  proc = _cli(workdir, "--mode", "ablate", "--config.ablation.label_modes=('foo',)")
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: config.ablation.label_modes:")
  assert not workdir.exists()
