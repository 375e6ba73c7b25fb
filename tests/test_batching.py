"""Bucketed padding, deterministic training batches, evaluation batches."""

import numpy as np
import pytest

from jaxseg.data import batching
from jaxseg.data.labels import sample_segment_labels
from jaxseg.data.video import DataError, Dataset, Instance, Video
from tests.helpers import index_features, make_dataset

BUCKETS = (8, 16, 32)
D = 3


@pytest.mark.parametrize("length,want", [
    (0, 8), (1, 8), (8, 8), (9, 16), (32, 32), (33, 64), (64, 64), (65, 96)])
def test_bucket_length(length, want):
  assert batching.bucket_length(length, BUCKETS) == want
  assert batching.bucket_length(length, (32, 8, 16)) == want  # order does not matter


def test_bucket_length_config_default():
  b = (64, 128, 256, 512, 750, 1024, 2048, 4096)
  assert [batching.bucket_length(n, b) for n in (700, 750, 751, 4097, 9000)] == [
      750, 750, 1024, 8192, 12288]


def _check_batch(batch, ds, labels, b, n_real=None):
  """Every row against the source video, rebuilt from the encoded features."""
  n_real = b if n_real is None else n_real
  t_pad = batch["features"].shape[1]
  assert t_pad in BUCKETS or t_pad % max(BUCKETS) == 0
  assert batch["features"].shape == (b, t_pad, D) and batch["features"].dtype == np.float32
  assert batch["mask"].shape == (b, t_pad) and batch["mask"].dtype == bool
  assert batch["lengths"].dtype == np.int32 and batch["num_labeled"].dtype == np.int32
  assert batch["video_labels"].shape == (b, ds.num_classes)
  assert batch["segment_labels"].shape == (b, t_pad, ds.num_classes)
  assert batch["segment_labels"].dtype == np.float32
  assert t_pad == batching.bucket_length(int(batch["lengths"].max()), BUCKETS) or n_real == 0
  kept = []
  for i in range(b):
    n = int(batch["lengths"][i])
    np.testing.assert_array_equal(batch["mask"][i], np.arange(t_pad) < n)
    assert not batch["features"][i, n:].any() and not batch["segment_labels"][i, n:].any()
    if i >= n_real:
      assert n == 0 and not batch["video_labels"][i].any()
      continue
    k = int(batch["features"][i, 0, 0])
    v = ds.videos[k]
    np.testing.assert_array_equal(batch["features"][i, :n, 0], k)
    idx = batch["features"][i, :n, 1].astype(int)
    np.testing.assert_array_equal(batch["features"][i, :n], v.features[idx])
    np.testing.assert_array_equal(batch["segment_labels"][i, :n], labels[v.video_id][idx])
    np.testing.assert_array_equal(batch["video_labels"][i], v.video_labels(ds.num_classes))
    assert batch["num_labeled"][i] == int(labels[v.video_id][idx].any(axis=1).sum())
    kept.append((k, idx))
  return kept


@pytest.mark.parametrize("crop_mode", ["uniform", "crop"])
def test_train_batches_are_padded_and_carry_labels(crop_mode):
  ds = make_dataset()
  labels = sample_segment_labels(ds, "full", 0).labels
  loader = batching.TrainLoader(ds, labels, batch_size=3, max_length=16, buckets=BUCKETS,
                                seed=1, crop_mode=crop_mode, subsample="uniform")
  seen_long = 0
  for step in range(12):
    batch = loader.batch(step)
    for k, idx in _check_batch(batch, ds, labels, 3):
      t = ds.videos[k].num_segments
      if t <= 16:
        np.testing.assert_array_equal(idx, np.arange(t))
        continue
      seen_long += 1
      assert len(idx) == 16 and np.all(np.diff(idx) > 0)
      if crop_mode == "crop":
        np.testing.assert_array_equal(idx, np.arange(idx[0], idx[0] + 16))
      else:
        # idx = floor((i + o) * T / L) for one offset o in [0, 1): the offsets
        # each index allows must intersect.
        s = t / 16
        i = np.arange(16)
        low = max(0.0, np.max(idx / s - i))
        high = min(1.0, np.min((idx + 1) / s - i))
        assert low < high, (idx, t)
  assert seen_long > 0


@pytest.mark.parametrize("crop_mode", ["uniform", "crop"])
def test_crop_offsets_vary_with_step(crop_mode):
  ds = make_dataset(lengths=(70,))
  labels = sample_segment_labels(ds, "one-segment", 0).labels
  loader = batching.TrainLoader(ds, labels, batch_size=1, max_length=10, buckets=BUCKETS,
                                seed=0, crop_mode=crop_mode, subsample="uniform")
  starts = {int(loader.batch(s)["features"][0, 0, 1]) for s in range(20)}
  assert len(starts) > 3


