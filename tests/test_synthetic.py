"""The synthetic THUMOS14-shaped dataset: statistics, the core property, I/O."""

import json
import math
import os

import numpy as np
import pytest

from jaxseg.data import readers, synthetic
from jaxseg.data.video import DataError

RATE = 25.0 / 16.0


@pytest.fixture(scope="module")
def default_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("synthetic") / "data"
  path = synthetic.generate_synthetic(str(out))
  assert path == os.path.join(str(out), "annotations.json")
  return str(out)


@pytest.fixture(scope="module")
def default_parts(default_dir):
  """Per subset: features split into core / non-core instance / background
  segments, with the class of each instance segment (from the JSON)."""
  with open(os.path.join(default_dir, "annotations.json")) as f:
    db = json.load(f)["database"]
  out = {}
  for subset in ("validation", "test"):
    acc = {"core": [], "core_y": [], "nc": [], "nc_y": [], "bg": []}
    for vid, v in db.items():
      if v["subset"] != subset:
        continue
      x = np.load(os.path.join(default_dir, "features", vid + ".npy"))
      cls = np.full(len(x), -1)
      core = np.zeros(len(x), bool)
      for a in v["annotations"]:
        first = int(math.floor(a["segment"][0] * RATE + 1e-6))
        last = int(math.ceil(a["segment"][1] * RATE - 1e-6)) - 1
        cls[first:last + 1] = int(a["label"][len("Class"):])
        c0, c1 = a["core_segments"]
        assert first <= c0 <= c1 <= last
        core[c0:c1 + 1] = True
      acc["core"].append(x[core])
      acc["core_y"].append(cls[core])
      inst = (cls >= 0) & ~core
      acc["nc"].append(x[inst])
      acc["nc_y"].append(cls[inst])
      acc["bg"].append(x[cls < 0])
    out[subset] = {k: np.concatenate(v) for k, v in acc.items()}
  return out


def _auc(pos, neg):
  """P(score of a positive > score of a negative), ties count half (average
  ranks, Mann-Whitney)."""
  scores = np.concatenate([pos, neg])
  _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  avg_rank = np.cumsum(counts) - (counts - 1) / 2.0
  ranks = avg_rank[inverse]
  return (ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def test_default_statistics_look_like_thumos14(default_dir):
  ds = readers.read_activitynet(os.path.join(default_dir, "annotations.json"),
                                os.path.join(default_dir, "features"), feature_dim=64)
  assert ds.class_names == [f"Class{i:02d}" for i in range(20)]
  train, test = ds.subset("validation"), ds.subset("test")
  assert len(train.videos) == 200 and len(test.videos) == 200
  lengths = np.array([v.num_segments for v in ds.videos])
  assert 190 <= np.median(lengths) <= 300
  assert lengths.min() >= 15 and lengths.max() <= 2600 and lengths.max() >= 1200
  n_inst = np.array([len(v.instances) for v in ds.videos])
  assert 6 <= np.median(n_inst) <= 11
  assert n_inst.max() >= 60 and n_inst.min() >= 1  # heavy tail
  inst_len, coverage, two_class = [], [], []
  for v in ds.videos:
    spans = []
    for inst in v.instances:
      first = int(math.floor(inst.start * RATE + 1e-6))
      last = int(math.ceil(inst.end * RATE - 1e-6)) - 1
      assert 0 <= first <= last < v.num_segments
      spans.append((first, last))
      inst_len.append(last - first + 1)
    spans.sort()
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:]))  # no overlap
    coverage.append(sum(b - a + 1 for a, b in spans) / v.num_segments)
    two_class.append(len({i.label for i in v.instances}) == 2)
    assert len({i.label for i in v.instances}) <= 2
    assert v.duration * RATE >= v.num_segments
  inst_len = np.array(inst_len)
  assert 3.5 <= np.median(inst_len) <= 7
  assert inst_len.max() >= 50 and 0.005 <= np.mean(inst_len >= 25) <= 0.05
  assert 0.22 <= np.mean(coverage) <= 0.33
  assert 0.08 <= np.mean(two_class) <= 0.22
  assert {i.label for v in train.videos for i in v.instances} == set(range(20))
  x = np.concatenate([v.features for v in ds.videos])
  assert x.dtype == np.float32 and x.min() >= 0 and np.isfinite(x).all()
  assert 0.2 <= x.mean() <= 1.5


