"""Device-resident training data: the gathered batch is the host batch, bit for bit."""

import jax
import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg import config_checks
from jaxseg.data import batching
from jaxseg.data import device_data
from jaxseg.data.labels import sample_segment_labels
from jaxseg.data.video import DataError
from tests.helpers import make_dataset

BUCKETS = (8, 16, 32)
D, N = 5, 3
LENGTHS = (5, 12, 30, 70, 9, 41)


@pytest.fixture(scope="module")
def gather():
  return jax.jit(device_data.gather_batch)


@pytest.mark.parametrize("crop_mode", ["uniform", "crop"])
@pytest.mark.parametrize("mode", ["one-segment", "two-segment", "full"])
def test_gathered_batch_equals_host_batch(gather, crop_mode, mode):
  ds = make_dataset(LENGTHS, dim=D)
  labels = sample_segment_labels(ds, mode, seed=3).labels
  loader = batching.TrainLoader(ds, labels, batch_size=4, max_length=16, buckets=BUCKETS,
                                seed=11, crop_mode=crop_mode, subsample="uniform")
  host_bank = device_data.build_bank(ds, labels)
  assert host_bank.features.shape == (sum(v.num_segments for v in ds.videos), D)
  assert host_bank.nbytes == device_data.bank_bytes(ds)
  bank = jax.device_put(host_bank.arrays())
  for step in range(7):  # several epochs: every video, long ones sampled down
    want = loader.batch(step)
    plan = loader.plan(step, host_bank.offsets)
    assert plan["index"].dtype == np.int32 and plan["index"].shape == want["mask"].shape
    got = jax.device_get(gather(bank, plan))
    assert set(got) == set(want) - {"video_ids"}
    for key, value in got.items():
      assert value.dtype == want[key].dtype, key
      np.testing.assert_array_equal(value, want[key], err_msg=f"step {step} {key}")


def test_plan_indices_point_at_the_sampled_segments():
  ds = make_dataset((4, 40), dim=D)
  labels = sample_segment_labels(ds, "one-segment", seed=0).labels
  loader = batching.TrainLoader(ds, labels, batch_size=2, max_length=16, buckets=BUCKETS,
                                seed=0, crop_mode="crop", subsample="uniform")
  offsets = device_data.build_bank(ds, labels).offsets
  np.testing.assert_array_equal(offsets, [0, 4])
  np.testing.assert_array_equal(device_data.video_offsets(ds), offsets)
  for step in range(3):
    plan = loader.plan(step, offsets)
    for row, (video, keep) in enumerate(loader.rows(step)):
      n = keep.shape[0]
      assert plan["lengths"][row] == n
      np.testing.assert_array_equal(plan["index"][row, :n], offsets[video] + keep)
      assert not plan["index"][row, n:].any()
      if video == 1:  # cropped: a contiguous window of 16 of its 40 segments
        assert n == 16 and np.all(np.diff(keep) == 1)


def test_padded_steps_never_read_the_bank(gather):
  """Junk in the bank row that padding points at never reaches the batch."""
  ds = make_dataset((3, 9), dim=D)
  labels = sample_segment_labels(ds, "full", seed=0).labels
  loader = batching.TrainLoader(ds, labels, batch_size=2, max_length=16, buckets=BUCKETS,
                                seed=0, crop_mode="uniform", subsample="uniform")
  host = device_data.build_bank(ds, labels)
  host.features[0] = np.nan  # row 0 is what padded steps index
  plan = loader.plan(0, host.offsets)
  got = jax.device_get(gather(jax.device_put(host.arrays()), plan))
  real = plan["mask"]
  assert np.all(got["features"][~real] == 0) and np.all(got["segment_labels"][~real] == 0)


GIB = 2 ** 30


@pytest.mark.parametrize("mode,backend,memory,want", [
    ("auto", "cpu", 64 * GIB, False),
    ("auto", "gpu", 80 * GIB, True),
    ("auto", "tpu", 16 * GIB, True),
    ("auto", "gpu", None, False),
    ("on", "cpu", None, True),
    ("off", "gpu", 80 * GIB, False),
])
def test_use_device_data_policy(mode, backend, memory, want):
  ds = make_dataset(LENGTHS, dim=D)
  on, why = device_data.use_device_data(mode, ds, backend=backend, memory=memory)
  assert on is want
  assert ("on" if want else "off") in why


def test_auto_stays_off_when_the_bank_takes_over_a_quarter_of_memory():
  ds = make_dataset(LENGTHS, dim=D)
  need = device_data.bank_bytes(ds)
  assert device_data.use_device_data("auto", ds, backend="gpu", memory=4 * need)[0]
  on, why = device_data.use_device_data("auto", ds, backend="gpu", memory=4 * need - 1)
  assert not on and "25%" in why


def test_bad_mode_is_rejected_by_config_and_function():
  with pytest.raises(ValueError, match="train.device_data"):
    device_data.use_device_data("gpu", make_dataset(LENGTHS, dim=D))
  c = config_lib.base_config()
  c.train.device_data = "gpu"
  with pytest.raises(config_lib.ConfigError, match="train.device_data"):
    config_checks.validate(c)


def test_bank_of_mismatched_labels_names_the_video():
  ds = make_dataset((5, 7), dim=D)
  labels = dict(sample_segment_labels(ds, "full", seed=0).labels)
  labels["v1"] = labels["v1"][:3]
  with pytest.raises(DataError, match="'v1'.*shape"):
    device_data.build_bank(ds, labels)