def test_num_labeled_counts_segments_not_labels():
  ds = make_dataset(lengths=(20,))
  labels = sample_segment_labels(ds, "full", 0).labels
  u = labels["v0"]
  assert (u.sum(axis=1) == 2).any()  # some segments carry two classes
  loader = batching.TrainLoader(ds, labels, batch_size=1, max_length=100, buckets=BUCKETS,
                                seed=0, crop_mode="uniform", subsample="uniform")
  assert loader.batch(0)["num_labeled"][0] == int((u.sum(axis=1) > 0).sum())


def test_train_batches_are_deterministic_per_step():
  ds = make_dataset()
  labels = sample_segment_labels(ds, "two-segment", 3).labels
  kw = dict(batch_size=4, max_length=16, buckets=BUCKETS, seed=7, crop_mode="uniform", subsample="uniform")
  a = batching.TrainLoader(ds, labels, **kw)
  b = batching.TrainLoader(ds, labels, **kw)
  later = b.batch(9)  # b sees the steps in another order, like a resumed run
  for step in (0, 3, 9):
    x, y = a.batch(step), b.batch(step)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  for key in later:
    np.testing.assert_array_equal(later[key], a.batch(9)[key])
  c = batching.TrainLoader(ds, labels, **{**kw, "seed": 8})
  assert any(not np.array_equal(a.batch(s)["features"][:, :, :2].sum(axis=(1, 2)),
                                c.batch(s)["features"][:, :, :2].sum(axis=(1, 2)))
             for s in range(5))


def test_every_video_once_per_epoch_with_full_batches():
  ds = make_dataset()  # M = 5
  labels = sample_segment_labels(ds, "video-level", 0).labels
  loader = batching.TrainLoader(ds, labels, batch_size=2, max_length=100,
                                buckets=BUCKETS, seed=0, crop_mode="uniform", subsample="uniform")
  assert loader.steps_per_epoch == 3
  order = np.concatenate([loader.video_indices(s) for s in range(10)])  # 20 = 4 epochs
  for e in range(4):
    assert sorted(order[5 * e:5 * e + 5]) == [0, 1, 2, 3, 4]
  assert [loader.epoch_of(s) for s in (0, 2, 3, 5)] == [0, 0, 1, 2]
  epochs = {tuple(order[5 * e:5 * e + 5]) for e in range(4)}
  assert len(epochs) > 1  # a fresh permutation per epoch
  for s in range(10):
    assert loader.batch(s)["mask"].any(axis=1).all()  # always full batches


def test_train_loader_rejects_bad_labels():
  ds = make_dataset()
  labels = sample_segment_labels(ds, "full", 0).labels
  del labels["v2"]
  with pytest.raises(DataError, match="'v2'"):
    batching.TrainLoader(ds, labels, batch_size=2, max_length=8, buckets=BUCKETS, seed=0,
                         crop_mode="uniform", subsample="uniform")
  with pytest.raises(ValueError, match="crop_mode"):
    batching.TrainLoader(ds, sample_segment_labels(ds, "full", 0).labels, batch_size=2,
                         max_length=8, buckets=BUCKETS, seed=0, crop_mode="random", subsample="uniform")


def test_eval_batches_cover_every_video_once_at_full_length():
  ds = make_dataset()
  batches = list(batching.eval_batches(ds, batch_size=2, buckets=BUCKETS))
  assert len(batches) == 3
  ids = [vid for b in batches for vid in b["video_ids"]]
  assert sorted(ids) == sorted(v.video_id for v in ds.videos)
  assert ids == ["v0", "v4", "v1", "v2", "v3"]  # sorted by length
  zeros = {v.video_id: np.zeros((v.num_segments, 3), np.uint8) for v in ds.videos}
  for b in batches:
    kept = _check_batch(b, ds, zeros, 2, n_real=len(b["video_ids"]))
    for (k, idx), vid in zip(kept, b["video_ids"]):
      assert ds.videos[k].video_id == vid
      np.testing.assert_array_equal(idx, np.arange(ds.videos[k].num_segments))
  last = batches[-1]
  assert last["video_ids"] == ["v3"] and not last["mask"][1].any()
  assert last["features"].shape[1] == 96  # 70 -> next multiple of 32


def test_eval_batches_can_carry_segment_labels():
  ds = make_dataset()
  labels = sample_segment_labels(ds, "full", 0).labels
  for b in batching.eval_batches(ds, batch_size=3, buckets=BUCKETS, segment_labels=labels):
    _check_batch(b, ds, labels, 3, n_real=len(b["video_ids"]))


def test_pad_video():
  x = np.arange(6, dtype=np.float32).reshape(3, 2)
  out = batching.pad_video(x, 5)
  np.testing.assert_array_equal(out[:3], x)
  assert out.shape == (5, 2) and not out[3:].any()
  with pytest.raises(ValueError):
    batching.pad_video(x, 2)