def test_classes_are_recognisable_only_in_the_cores(default_parts):
  """Nearest class centroid (of train cores) on test segments: cores are
  recognised, the rest of an instance is close to chance (1/20)."""
  tr, te = default_parts["validation"], default_parts["test"]
  mu = np.stack([tr["core"][tr["core_y"] == c].mean(0) for c in range(20)])

  def nearest(x):
    d = (x ** 2).sum(1)[:, None] - 2 * x @ mu.T + (mu ** 2).sum(1)[None]
    return d.argmin(1)

  core_acc = np.mean(nearest(te["core"]) == te["core_y"])
  nc_acc = np.mean(nearest(te["nc"]) == te["nc_y"])
  assert core_acc > 0.85
  assert nc_acc < 0.35
  # A class read-out ranks cores far above the rest of their instances, and the
  # rest of an instance only a little above background.
  w = mu - mu.mean(0)
  own = lambda x, y: (x @ w.T)[np.arange(len(x)), y]
  rng = np.random.default_rng(0)
  bg_y = rng.integers(20, size=len(te["bg"]))
  assert _auc(own(te["core"], te["core_y"]), own(te["nc"], te["nc_y"])) > 0.85
  assert _auc(own(te["nc"], te["nc_y"]), own(te["bg"], bg_y)) < 0.75


def test_whole_instances_share_a_class_agnostic_action_pattern(default_parts):
  tr, te = default_parts["validation"], default_parts["test"]
  w = tr["nc"].mean(0) - tr["bg"].mean(0)
  assert _auc(te["nc"] @ w, te["bg"] @ w) > 0.9
  assert _auc(te["core"] @ w, te["bg"] @ w) > 0.9


def test_auc_helper():
  assert _auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
  assert _auc(np.array([1.0]), np.array([2.0, 3.0])) == 0.0
  assert _auc(np.array([1.0, 4.0]), np.array([2.0, 3.0])) == 0.5
  assert _auc(np.array([2.0]), np.array([2.0, 1.0])) == 0.75


def _small(out, **kw):
  args = dict(num_train=5, num_test=4, feature_dim=8, num_classes=4)
  args.update(kw)
  return synthetic.generate_synthetic(str(out), **args)


def _read_all(out):
  with open(os.path.join(out, "annotations.json")) as f:
    db = json.load(f)["database"]
  feats = {vid: np.load(os.path.join(out, "features", vid + ".npy")) for vid in db}
  return db, feats


def test_deterministic_from_seed(tmp_path):
  _small(tmp_path / "a")
  _small(tmp_path / "b")
  _small(tmp_path / "c", seed=1)
  db_a, f_a = _read_all(tmp_path / "a")
  db_b, f_b = _read_all(tmp_path / "b")
  db_c, f_c = _read_all(tmp_path / "c")
  assert db_a == db_b and db_a != db_c
  for vid in f_a:
    np.testing.assert_array_equal(f_a[vid], f_b[vid])
  assert sorted(db_a) == [f"video_test_{i:07d}" for i in range(1, 5)] + [
      f"video_validation_{i:07d}" for i in range(1, 6)]


def test_a_video_does_not_depend_on_the_number_of_videos(tmp_path):
  _small(tmp_path / "a")
  _small(tmp_path / "b", num_train=2, num_test=7)
  db_a, f_a = _read_all(tmp_path / "a")
  db_b, f_b = _read_all(tmp_path / "b")
  for vid in ("video_validation_0000002", "video_test_0000004"):
    assert db_a[vid] == db_b[vid]
    np.testing.assert_array_equal(f_a[vid], f_b[vid])


