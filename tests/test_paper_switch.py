"""The paper as printed in one switch, Table 1 as the paper ran it, and
tuning that never reads the test split."""

import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd
import pytest

from configs import activitynet12_i3d
from configs import synthetic
from configs import test as test_config
from configs import thumos14_i3d
from jaxseg import ablation, losses, proposals
from jaxseg import rules as rules_lib
from jaxseg import config as config_lib
from jaxseg import presets
from jaxseg import config_checks
from jaxseg.data import batching
from tests.helpers import forbid_test_split


@pytest.fixture(scope="module", autouse=True)
def _cache(compilation_cache):
  """This module's runs share one persistent XLA compilation cache."""
  yield


# ------------------------------------------------------------- the switch
def test_paper_configs_set_every_printed_choice():
  for c in (thumos14_i3d.get_config("printed"), activitynet12_i3d.get_config("printed"),
            synthetic.get_config("printed")):
    if c.data.format == "activitynet":
      c.data.annotation_path, c.data.features_dir = "gt.json", "features"
    config_checks.validate(c)
    for key, value in presets.PAPER_AS_PRINTED:
      section, name = key.split(".")
      assert c[section][name] == value, key
    assert c.labels.mode == "two-segment"
    assert (c.loss.alpha, c.loss.beta, c.loss.gamma, c.loss.margin) == (0.1, 1e-4, 0.02, 4)
    assert c.inference.rules == "printed"
  assert thumos14_i3d.get_config("printed").data.feature_dim == 2048
  assert synthetic.get_config("printed").data.format == "synthetic"


def test_every_printed_choice_is_a_departure_of_the_defaults_or_says_why():
  # A field of PAPER_AS_PRINTED that equals the default documents a printed
  # choice jaxseg follows or the reading it keeps where 4.7 prints none (r = 2Q;
  # eq. 2-4 on C_cls only; the outer-inner contrast on the raw CAS plus s_a).
  base = config_lib.base_config()
  same = {k for k, v in presets.PAPER_AS_PRINTED
          if base[k.split(".")[0]][k.split(".")[1]] == v}
  assert same == {"loss.topk_mode", "loss.loc_classification_weight",
                  "inference.contrast_on", "inference.class_score"}


# ------------------------------------------------------- the new loss fields
def test_q_counts_instances_alike_for_every_label_mode():
  mask = jnp.ones((3, 12), bool)
  u = np.zeros((3, 12, 2), np.float32)
  u[0, [2, 8], 0] = 1  # one-segment: two instances of class 0
  u[1, 2:5, 0] = 1  # two-segment: the same instances, labeled with their span
  u[1, 7:10, 0] = 1
  u[2, 1:6, 0] = 1  # full labels
  u[2, 7:11, 0] = 1
  u[2, 7:11, 1] = 1  # and an instance of class 1 at the same place
  seg = losses.labeled_count(u, mask, jnp.array([2, 6, 10]), count="segments")
  inst = losses.labeled_count(u, mask, jnp.array([2, 6, 10]), count="instances")
  assert seg.tolist() == [2, 6, 10]
  assert inst.tolist() == [2, 2, 3]


