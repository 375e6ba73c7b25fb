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


# ------------------------------------------------------------ world structure

# A tiny dataset of the tiny default world, generated before the structure
# knobs (class_evidence, num_cores, context_strength, foreign_action_*)
# existed: sha256 of its JSON files, and per video (T, sum of the features).
SMALL_DEFAULT_SHA256 = {
    "annotations.json": "9ce032fd1bab06f6e890d4be5e26a87c217374c3edc87c393c848f0eae551960",
    "generator.json": "01584b04c0249254ae09bf2dbc5c66bf8a284b9f544329a59857ef0c0eeecdcd",
}
SMALL_DEFAULT_FEATURES = {
    "video_test_0000001": (131, 437.06715379678644),
    "video_test_0000002": (354, 1420.6799473240972),
    "video_test_0000003": (901, 3710.1783618669724),
    "video_test_0000004": (141, 661.4757807450369),
    "video_validation_0000001": (215, 749.3598449667916),
    "video_validation_0000002": (111, 488.3441715645604),
    "video_validation_0000003": (167, 762.9558348762803),
    "video_validation_0000004": (662, 3025.1367356127594),
    "video_validation_0000005": (1328, 6417.4443036546),
}
STRUCTURE_DEFAULTS = dict(class_evidence="core", num_cores=2, context_strength=0.0,
                          foreign_action_rate=0.0, foreign_action_strength=3.0,
                          two_class_fraction=0.15, core_fraction=0.25)


def test_the_default_world_is_the_one_generated_before_the_structure_knobs(tmp_path):
  import hashlib  # pylint: disable=g-import-not-at-top
  _small(tmp_path / "a")
  _small(tmp_path / "b", **STRUCTURE_DEFAULTS)  # every new knob at its default, explicitly
  files = sorted(os.path.relpath(os.path.join(d, n), tmp_path / "a")
                 for d, _, names in os.walk(tmp_path / "a") for n in names)
  assert len(files) == 2 + len(SMALL_DEFAULT_FEATURES)
  for name in files:
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
  for name, digest in SMALL_DEFAULT_SHA256.items():
    assert hashlib.sha256((tmp_path / "a" / name).read_bytes()).hexdigest() == digest, name
  _, feats = _read_all(tmp_path / "a")
  for vid, (t_len, total) in SMALL_DEFAULT_FEATURES.items():
    assert feats[vid].shape == (t_len, 8)
    assert float(feats[vid].astype(np.float64).sum()) == pytest.approx(total, rel=1e-6)
  # A knob off its default is recorded (and so makes another dataset).
  _small(tmp_path / "b", context_strength=0.5)
  params = json.loads((tmp_path / "b" / "generator.json").read_text())["params"]
  assert params["context_strength"] == 0.5 and "class_evidence" not in params


# Worlds without noise, scene or distractors, with long instances: the
# pre-activation z = log(expm1(x)) is exactly bias + the signals, and its
# coefficients on the class and action directions are the generator's strengths.
STRUCT = dict(num_train=6, num_test=0, feature_dim=16, num_classes=4, noise=0.0,
              scene_strength=0.0, distractor_rate=0.0, instance_length_median=12.0,
              long_instance_prob=0.0, median_length=120.0)
P = synthetic.SyntheticParams()


def _span(a):
  first = int(math.floor(a["segment"][0] * RATE + 1e-6))
  last = int(math.ceil(a["segment"][1] * RATE - 1e-6)) - 1
  return first, last, int(a["label"][len("Class"):])


def _pre_activation(x):
  x = x.astype(np.float64)
  return x + np.log(-np.expm1(-x))  # the inverse of softplus


