"""Readers on small files the tests write themselves, and every bad-input case."""

import json
import os
import warnings

import numpy as np
import pytest

from jaxseg.config import base_config
from jaxseg.data import points
from jaxseg.data import readers
from jaxseg.data import wtalc
from jaxseg.data.video import DataError

RATE = 25.0 / 16.0


def _feats(t, d, value):
  """(t, d) float32 with a recognisable content: value + 0.001 * segment."""
  return (value + 0.001 * np.arange(t)[:, None] + np.zeros((1, d))).astype(np.float32)


def _write_anet(tmp_path, database, *, streams=(), dims=None, lengths=None,
                skip=(), name="gt.json"):
  """Writes the JSON and one feature file per video (per stream)."""
  ann = tmp_path / name
  ann.write_text(json.dumps({"database": database}))
  fdir = tmp_path / "features"
  fdir.mkdir(exist_ok=True)
  for k, vid in enumerate(database):
    if vid in skip:
      continue
    t = (lengths or {}).get(vid, 10)
    if streams:
      for s_i, s in enumerate(streams):
        (fdir / s).mkdir(exist_ok=True)
        d = (dims or {}).get(s, 3)
        np.save(fdir / s / f"{vid}.npy", _feats(t, d, 10 * k + s_i))
    else:
      d = (dims or {}).get(vid, 4)
      np.save(fdir / f"{vid}.npy", _feats(t, d, 10 * k))
  return str(ann), str(fdir)


def _db():
  return {
      "vA": {"subset": "validation", "duration": 7.0,
             "annotations": [{"segment": ["1.5", "3.25"], "label": "Jump"},
                             {"segment": [4, 5.5], "label": "Bowl"}]},
      "vB": {"subset": "test",
             "annotations": [{"segment": [0.0, 2.0], "label": "Bowl"}]},
      "vC": {"subset": "validation", "duration": "6.4", "annotations": []},
  }


def test_activitynet_reads_instances_strings_and_durations(tmp_path):
  ann, fdir = _write_anet(tmp_path, _db(), lengths={"vA": 10, "vB": 8, "vC": 9})
  ds = readers.read_activitynet(ann, fdir, feature_dim=4)
  assert ds.class_names == ["Bowl", "Jump"]  # sorted unique labels
  assert [v.video_id for v in ds.videos] == ["vA", "vB", "vC"]
  a, b, c = ds.videos
  assert a.subset == "validation" and b.subset == "test"
  assert [(i.start, i.end, i.label) for i in a.instances] == [(1.5, 3.25, 1), (4.0, 5.5, 0)]
  assert a.duration == 7.0
  assert b.duration == pytest.approx(8 / RATE)  # no duration: T / rate
  assert c.duration == 6.4 and c.instances == []
  assert a.features.dtype == np.float32 and a.features.shape == (10, 4)
  np.testing.assert_allclose(b.features, _feats(8, 4, 10))
  assert ds.skipped_videos == []


def test_activitynet_given_class_names_fix_the_order(tmp_path):
  ann, fdir = _write_anet(tmp_path, _db())
  ds = readers.read_activitynet(ann, fdir, class_names=["Jump", "Bowl", "Dive"])
  assert ds.num_classes == 3
  assert [i.label for i in ds.videos[0].instances] == [0, 1]


def test_activitynet_concatenates_rgb_and_flow(tmp_path):
  ann, fdir = _write_anet(tmp_path, _db(), streams=("rgb", "flow"),
                          dims={"rgb": 3, "flow": 2}, lengths={"vB": 6})
  ds = readers.read_activitynet(ann, fdir, feature_streams=("rgb", "flow"), feature_dim=5)
  v = ds.videos[1]
  assert v.features.shape == (6, 5)
  np.testing.assert_allclose(v.features[:, :3], _feats(6, 3, 10))
  np.testing.assert_allclose(v.features[:, 3:], _feats(6, 2, 11))


def test_activitynet_stream_length_mismatch(tmp_path):
  ann, fdir = _write_anet(tmp_path, _db(), streams=("rgb", "flow"))
  np.save(os.path.join(fdir, "flow", "vB.npy"), np.ones((7, 3), np.float32))
  with pytest.raises(DataError, match=r"vB.*differ in length"):
    readers.read_activitynet(ann, fdir, feature_streams=("rgb", "flow"))


