"""Segment-level labels against hand-built ground truth."""

import math
import os

import numpy as np
import pytest

from jaxseg.config import base_config
from jaxseg.data import labels as L
from jaxseg.data import readers
from jaxseg.data.video import DataError, Dataset, Instance, Video


def _video(vid, t, instances, rate=1.0, subset="validation"):
  return Video(vid, subset, np.zeros((t, 2), np.float32), rate, t / rate,
               [Instance(s, e, c) for s, e, c in instances])


@pytest.mark.parametrize("start,end,t,want", [
    (0.5, 2.5, 10, (0, 2, False)),  # overlaps segments 0, 1, 2
    (2.0, 4.0, 10, (2, 3, False)),  # end on a boundary: segment 4 not covered
    (3.2, 3.9, 10, (3, 3, False)),  # shorter than a segment, inside one
    (3.7, 4.4, 10, (4, 4, False)),  # shorter, straddles: the midpoint's segment
    (3.0, 3.0, 10, (3, 3, False)),  # zero length
    (8.5, 12.0, 10, (8, 9, True)),  # runs past the features: clipped
    (9.8, 10.3, 10, (9, 9, True)),  # short, midpoint past the end, starts inside
    (10.0, 12.0, 10, None),  # wholly past the end
    (10.5, 10.9, 10, None),
    (0.0, 10.0, 10, (0, 9, False)),  # exactly the whole video
])
def test_instance_segment_span_cases(start, end, t, want):
  assert L.instance_segment_span(start, end, 1.0, t) == want


def test_instance_segment_span_i3d_rate():
  r = 25.0 / 16.0
  # 0.64 s * 25/16 = 1.0 exactly (float error must not give segment 0).
  assert L.instance_segment_span(0.64, 3.2, r, 100) == (1, 4, False)
  # 1.0 s -> 1.5625, 1.5 s -> 2.34375: 0.78 segments long, midpoint 1.95.
  assert L.instance_segment_span(1.0, 1.5, r, 100) == (1, 1, False)


def test_instance_segment_span_matches_overlap_definition():
  """Random instances vs the definition written out segment by segment."""
  rng = np.random.default_rng(0)
  for _ in range(2000):
    rate = float(rng.choice([1.0, 25 / 16, 0.5, 3.0]))
    t = int(rng.integers(1, 30))
    s = float(rng.uniform(0, 35 / rate))
    e = s + float(rng.exponential(4 / rate))
    got = L.instance_segment_span(s, e, rate, t)
    if (e - s) * rate < 1.0:
      m = int(math.floor((s + e) / 2 * rate))
      if m < t:
        want = (m, m, False)
      elif math.floor(s * rate) < t:
        want = (t - 1, t - 1, True)
      else:
        want = None
    else:
      # Segments overlapping [s, e] with positive length (in float64 seconds).
      over = [k for k in range(t + 200)
              if min((k + 1) / rate, e) - max(k / rate, s) > 1e-9]
      inside = [k for k in over if k < t]
      want = (inside[0], inside[-1], over[-1] >= t) if inside else None
    assert got == want, (s, e, rate, t)


def _clipping_dataset():
  """Instances inside, clipped at and wholly past the end of the features."""
  return Dataset(["A", "B", "C"], [
      _video("v1", 20, [(1.0, 5.0, 0), (8.0, 8.5, 1), (12.0, 19.5, 2)]),
      _video("v2", 10, [(0.0, 3.0, 1), (7.5, 14.0, 0), (11.0, 13.0, 2)]),  # clipped, dropped
      _video("v3", 6, []),
  ])


def _spans(ds):
  out = []
  for v in ds.videos:
    for inst in v.instances:
      out.append((v.video_id, inst.label,
                  L.instance_segment_span(inst.start, inst.end, v.feature_rate,
                                          v.num_segments)))
  return out


def test_full_labels_equal_hand_built():
  sl = L.sample_segment_labels(_clipping_dataset(), "full", seed=3)
  want1 = np.zeros((20, 3), np.uint8)
  want1[1:5, 0] = 1
  want1[8, 1] = 1
  want1[12:20, 2] = 1
  want2 = np.zeros((10, 3), np.uint8)
  want2[0:3, 1] = 1
  want2[7:10, 0] = 1
  np.testing.assert_array_equal(sl.labels["v1"], want1)
  np.testing.assert_array_equal(sl.labels["v2"], want2)
  np.testing.assert_array_equal(sl.labels["v3"], np.zeros((6, 3), np.uint8))
  assert (sl.num_clipped, sl.num_dropped, sl.mode, sl.seed) == (1, 1, "full", 3)
  assert all(u.dtype == np.uint8 for u in sl.labels.values())


def test_video_level_labels_are_zero_but_counted():
  sl = L.sample_segment_labels(_clipping_dataset(), "video-level", seed=0)
  assert all(not u.any() for u in sl.labels.values())
  assert (sl.num_clipped, sl.num_dropped) == (1, 1)


@pytest.mark.parametrize("seed", range(5))
def test_one_segment_one_label_inside_each_instance(seed):
  ds = _clipping_dataset()
  sl = L.sample_segment_labels(ds, "one-segment", seed)
  for vid, cls, span in _spans(ds):
    u = sl.labels[vid][:, cls]
    if span is None:
      continue
    first, last, _ = span
    assert u[first:last + 1].sum() == 1
  total = sum(int(u.sum()) for u in sl.labels.values())
  assert total == 5  # one per instance not dropped, none elsewhere
  assert (sl.num_clipped, sl.num_dropped) == (1, 1)