def _directions(tmp_path):
  """(4 + 1, D): the class directions and the action direction, read off the
  default (core) world of STRUCT: on an instance, a core segment minus a
  non-core one is (core - weak) p_c, and a non-core one is bias + action p_act
  + weak p_c."""
  _small(tmp_path / "reference", **STRUCT)
  db, feats = _read_all(tmp_path / "reference")
  dirs = {}
  for vid, v in db.items():
    z = _pre_activation(feats[vid])
    for a in v["annotations"]:
      first, last, k = _span(a)
      c0, c1 = a["core_segments"]
      rest = [t for t in range(first, last + 1) if not c0 <= t <= c1]
      if rest and k not in dirs:
        p_c = (z[c0] - z[rest[0]]) / (P.core_strength - P.weak_class_strength)
        p_act = (z[rest[0]] - P.bias - P.weak_class_strength * p_c) / P.action_strength
        dirs[k] = (p_c, p_act)
  assert sorted(dirs) == [0, 1, 2, 3]
  basis = np.stack([dirs[k][0] for k in range(4)] + [dirs[0][1]])
  np.testing.assert_allclose(np.linalg.norm(basis, axis=1), 1.0, atol=1e-4)
  for k in range(1, 4):
    np.testing.assert_allclose(dirs[k][1], dirs[0][1], atol=1e-4)
  return basis


def _coefficients(x, basis):
  """Per segment: the strengths along the 4 class directions (T, 4) and the action one (T,)."""
  coef = np.linalg.lstsq(basis.T, (_pre_activation(x) - P.bias).T, rcond=None)[0].T
  return coef[:, :4], coef[:, 4]


def _inside(v, t_len):
  mask = np.zeros(t_len, bool)
  for a in v["annotations"]:
    first, last, _ = _span(a)
    mask[first:last + 1] = True
  return mask