def test_split_files_define_subsets(tmp_path):
  ann, fdir = _write_anet(tmp_path, _db())
  train = tmp_path / "train.txt"
  train.write_text("# train ids\nvA\n\nvB\n")
  ds = readers.read_activitynet(ann, fdir, split_files={"validation": str(train)})
  subsets = {v.video_id: v.subset for v in ds.videos}
  # vB joins "validation" though the JSON says test; vC is not listed.
  assert subsets == {"vA": "validation", "vB": "validation", "vC": "validation-unlisted"}
  assert [v.video_id for v in ds.subset("validation").videos] == ["vA", "vB"]


def test_empty_split_file_is_an_error(tmp_path):
  ann, fdir = _write_anet(tmp_path, _db())
  empty = tmp_path / "empty.txt"
  empty.write_text("\n# nothing\n")
  with pytest.raises(DataError, match=r"empty\.txt.*empty"):
    readers.read_activitynet(ann, fdir, split_files={"validation": str(empty)})


def test_split_file_with_unknown_video(tmp_path):
  ann, fdir = _write_anet(tmp_path, _db())
  split = tmp_path / "s.txt"
  split.write_text("vA\nvZ\n")
  with pytest.raises(DataError, match=r"s\.txt.*'vZ'"):
    readers.read_activitynet(ann, fdir, split_files={"test": str(split)})


def test_missing_feature_file(tmp_path):
  ann, fdir = _write_anet(tmp_path, _db(), skip=("vB",))
  with pytest.raises(DataError) as e:
    readers.read_activitynet(ann, fdir)
  assert os.path.join(fdir, "vB.npy") in str(e.value) and "'vB'" in str(e.value)


def test_skip_bad_videos_skips_and_reports(tmp_path):
  ann, fdir = _write_anet(tmp_path, _db(), skip=("vB",))
  np.save(os.path.join(fdir, "vC.npy"), np.full((5, 4), np.nan, np.float32))
  with pytest.warns(UserWarning, match="skipped 2 bad video"):
    ds = readers.read_activitynet(ann, fdir, skip_bad_videos=True)
  assert [v.video_id for v in ds.videos] == ["vA"]
  skipped = ds.skipped_videos
  assert [s[0] for s in skipped] == ["vB", "vC"]
  assert "vB.npy" in skipped[0][1] and "non-finite" in skipped[1][1]
  # A real field: subsets and selections keep it.
  assert ds.subset("validation").skipped_videos == skipped
  assert ds.select(["vA"]).skipped_videos == skipped


def test_feature_dim_differs_between_videos(tmp_path):
  ann, fdir = _write_anet(tmp_path, _db(), dims={"vC": 5})
  with pytest.raises(DataError) as e:
    readers.read_activitynet(ann, fdir)
  msg = str(e.value)
  assert "vC.npy" in msg and "'vC'" in msg and "D=5" in msg and "D=4" in msg