def test_reuse_replace_and_refuse(tmp_path):
  out = tmp_path / "data"
  _small(out)
  marker = out / "features" / "video_test_0000001.npy"
  os.utime(marker, ns=(1, 1))
  _small(out)  # same parameters: reused, not rewritten
  assert os.stat(marker).st_mtime_ns == 1
  _small(out, feature_dim=5)  # other parameters: replaced
  assert np.load(marker).shape[1] == 5
  assert json.loads((out / "generator.json").read_text())["params"]["feature_dim"] == 5
  assert sorted(os.listdir(tmp_path)) == ["data"]  # no temporary folder left
  foreign = tmp_path / "mine"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("keep me")
  with pytest.raises(DataError, match="refusing to overwrite"):
    _small(foreign)
  assert (foreign / "notes.txt").read_text() == "keep me"


def test_a_crash_leaves_no_half_dataset(tmp_path, monkeypatch):
  calls = []

  def boom(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
      raise RuntimeError("disk full")
    return real(*args, **kwargs)

  real = synthetic.video_features
  monkeypatch.setattr(synthetic, "video_features", boom)
  with pytest.raises(RuntimeError, match="disk full"):
    _small(tmp_path / "data")
  assert os.listdir(tmp_path) == []


def test_knobs_and_validation(tmp_path):
  with pytest.raises(ValueError, match="unknown parameter"):
    _small(tmp_path / "x", core_strenght=3.0)
  with pytest.raises(ValueError, match="core_fraction"):
    _small(tmp_path / "x", core_fraction=0.0)
  # A NaN or negative signal strength or noise is refused, not turned into NaN features.
  for name, value in (("core_strength", math.nan), ("scene_strength", -0.5),
                      ("action_strength", math.inf), ("noise", math.nan)):
    with pytest.raises(ValueError, match=name):
      _small(tmp_path / "x", **{name: value})
  assert not (tmp_path / "x").exists()
  _small(tmp_path / "full_core", core_fraction=1.0)
  db, _ = _read_all(tmp_path / "full_core")
  for v in db.values():
    for a in v["annotations"]:
      first = int(math.floor(a["segment"][0] * RATE + 1e-6))
      last = int(math.ceil(a["segment"][1] * RATE - 1e-6)) - 1
      assert a["core_segments"] == [first, last]


def test_config_world_knobs_reach_the_generator():
  """Every world knob of ``config.data.synthetic`` has the generator's default, and
  only the ones that differ from it are passed (a default config regenerates the
  same dataset)."""
  from jaxseg import config as config_lib  # pylint: disable=g-import-not-at-top
  s = config_lib.base_config().data.synthetic
  defaults = synthetic.SyntheticParams()
  assert readers.synthetic_world(s) == {}
  knobs = set(s.keys()) - {"seed", "num_classes", "num_train", "num_test", "feature_dim",
                           "max_length", "output_dir"}
  for name in knobs:
    assert s[name] == getattr(defaults, name), name
  s.scene_strength = 2.5
  s.weak_class_strength = 0.0
  assert readers.synthetic_world(s) == {"scene_strength": 2.5, "weak_class_strength": 0.0}


def test_robustness_2048_world_keeps_the_per_feature_signal():
  from benchmarks import robustness  # pylint: disable=g-import-not-at-top
  base = robustness.base_config(False)
  assert robustness.world_overrides(base, "relu") == {"activation": "relu"}
  wide = robustness.world_overrides(base, "d2048")
  scale = math.sqrt(2048 / base.data.synthetic.feature_dim)
  for name in ("core_strength", "weak_class_strength", "action_strength",
               "distractor_action_strength", "distractor_class_strength", "scene_strength"):
    assert wide[name] == pytest.approx(getattr(synthetic.SyntheticParams(), name) * scale)
  c = robustness.world_config(base, "d2048", "full", 0, {})
  assert c.data.feature_dim == 2048 and c.data.synthetic.core_strength == wide["core_strength"]
  assert readers.synthetic_world(c.data.synthetic)["core_strength"] == wide["core_strength"]