@pytest.mark.parametrize("seed", range(5))
def test_two_segment_fills_between_two_draws(seed):
  ds = Dataset(["A", "B"], [
      _video("v", 40, [(1.0, 9.0, 0), (12.0, 12.4, 1), (20.0, 22.0, 0), (30.0, 39.0, 1)])])
  sl = L.sample_segment_labels(ds, "two-segment", seed)
  u = sl.labels["v"]
  for _, cls, (first, last, _) in _spans(ds):
    run = np.nonzero(u[first:last + 1, cls])[0]
    if last == first:
      assert len(run) == 1
    else:
      assert len(run) >= 2  # two distinct segments...
      np.testing.assert_array_equal(run, np.arange(run[0], run[-1] + 1))  # ...and between
  # Nothing outside the instances.
  assert u.sum() == sum(
      int(u[f:l + 1, c].sum()) for _, c, (f, l, _) in _spans(ds))


def test_one_segment_is_uniform_inside_the_instance():
  ds = Dataset(["A"], [_video(f"v{i}", 8, [(2.0, 6.0, 0)]) for i in range(2000)])
  sl = L.sample_segment_labels(ds, "one-segment", seed=0)
  counts = sum(u[:, 0].astype(np.int64) for u in sl.labels.values())
  np.testing.assert_array_equal(counts[[0, 1, 6, 7]], 0)
  # 2000 draws over 4 segments: each ~500 (sd ~19).
  assert np.all(np.abs(counts[2:6] - 500) < 100), counts


def test_sampling_is_deterministic_and_seeded():
  ds = Dataset(["A"], [_video(f"v{i}", 200, [(10.0, 190.0, 0)]) for i in range(4)])
  a = L.sample_segment_labels(ds, "one-segment", 7)
  b = L.sample_segment_labels(ds, "one-segment", 7)
  c = L.sample_segment_labels(ds, "one-segment", 8)
  for vid in a.labels:
    np.testing.assert_array_equal(a.labels[vid], b.labels[vid])
  assert any(not np.array_equal(a.labels[v], c.labels[v]) for v in a.labels)


def test_a_videos_labels_do_not_depend_on_the_other_videos():
  ds = _clipping_dataset()
  alone = L.sample_segment_labels(Dataset(ds.class_names, [ds.videos[0]]), "two-segment", 1)
  mixed = L.sample_segment_labels(
      Dataset(ds.class_names, [ds.videos[2], ds.videos[1], ds.videos[0]]), "two-segment", 1)
  np.testing.assert_array_equal(alone.labels["v1"], mixed.labels["v1"])


def test_unknown_mode():
  with pytest.raises(ValueError, match="label mode"):
    L.sample_segment_labels(_clipping_dataset(), "three-segment", 0)


def test_save_load_roundtrip(tmp_path):
  sl = L.sample_segment_labels(_clipping_dataset(), "two-segment", 5)
  path = str(tmp_path / "run" / "labels.npz")
  L.save_segment_labels(path, L.SegmentLabels({"old": np.ones((2, 3), np.uint8)}))
  L.save_segment_labels(path, sl)  # overwrites atomically
  assert os.listdir(tmp_path / "run") == ["labels.npz"]  # no temp file left
  back = L.load_segment_labels(path)
  assert set(back.labels) == set(sl.labels)
  for vid in sl.labels:
    np.testing.assert_array_equal(back.labels[vid], sl.labels[vid])
    assert back.labels[vid].dtype == np.uint8
  assert (back.num_clipped, back.num_dropped, back.mode, back.seed) == (1, 1, "two-segment", 5)


def test_load_errors_name_the_file(tmp_path):
  with pytest.raises(DataError, match=r"nope\.npz: segment-label file not found"):
    L.load_segment_labels(str(tmp_path / "nope.npz"))
  bad = tmp_path / "bad.npz"
  np.savez(bad, x=np.zeros(3))
  with pytest.raises(DataError, match=r"bad\.npz: not a segment-label file"):
    L.load_segment_labels(str(bad))


def test_labels_from_points():
  ds = _clipping_dataset()
  sl = L.labels_from_points(ds, {"v1": [(2.5, 1), (25.0, 0)], "v3": [(0.0, 2)]})
  want = np.zeros((20, 3), np.uint8)
  want[2, 1] = 1
  np.testing.assert_array_equal(sl.labels["v1"], want)
  assert sl.labels["v3"][0, 2] == 1 and sl.labels["v3"].sum() == 1
  assert not sl.labels["v2"].any()
  assert sl.num_dropped == 1 and sl.mode == "points"
  with pytest.raises(DataError, match="unknown video"):
    L.labels_from_points(ds, {"zz": [(1.0, 0)]})


def test_check_segment_labels():
  ds = _clipping_dataset()
  sl = L.sample_segment_labels(ds, "full", 0)
  L.check_segment_labels(ds, sl.labels)
  labels = dict(sl.labels)
  labels["v2"] = labels["v2"][:5]
  with pytest.raises(DataError, match=r"'v2'.*shape"):
    L.check_segment_labels(ds, labels)
  del labels["v2"]
  with pytest.raises(DataError, match=r"no labels for video 'v2'"):
    L.check_segment_labels(ds, labels)


def test_segment_labels_follow_the_label_config():
  c = base_config()
  c.labels.mode = "full"
  c.labels.seed = 2
  ds = _clipping_dataset()
  sl = readers.segment_labels(c.labels, ds, ds)
  assert sl.mode == "full" and sl.seed == 2 and sl.labels["v1"][1:5, 0].all()