def test_feature_dim_differs_from_config(tmp_path):
  ann, fdir = _write_anet(tmp_path, _db())
  with pytest.raises(DataError) as e:
    readers.read_activitynet(ann, fdir, feature_dim=2048)
  assert "vA.npy" in str(e.value) and "'vA'" in str(e.value) and "2048" in str(e.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features(tmp_path, bad):
  ann, fdir = _write_anet(tmp_path, _db())
  x = _feats(10, 4, 0)
  x[3, 2] = bad
  np.save(os.path.join(fdir, "vC.npy"), x)
  with pytest.raises(DataError, match=r"vC\.npy.*'vC'.*non-finite.*segment 3, dim 2"):
    readers.read_activitynet(ann, fdir)


@pytest.mark.parametrize("shape", [(0, 4), (4, 0), (6,), (2, 3, 4)])
def test_empty_or_misshapen_features(tmp_path, shape):
  ann, fdir = _write_anet(tmp_path, _db())
  np.save(os.path.join(fdir, "vA.npy"), np.zeros(shape, np.float32))
  with pytest.raises(DataError, match=r"vA\.npy.*'vA'.*(empty|2-D)"):
    readers.read_activitynet(ann, fdir)


def test_unreadable_feature_file(tmp_path):
  ann, fdir = _write_anet(tmp_path, _db())
  with open(os.path.join(fdir, "vA.npy"), "wb") as f:
    f.write(b"not a numpy file")
  with pytest.raises(DataError, match=r"vA\.npy.*'vA'.*cannot read"):
    readers.read_activitynet(ann, fdir)


def test_unknown_class(tmp_path):
  ann, fdir = _write_anet(tmp_path, _db())
  with pytest.raises(DataError) as e:
    readers.read_activitynet(ann, fdir, class_names=["Jump"])
  msg = str(e.value)
  assert "gt.json" in msg and "'vA'" in msg and "annotations[1].label" in msg and "'Bowl'" in msg


def test_malformed_json(tmp_path):
  ann, fdir = _write_anet(tmp_path, _db())
  with open(ann, "w") as f:
    f.write('{"database": {\n  "vA": {"subset": "test",}\n}}')
  with pytest.raises(DataError, match=r"gt\.json: malformed JSON at line 2 column"):
    readers.read_activitynet(ann, fdir)


@pytest.mark.parametrize("segment,field", [
    (["a", 2.0], r"annotations\[0\]\.segment\[0\]"),
    ([3.0, 2.0], r"annotations\[0\]\.segment: end 2\.0 < start 3\.0"),
    ([1.0], r'annotations\[0\]: field "segment"'),
    ([1.0, None], r"annotations\[0\]\.segment\[1\]"),
    ([1.0, "nan"], r"annotations\[0\]\.segment\[1\]: expected a finite"),
])
def test_bad_instance_bounds(tmp_path, segment, field):
  db = _db()
  db["vB"]["annotations"][0]["segment"] = segment
  ann, fdir = _write_anet(tmp_path, db)
  with pytest.raises(DataError, match=r"gt\.json: video 'vB': " + field):
    readers.read_activitynet(ann, fdir)


def test_missing_subset_field(tmp_path):
  db = _db()
  del db["vC"]["subset"]
  ann, fdir = _write_anet(tmp_path, db)
  with pytest.raises(DataError, match=r"gt\.json: video 'vC': field \"subset\""):
    readers.read_activitynet(ann, fdir)


# ------------------------------------------------------------------ W-TALC


def _obj(items):
  out = np.empty(len(items), dtype=object)
  for i, x in enumerate(items):
    out[i] = x
  return out


def _write_wtalc(tmp_path, *, features=None, labels=None):
  d = tmp_path / "wtalc"
  d.mkdir()
  names = [b"video_validation_1", b"video_test_2", b"video_test_3"]
  np.save(d / "videoname.npy", np.array(names))
  np.save(d / "subset.npy", np.array([b"validation", b"test", b"test"]))
  np.save(d / "classlist.npy", np.array([b"Diving", b"Archery"]))
  np.save(d / "duration.npy", np.array([[10.0], [8.0], [6.0]]))  # (N, 1) as some bundles
  np.save(d / "segments.npy", _obj([[[1.0, 2.5], [4.0, 6.0]], [["0.5", "1.5"]], []]),
          allow_pickle=True)
  np.save(d / "labels.npy",
          _obj(labels or [[b"Archery", b"Diving"], [b"Diving"], []]), allow_pickle=True)
  if features is None:
    features = [_feats(12, 6, 0), _feats(9, 6, 1), _feats(7, 6, 2)]
  np.save(d / "F.npy", _obj(features), allow_pickle=True)
  return str(d)


def test_wtalc_bundle(tmp_path):
  d = _write_wtalc(tmp_path)
  ds = wtalc.read_wtalc(d, "F.npy", feature_dim=6)
  assert ds.class_names == ["Diving", "Archery"]  # classlist.npy order
  assert [v.video_id for v in ds.videos] == ["video_validation_1", "video_test_2",
                                             "video_test_3"]
  assert [v.subset for v in ds.videos] == ["validation", "test", "test"]
  v0, v1, v2 = ds.videos
  assert [(i.start, i.end, i.label) for i in v0.instances] == [(1.0, 2.5, 1), (4.0, 6.0, 0)]
  assert [(i.start, i.end, i.label) for i in v1.instances] == [(0.5, 1.5, 0)]
  assert v2.instances == [] and v1.duration == 8.0
  np.testing.assert_allclose(v1.features, _feats(9, 6, 1))
  assert v0.features.dtype == np.float32


def test_wtalc_nan_names_file_and_video(tmp_path):
  bad = _feats(9, 6, 1)
  bad[0, 0] = np.nan
  d = _write_wtalc(tmp_path, features=[_feats(12, 6, 0), bad, _feats(7, 6, 2)])
  with pytest.raises(DataError, match=r"F\.npy: video 'video_test_2'.*non-finite"):
    wtalc.read_wtalc(d, "F.npy")


def test_wtalc_dim_mismatch(tmp_path):
  d = _write_wtalc(tmp_path, features=[_feats(12, 6, 0), _feats(9, 5, 1), _feats(7, 6, 2)])
  with pytest.raises(DataError, match=r"F\.npy: video 'video_test_2'.*D=5"):
    wtalc.read_wtalc(d, "F.npy")


def test_wtalc_unknown_label(tmp_path):
  d = _write_wtalc(tmp_path, labels=[[b"Archery", b"Golf"], [b"Diving"], []])
  with pytest.raises(DataError, match=r"labels\.npy: video 'video_validation_1': "
                     r"labels\[1\]: unknown class 'Golf'"):
    wtalc.read_wtalc(d, "F.npy")


def test_wtalc_missing_array(tmp_path):
  d = _write_wtalc(tmp_path)
  os.remove(os.path.join(d, "duration.npy"))
  with pytest.raises(DataError, match=r"duration\.npy: W-TALC bundle file not found"):
    wtalc.read_wtalc(d, "F.npy")


# ------------------------------------------------------------------ points


def _points_setup(tmp_path, rows, fps=None):
  ann, fdir = _write_anet(tmp_path, _db(), lengths={"vA": 10, "vB": 8, "vC": 9})
  ds = readers.read_activitynet(ann, fdir)  # classes ["Bowl", "Jump"]
  csv_path = tmp_path / "points.csv"
  csv_path.write_text("class,class_index,start_frame,stop_frame,video_id,point\n" +
                      "".join(r + "\n" for r in rows))
  fps_path = tmp_path / "fps.json"
  fps_path.write_text(json.dumps(fps if fps is not None else {"vA": 30, "vB": 25.0}))
  return ds, str(csv_path), str(fps_path)


def test_point_labels(tmp_path):
  ds, csv_path, fps_path = _points_setup(tmp_path, [
      "Jump,1,40,100,vA,90",  # 90 / 30 = 3.0 s -> floor(3.0 * 25/16) = 4
      "Bowl,0,100,170,vA,130",  # 4.333 s -> 6.77 -> 6
      "Bowl,0,0,60,vB,16",  # 0.64 s -> exactly 1.0 -> segment 1
      "Bowl,0,0,600,vB,400",  # 16 s -> segment 25 >= T=8: dropped
  ])
  with pytest.warns(UserWarning, match="1 point"):
    labels = points.read_point_labels(csv_path, fps_path, ds)
  assert set(labels) == {"vA", "vB", "vC"}
  want_a = np.zeros((10, 2), np.uint8)
  want_a[4, 1] = 1
  want_a[6, 0] = 1
  want_b = np.zeros((8, 2), np.uint8)
  want_b[1, 0] = 1
  np.testing.assert_array_equal(labels["vA"], want_a)
  np.testing.assert_array_equal(labels["vB"], want_b)
  np.testing.assert_array_equal(labels["vC"], np.zeros((9, 2), np.uint8))
  assert labels["vA"].dtype == np.uint8


@pytest.mark.parametrize("row,pattern", [
    ("Golf,1,40,100,vA,90", r"points\.csv: line 3: video 'vA': field class: unknown class 'Golf'"),
    ("Jump,1,40,100,vZ,90", r"points\.csv: line 3: field video_id: unknown video 'vZ'"),
    ("Jump,1,40,100,vA,abc", r"points\.csv: line 3: video 'vA': field point: expected a number"),
    ("Jump,x,40,100,vA,5", r"points\.csv: line 3: video 'vA': field class_index"),
    ("Jump,1,40,100,vA", r"points\.csv: line 3: expected 6 fields"),
    ("Jump,1,40,100,vC,5", r"fps\.json: no fps for video 'vC'.*points\.csv line 3"),
])
def test_point_labels_bad_rows(tmp_path, row, pattern):
  ds, csv_path, fps_path = _points_setup(tmp_path, ["Jump,1,40,100,vA,90", row])
  with pytest.raises(DataError, match=pattern):
    points.read_point_labels(csv_path, fps_path, ds)


def test_point_labels_missing_column_and_bad_fps_json(tmp_path):
  ds, csv_path, fps_path = _points_setup(tmp_path, ["Jump,1,40,100,vA,90"])
  with open(csv_path, "w") as f:
    f.write("class,video_id,point\nJump,vA,90\n")
  with pytest.raises(DataError, match=r"points\.csv: line 1: missing column"):
    points.read_point_labels(csv_path, fps_path, ds)
  ds, csv_path, fps_path = _points_setup(tmp_path, ["Jump,1,40,100,vA,90"])
  with open(fps_path, "w") as f:
    f.write("{'vA': 30}")
  with pytest.raises(DataError, match=r"fps\.json: malformed JSON at line 1"):
    points.read_point_labels(csv_path, fps_path, ds)


def test_point_labels_header_only(tmp_path):
  ds, csv_path, fps_path = _points_setup(tmp_path, [])
  with pytest.raises(DataError, match=r"points\.csv: no point label"):
    points.read_point_labels(csv_path, fps_path, ds)


# ------------------------------------------------------------ load_dataset


def test_load_dataset_activitynet_from_config(tmp_path):
  ann, fdir = _write_anet(tmp_path, _db(), streams=("rgb", "flow"))
  test_split = tmp_path / "test.txt"
  test_split.write_text("vB\nvC\n")
  c = base_config()
  c.data.format = "activitynet"
  c.data.annotation_path = ann
  c.data.features_dir = fdir
  c.data.feature_streams = ("rgb", "flow")
  c.data.test_split_file = str(test_split)
  c.data.feature_dim = 6
  ds = readers.load_dataset(c.data)
  assert ds.feature_dim == 6
  assert [v.video_id for v in ds.subset("test").videos] == ["vB", "vC"]
  assert [v.video_id for v in ds.subset("validation").videos] == ["vA"]
  c.data.feature_dim = 2048
  with pytest.raises(DataError, match=r"rgb.*vA\.npy.*'vA'.*D=2048"):
    readers.load_dataset(c.data)


def test_load_dataset_wtalc_from_config(tmp_path):
  d = _write_wtalc(tmp_path)
  c = base_config()
  c.data.format = "wtalc"
  c.data.wtalc_dir = d
  c.data.wtalc_features_file = "F.npy"
  c.data.feature_dim = 6
  ds = readers.load_dataset(c.data)
  assert len(ds.subset("test").videos) == 2


def test_load_dataset_synthetic_into_workdir(tmp_path):
  c = base_config()
  s = c.data.synthetic
  s.num_train, s.num_test, s.feature_dim, s.num_classes = 4, 3, 8, 5
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    ds = readers.load_dataset(c.data, workdir=str(tmp_path))
  assert os.path.isfile(tmp_path / "data" / "annotations.json")
  assert ds.class_names == ["Class00", "Class01", "Class02", "Class03", "Class04"]
  assert ds.feature_dim == 8
  assert len(ds.subset("validation").videos) == 4 and len(ds.subset("test").videos) == 3
  with pytest.raises(ValueError, match="workdir"):
    readers.load_dataset(c.data)


def test_activitynet_checks_each_streams_width(tmp_path):
  """12 + 4 after 8 + 8 has the same D but other streams: refused, naming the
  stream's file (or skipped and listed with skip_bad_videos)."""
  ann, fdir = _write_anet(tmp_path, _db(), streams=("rgb", "flow"),
                          dims={"rgb": 8, "flow": 8})
  np.save(os.path.join(fdir, "rgb", "vB.npy"), _feats(10, 12, 0))
  np.save(os.path.join(fdir, "flow", "vB.npy"), _feats(10, 4, 0))
  with pytest.raises(DataError) as e:
    readers.read_activitynet(ann, fdir, feature_streams=("rgb", "flow"))
  msg = str(e.value)
  assert msg.startswith(os.path.join(fdir, "rgb", "vB.npy") + ": video 'vB': stream 'rgb' "
                        "has width 12, but the first video has 'rgb' of width 8")
  with pytest.warns(UserWarning, match="skipped 1 bad video"):
    ds = readers.read_activitynet(ann, fdir, feature_streams=("rgb", "flow"),
                                  skip_bad_videos=True)
  assert [v.video_id for v in ds.videos] == ["vA", "vC"]
  assert ds.stream_widths == {"rgb": 8, "flow": 8}
  assert ds.subset("validation").stream_widths == {"rgb": 8, "flow": 8}


def test_features_beyond_float32_are_not_called_nan(tmp_path):
  ann, fdir = _write_anet(tmp_path, _db())
  arr = np.zeros((10, 4))
  arr[3, 2] = 1e300
  np.save(os.path.join(fdir, "vB.npy"), arr)
  with pytest.raises(DataError) as e:
    readers.read_activitynet(ann, fdir)
  msg = str(e.value)
  assert "beyond float32's range" in msg and "segment 3, dim 2" in msg
  assert "NaN" not in msg
  arr[3, 2] = -3e7  # finite in float32, but no extractor's: a byte-order or dtype mistake
  np.save(os.path.join(fdir, "vB.npy"), arr.astype(np.float32))
  with pytest.raises(DataError, match=r"vB.npy: video 'vB': features: 1 value\(s\) with "
                     r"\|x\| > 1e\+06, first at segment 3, dim 2: -3e\+07"):
    readers.read_activitynet(ann, fdir)
  np.save(os.path.join(fdir, "vB.npy"), np.full((10, 4), 3.7, np.float32).byteswap())
  with pytest.raises(DataError, match="check the file's byte order and dtype"):
    readers.read_activitynet(ann, fdir)  # 3.7 with its bytes swapped reads as -4.3e8
