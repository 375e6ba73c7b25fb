"""Helpers the test modules share: the test config, a small dataset, loss arguments."""

import dataclasses
import os

import numpy as np

from configs import test as test_config
from jaxseg import config as config_lib
from jaxseg.data.video import Dataset, Instance, Video


def make_config(data_dir=None, **overrides):
  """``configs/test.py`` with dotted-name overrides, e.g. ``**{"loss.alpha": -1.0}``.

  ``data_dir``: where the synthetic dataset is generated (shared between runs).
  """
  c = test_config.get_config()
  if data_dir is not None:
    c.data.synthetic.output_dir = str(data_dir)
  return config_lib.with_overrides(c, **overrides)


def index_features(k, t, dim=3):
  """Row j of video k is (k, j, 1, ...): a row identifies its video and segment."""
  f = np.ones((t, dim), np.float32)
  f[:, 0] = k
  f[:, 1] = np.arange(t)
  return f


def make_dataset(lengths=(5, 12, 30, 70, 9), dim=3):
  """Videos of the given lengths (1 segment per second), 3 classes, 3 instances each
  (the third overlaps the first), features from :func:`index_features`."""
  videos = []
  for k, t in enumerate(lengths):
    inst = [Instance(0.0, t * 0.25, k % 3), Instance(t * 0.5, t * 0.9, (k + 1) % 3),
            Instance(t * 0.1, t * 0.3, (k + 2) % 3)]
    videos.append(Video(f"v{k}", "validation", index_features(k, t, dim), 1.0, float(t),
                        inst))
  return Dataset(["A", "B", "C"], videos)


def loss_kwargs(**overrides):
  """The keyword arguments of ``losses.total_loss``: ``config.loss`` with overrides."""
  kw = config_lib.base_config().loss.to_dict()
  unknown = set(overrides) - set(kw)
  assert not unknown, f"not fields of config.loss: {unknown}"
  kw.update(overrides)
  return kw


def snapshot(root) -> dict:
  """``{relative path: bytes}`` of every file under ``root``: to show nothing changed."""
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      p = os.path.join(dirpath, name)
      with open(p, "rb") as f:
        out[os.path.relpath(p, root)] = f.read()
  return out


def finished_run(root, steps: int) -> dict:
  """One finished ``steps``-step run of configs/test.py under ``root`` (its data in
  ``root/data``): ``{"config", "workdir", "root"}``; copy it before changing it."""
  from jaxseg import train  # pylint: disable=g-import-not-at-top
  config = make_config(root / "data", **{"train.num_steps": steps})
  workdir = root / "run"
  train.train_and_evaluate(config, str(workdir))
  return {"config": config, "workdir": workdir, "root": root}


class ForbiddenSplit:
  """A test split that raises on any read but counting its videos (for the log)."""

  def __init__(self, n):
    self.videos = _CountOnly(n)

  def __getattr__(self, name):
    raise AssertionError(f"the test split was read (.{name})")


class _CountOnly(list):
  def __init__(self, n):
    super().__init__()
    self.n = n

  def __len__(self):
    return self.n

  def __iter__(self):
    raise AssertionError("the test split was read (videos)")

  def __getitem__(self, i):
    raise AssertionError("the test split was read (videos)")


def forbid_test_split(monkeypatch):
  """Any read of the test split (beyond its size) raises."""
  from jaxseg import run_data  # pylint: disable=g-import-not-at-top
  for name in ("prepare_data", "read_data"):  # every way a run gets its RunData
    def guarded(*a, _load=getattr(run_data, name), **k):
      data = _load(*a, **k)
      return dataclasses.replace(data, test=ForbiddenSplit(len(data.test.videos)))

    monkeypatch.setattr(run_data, name, guarded)