def test_sphere_over_all_classes_adds_the_absent_ones():
  rng = np.random.default_rng(0)
  f = jnp.asarray(rng.random((2, 9, 5)), jnp.float32)
  cas = jnp.asarray(rng.normal(size=(2, 9, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
  mask = jnp.ones((2, 9), bool)
  y = jnp.array([[1.0, 0, 0], [1, 1, 1]])
  kw = dict(margin=4)
  present = losses.sphere_loss(f, cas, y, mask, w, classes="present", **kw)
  every = losses.sphere_loss(f, cas, y, mask, w, classes="all", **kw)
  both = losses.sphere_loss(f, cas, jnp.ones_like(y), mask, w, classes="present", **kw)
  np.testing.assert_allclose(every, both, rtol=1e-6)
  assert every > present


def test_propagation_features_picks_pre_dropout_f():
  rng = np.random.default_rng(1)
  out = {"features": jnp.asarray(rng.random((1, 7, 4)), jnp.float32),
         "clean_features": jnp.asarray(rng.random((1, 7, 4)), jnp.float32),
         "cas_cls": jnp.asarray(rng.normal(size=(1, 7, 3)), jnp.float32),
         "cas_loc": jnp.asarray(rng.normal(size=(1, 7, 3)), jnp.float32)}
  batch = {"mask": np.ones((1, 7), bool), "lengths": np.array([7]),
           "video_labels": np.eye(3, dtype=np.float32)[[0]],
           "segment_labels": np.zeros((1, 7, 3), np.float32), "num_labeled": np.zeros(1)}
  c = config_lib.base_config().loss
  c.use_sphere = False
  terms = {}
  for which in ("dropout", "clean"):
    c.propagation_features = which
    terms[which] = float(losses.total_loss(out, batch, **c)[1]["propagation"])
  kw = dict(method="fused", grad_through_similarity=False, similarity="cosine",
            normalization="pairs")
  want = losses.propagation_loss(out["clean_features"], out["cas_loc"], batch["mask"], **kw)
  np.testing.assert_allclose(terms["clean"], want, rtol=1e-6)
  assert terms["clean"] != terms["dropout"]


def test_without_the_keep_top_class_rule_a_video_may_get_no_detection():
  c = config_lib.base_config().inference
  cas = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
  s_a = np.array([-0.5, -0.1, -0.2])
  p_a = np.exp(s_a) / np.exp(s_a).sum()
  kw = dict(feature_rate=1.0, duration=20.0, cas_extent=cas[::-1].copy(), cas_cls=cas + 0.1)
  assert proposals.generate_proposals(cas, s_a, p_a, rules=rules_lib.from_config(c, "jaxseg"), **kw)
  c.keep_top_class = False
  assert proposals.generate_proposals(cas, s_a, p_a, rules=rules_lib.from_config(c, "jaxseg"), **kw) == []


def test_keep_labeled_subsampling_keeps_every_labeled_segment():
  rng = np.random.default_rng(0)
  labeled = np.zeros(1500, bool)
  labeled[rng.choice(1500, 40, replace=False)] = True
  for seed in range(5):
    idx = batching.sample_keeping_labeled(labeled, 750, np.random.default_rng(seed))
    assert idx.shape == (750,) and np.all(np.diff(idx) > 0)
    assert set(np.flatnonzero(labeled)) <= set(idx.tolist())
  many = np.ones(1500, bool)
  idx = batching.sample_keeping_labeled(many, 750, np.random.default_rng(0))
  assert idx.shape == (750,) and np.all(np.diff(idx) > 0)
  short = batching.sample_keeping_labeled(labeled[:100], 750, np.random.default_rng(0))
  assert short.tolist() == list(range(100))


# -------------------------------------------------------- Table 1 as printed
def _small(tmp_path):
  c = test_config.get_config()
  c.data.synthetic.output_dir = str(tmp_path / "data")
  c.train.num_steps = 6
  c.ablation.label_modes = ("one-segment", "two-segment")
  return c


@pytest.mark.slow
def test_non_psl_cells_never_see_segment_labels_and_fill_both_rows(tmp_path, monkeypatch):
  monkeypatch.setattr(ablation, "COMBINATIONS", ablation.COMBINATIONS[:2])
  c = _small(tmp_path)
  c.ablation.split = "validation"
  forbid_test_split(monkeypatch)  # the validation ablation is a tuning path
  df = ablation.run_ablation(c, str(tmp_path / "abl"), num_seeds=2)
  runs = sorted(os.listdir(tmp_path / "abl" / "runs"))
  assert runs == ["one-segment", "two-segment", "video-level"]
  assert os.listdir(tmp_path / "abl" / "runs" / "video-level") == ["CL"]
  cl = df[df.losses == "CL"]
  assert set(cl.trained_on) == {"video-level"} and set(cl.split) == {"validation"}
  one = cl[cl.label_mode == "one-segment"].drop(columns="label_mode").reset_index(drop=True)
  two = cl[cl.label_mode == "two-segment"].drop(columns="label_mode").reset_index(drop=True)
  pd.testing.assert_frame_equal(one, two)
  psl = df[df.losses == "CL+PSL"]
  assert set(psl.trained_on) == {"one-segment", "two-segment"}
  summary = pd.read_csv(tmp_path / "abl" / "ablation_summary.csv")
  assert {"label_mode", "losses", "seeds", "mAP@0.5_mean", "mAP@0.5_std"} <= set(summary)
  assert set(summary.seeds) == {2}
  md = (tmp_path / "abl" / "ablation.md").read_text()
  assert "Validation-split" in md and "shown in every row" in md


def test_label_informed_option_and_video_level_row(tmp_path, monkeypatch):
  base = test_config.get_config()
  base.ablation.non_psl_cells = "label_informed"
  cl = ablation.COMBINATIONS[0]
  assert ablation.trained_on(base, "two-segment", cl) == "two-segment"
  base.ablation.non_psl_cells = "video_level"
  assert ablation.trained_on(base, "two-segment", cl) == "video-level"
  assert ablation.trained_on(base, "full", ablation.COMBINATIONS[1]) == "full"
  assert ablation.trained_on(base, "video-level", ablation.COMBINATIONS[1]) == "video-level"
  c = ablation.run_config(base, "video-level", ablation.COMBINATIONS[1], 0)
  assert c.labels.mode == "video-level" and c.loss.topk_mode == "fixed"
  assert not c.loss.use_segment


def test_the_validation_ablation_needs_a_hold_out():
  c = test_config.get_config()
  c.ablation.split = "validation"
  c.train.validation_fraction = 0.0
  c.inference.rules = "jaxseg"  # "auto" needs the hold-out too (tests/test_rules.py)
  with pytest.raises(config_lib.ConfigError, match="ablation.split"):
    config_checks.validate(c)
  assert isinstance(c, ml_collections.ConfigDict)


@pytest.mark.slow
def test_robustness_quick_scores_on_validation_and_never_reads_test(tmp_path, monkeypatch):
  from benchmarks import robustness
  forbid_test_split(monkeypatch)
  df = robustness.main(["--quick", "--out", str(tmp_path), "--inference", "defaults,printed"])
  assert set(df.arm) == {"CL", "full"} and set(df.split) == {"validation"}
  assert set(df.inference) == {"defaults", "printed"} and len(df) == 4
  # Re-scoring the defaults reproduces the training run's own validation record.
  run = tmp_path / "runs" / "relu" / "CL" / "seed0"
  c = robustness.world_config(robustness.base_config(True), "relu", "CL", 0, {}, True)
  c.data.synthetic.output_dir = str(tmp_path / "data" / "relu")
  robustness.INFERENCE["again"] = {}
  try:
    again = robustness.rescore(c, str(run), ["again"])["again"]
  finally:
    del robustness.INFERENCE["again"]
  first = df[(df.arm == "CL") & (df.inference == "defaults")].iloc[0]
  assert abs(again["mAP@0.5"] - first["mAP@0.5"]) < 1e-3
  assert set(df.world) == {"relu"}
  assert (tmp_path / "robustness.md").read_text().count("relu") >= 2
  assert np.all((df["mAP@0.5"] >= 0) & (df["mAP@0.5"] <= 100))
  # A re-scored variant is cached with its definition and read back, not recomputed.
  cached = robustness.rescore(c, str(run), ["printed"])["printed"]
  printed = df[(df.arm == "CL") & (df.inference == "printed")].iloc[0]
  assert cached["mAP@0.1"] == pytest.approx(printed["mAP@0.1"], abs=1e-3)
  assert (run / "validation-printed.json").exists()
  # The CL run again through the parallel path (--jobs: a spawned worker process,
  # the world generated once first, here already there): the same numbers.
  par = robustness.run(str(tmp_path / "par"), worlds=["relu"], arms=["CL"], seeds=1,
                       quick=True, split="validation", overrides={},
                       data_root=str(tmp_path / "data"), jobs=2)
  assert len(par) == 1 and (tmp_path / "par" / "runs" / "relu" / "CL" / "seed0" /
                            "validation.json").exists()
  for metric in ("mAP@0.1", "mAP@0.5", "cls_mAP"):
    assert par.iloc[0][metric] == pytest.approx(first[metric], abs=1e-3)


@pytest.mark.slow
def test_the_paper_config_trains_end_to_end_on_synthetic_data(tmp_path, monkeypatch):
  from jaxseg import train
  c = synthetic.get_config("printed")
  small = test_config.get_config()
  c.data.synthetic = small.data.synthetic
  c.data.feature_dim = small.data.feature_dim
  c.data.synthetic.output_dir = str(tmp_path / "data")
  c.train = small.train
  c.train.num_steps = 4
  c.inference.batch_size = 4
  forbid_test_split(monkeypatch)
  train.train_and_evaluate(c, str(tmp_path / "run"), evaluate=False)
  res = ablation.validation_result(str(tmp_path / "run"))
  assert 0 <= res["final"]["mAP@0.5"] <= 100
  # The guard is live: the test evaluation of the same (finished) run trips it.
  with pytest.raises(AssertionError, match="test split was read"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