def test_spread_evidence_is_one_smooth_bump_over_the_instance(tmp_path):
  basis = _directions(tmp_path)
  _small(tmp_path / "spread", class_evidence="spread", **STRUCT)
  db, feats = _read_all(tmp_path / "spread")
  weak, core = P.weak_class_strength, P.core_strength
  long_ones = 0
  for vid, v in db.items():
    cls, act = _coefficients(feats[vid], basis)
    inside = _inside(v, len(cls))
    np.testing.assert_allclose(cls[~inside], 0.0, atol=1e-4)
    np.testing.assert_allclose(act[~inside], 0.0, atol=1e-4)
    for a in v["annotations"]:
      first, last, k = _span(a)
      ell = last - first + 1
      prof = cls[first:last + 1, k]
      np.testing.assert_allclose(act[first:last + 1], P.action_strength, atol=1e-4)
      np.testing.assert_allclose(np.delete(cls[first:last + 1], k, axis=1), 0.0, atol=1e-4)
      hann = np.sin(np.pi * (np.arange(ell) + 0.5) / ell) ** 2
      np.testing.assert_allclose(prof, weak + (core - weak) * hann / hann.max(), atol=1e-4)
      assert prof.max() == pytest.approx(core, abs=1e-4) and prof.min() >= weak - 1e-4
      # One maximum in the middle, reached smoothly: no plateau step at a core.
      mid = (ell - 1) // 2
      assert (np.diff(prof[:mid + 1]) >= -1e-4).all() and (np.diff(prof[ell // 2:]) <= 1e-4).all()
      assert a["core_segments"] == [first + mid, first + ell // 2]
      if ell >= 7:
        long_ones += 1
        assert np.abs(np.diff(prof)).max() < 0.5 * (core - weak)
        # Spread: half the instance is above the midpoint of weak and core (a core: 25 %).
        assert np.mean(prof > (weak + core) / 2) >= 0.4
  assert long_ones >= 5


def _runs(mask):
  """Maximal runs of True as (first, last)."""
  edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
  return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1))


def test_cores_world_has_separated_short_cores(tmp_path):
  basis = _directions(tmp_path)
  _small(tmp_path / "cores", class_evidence="cores", num_cores=3, **STRUCT)
  db, feats = _read_all(tmp_path / "cores")
  three = 0
  for vid, v in db.items():
    cls, _ = _coefficients(feats[vid], basis)
    for a in v["annotations"]:
      first, last, k = _span(a)
      ell = last - first + 1
      prof = cls[first:last + 1, k]
      at_core = np.abs(prof - P.core_strength) < 1e-4
      assert (at_core | (np.abs(prof - P.weak_class_strength) < 1e-4)).all()
      runs = [(first + int(s), first + int(e)) for s, e in _runs(at_core)]  # separated maxima
      assert [list(r) for r in runs] == a["core_segments_all"]
      assert a["core_segments"] == list(runs[0])
      core_len = max(1, round(P.core_fraction / 3 * ell))
      assert all(e - s + 1 == core_len for s, e in runs)
      assert len(runs) == min(3, (ell + 1) // (core_len + 1))  # as many as fit apart
      three += len(runs) == 3
  assert three >= 5


def test_context_puts_the_class_on_the_background_around_each_instance(tmp_path):
  basis = _directions(tmp_path)
  _small(tmp_path / "context", context_strength=0.75, **STRUCT)
  db, feats = _read_all(tmp_path / "context")
  _, ref = _read_all(tmp_path / "reference")
  near = far = 0
  for vid, v in db.items():
    cls, act = _coefficients(feats[vid], basis)
    t_len = len(cls)
    inside = _inside(v, t_len)
    expected = np.zeros((t_len, 4))
    for a in v["annotations"]:
      first, last, k = _span(a)
      ell = last - first + 1
      for t in range(t_len):
        if not inside[t] and (first - ell <= t < first or last < t <= last + ell):
          expected[t, k] = 0.75
    np.testing.assert_allclose(cls[~inside], expected[~inside], atol=1e-4)
    np.testing.assert_allclose(act[~inside], 0.0, atol=1e-4)
    np.testing.assert_array_equal(feats[vid][inside], ref[vid][inside])  # instances as before
    near += int((expected[~inside] > 0).any(axis=1).sum())
    far += int((expected[~inside] == 0).all(axis=1).sum())
  assert near >= 20 and far >= 20


def test_foreign_actions_are_action_like_runs_of_a_class_not_in_the_video(tmp_path):
  basis = _directions(tmp_path)
  _small(tmp_path / "foreign", foreign_action_rate=0.3, **STRUCT)
  db, feats = _read_all(tmp_path / "foreign")
  lengths, foreign_segments, background = {}, 0, 0
  for vid, v in db.items():
    cls, act = _coefficients(feats[vid], basis)
    inside = _inside(v, len(cls))
    labels = {_span(a)[2] for a in v["annotations"]}
    in_run = np.zeros(len(cls), bool)
    runs = sorted((r["segments"][0], r["segments"][1], int(r["label"][len("Class"):]))
                  for r in v["foreign_actions"])
    for (_, last, _), (first, _, _) in zip(runs, runs[1:]):
      assert first > last + 1  # one segment apart
    for first, last, c in runs:
      assert c not in labels and not inside[first:last + 1].any()
      np.testing.assert_allclose(act[first:last + 1], P.action_strength, atol=1e-4)
      np.testing.assert_allclose(cls[first:last + 1, c], 3.0, atol=1e-4)
      np.testing.assert_allclose(np.delete(cls[first:last + 1], c, axis=1), 0.0, atol=1e-4)
      lengths.setdefault(c, set()).add(last - first + 1)
      in_run[first:last + 1] = True
    # Read off the data: the action-like background is exactly the recorded runs.
    np.testing.assert_array_equal(~inside & (act > 1.0), in_run)
    np.testing.assert_allclose(cls[~inside & ~in_run], 0.0, atol=1e-4)
    foreign_segments += int(in_run.sum())
    background += int((~inside).sum())
  assert all(len(s) == 1 for s in lengths.values())  # a class's median length
  assert len(lengths) >= 2 and 0.1 <= foreign_segments / background <= 0.5


def test_structure_worlds_share_the_layout_and_noise(tmp_path):
  """The new knobs draw from a second stream: a world's layout, noise, scene
  and distractors are those of the default world of the same seed."""
  worlds = {"core": {}, "spread": {"class_evidence": "spread"},
            "cores": {"class_evidence": "cores", "num_cores": 3},
            "context": {"context_strength": 0.75}, "foreign": {"foreign_action_rate": 0.2}}
  got = {}
  for name, kw in worlds.items():
    _small(tmp_path / name, **kw)
    got[name] = _read_all(tmp_path / name)
  db0, f0 = got["core"]
  for name, (db, f) in got.items():
    for vid, v in db.items():
      assert v["duration"] == db0[vid]["duration"]
      assert [(a["segment"], a["label"]) for a in v["annotations"]] == [
          (a["segment"], a["label"]) for a in db0[vid]["annotations"]]
      same = ~_inside(v, len(f[vid]))  # background
      if name == "context":
        same = np.zeros(len(f[vid]), bool)
        for a in v["annotations"]:
          first, last, _ = _span(a)
          same[first:last + 1] = True  # the context band changes the background
      for r in v.get("foreign_actions", []):
        same[r["segments"][0]:r["segments"][1] + 1] = False
      np.testing.assert_array_equal(f[vid][same], f0[vid][same])
  assert any(got["foreign"][0][vid]["foreign_actions"] for vid in db0)


def test_co_occurring_world(tmp_path):
  _small(tmp_path / "co", two_class_fraction=0.6, num_train=30, num_test=10,
         feature_dim=4, median_length=60.0)
  db, _ = _read_all(tmp_path / "co")
  two = np.mean([len({a["label"] for a in v["annotations"]}) == 2 for v in db.values()])
  assert 0.45 <= two <= 0.75


def test_structure_knobs_validation(tmp_path):
  from jaxseg import config as config_lib  # pylint: disable=g-import-not-at-top
  for value in config_lib.CLASS_EVIDENCE:  # the generator takes exactly the config's choices
    synthetic.SyntheticParams(class_evidence=value).validate()
  for kw, name in (({"class_evidence": "cloud"}, "class_evidence"),
                   ({"num_cores": 0}, "num_cores"),
                   ({"context_strength": -1.0}, "context_strength"),
                   ({"foreign_action_rate": 1.0}, "foreign_action_rate"),
                   ({"foreign_action_strength": math.nan}, "foreign_action_strength"),
                   ({"num_classes": 1, "two_class_fraction": 0.0, "foreign_action_rate": 0.1},
                    "foreign_action_rate")):
    with pytest.raises(ValueError, match=name):
      _small(tmp_path / "x", **kw)
  assert not (tmp_path / "x").exists()


def test_structure_knobs_flow_from_the_config_to_the_generator(tmp_path):
  from jaxseg import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxseg import config_checks  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  s = c.data.synthetic
  s.num_train, s.num_test, s.feature_dim, s.num_classes = 3, 1, 8, 4
  s.output_dir = str(tmp_path / "data")
  new = {"class_evidence": "cores", "num_cores": 3, "core_fraction": 0.4,
         "context_strength": 0.5, "foreign_action_rate": 0.1, "foreign_action_strength": 2.0,
         "two_class_fraction": 0.5}
  for name, value in new.items():
    s[name] = value
  config_checks.check_fields(c)
  assert readers.synthetic_world(s) == new
  readers.load_dataset(c.data)
  params = json.loads((tmp_path / "data" / "generator.json").read_text())["params"]
  assert {k: params[k] for k in new} == new


def test_robustness_structure_worlds():
  from benchmarks import robustness  # pylint: disable=g-import-not-at-top
  base = robustness.base_config(False)
  expected = {"spread": {"class_evidence": "spread"},
              "cores": {"class_evidence": "cores", "num_cores": 3},
              "co-occurring": {"two_class_fraction": 0.6}}
  for world, over in expected.items():
    assert robustness.world_overrides(base, world) == over
  for world in ("spread", "spread-context", "core-context", "cores", "foreign-actions",
                "co-occurring"):
    c = robustness.world_config(base, world, "full", 0, {})
    world_knobs = readers.synthetic_world(c.data.synthetic)
    assert world_knobs == robustness.WORLDS[world]
    synthetic.SyntheticParams(**world_knobs).validate()
  assert robustness.WORLDS["spread-context"]["context_strength"] > P.weak_class_strength
  assert robustness.WORLDS["foreign-actions"]["foreign_action_rate"] > 0
