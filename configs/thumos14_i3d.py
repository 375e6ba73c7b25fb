"""THUMOS14 with I3D features (2048-d, RGB + flow): the paper's data, training
schedule and loss weights with jaxseg's defaults (which depart from the printed
equations; docs/presets.md).

Reads an ActivityNet-style annotation JSON and two-stream features of shape
``(T, 1024)`` each in any public layout, detected: BaSNet's / LACP's
``features/{train,test}/{rgb,flow}/<video_id>.npy``, ``features/{rgb,flow}/<video_id>.npy``
(``jaxseg.extract``) or joined ``features/<video_id>.npy`` ``(T, 2048)``. Trains on
the validation split (``train`` in BaSNet's / LACP's ``gt.json``) and tests on
the test split::

  python -m jaxseg.main --config configs/thumos14_i3d.py --workdir runs/thumos14 \
      --config.data.annotation_path=/data/thumos14/gt.json \
      --config.data.features_dir=/data/thumos14/features

From section 5.1: alpha 0.1, beta 1e-4, gamma 0.02, r = 2Q;
Adam lr 1e-4 with weight decay 5e-4 as in W-TALC / BaSNet.

Presets after the file name: ``:jaxseg`` (the default), ``:paper`` (Fig. 3's
network, section 4.7's inference) and ``:printed`` (the paper as printed);
what each sets and why: docs/presets.md::

  python -m jaxseg.main --config configs/thumos14_i3d.py:paper --workdir runs/thumos14_paper ...
"""

from jaxseg import config as config_lib
from jaxseg import presets


def get_config(preset=None):
  c = config_lib.base_config()
  c.data.format = "activitynet"
  c.data.feature_streams = ("rgb", "flow")
  c.data.feature_dim = 2048
  # "validation"/"test" (official THUMOS14, W-TALC) or "train"/"test" (BaSNet,
  # LACP), whichever the annotations have; the choice is printed.
  c.data.train_subset = config_lib.SUBSET_AUTO
  c.data.test_subset = config_lib.SUBSET_AUTO
  c.labels.mode = "one-segment"
  c.train.batch_size = 16
  c.train.num_steps = 10000
  c.train.learning_rate = 1e-4
  c.train.weight_decay = 5e-4
  c.train.max_length = 750
  c.train.validation_fraction = 0.1
  c.eval.tiou_thresholds = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
  c.eval.averages = (("avg0.1:0.5", 0.1, 0.5), ("avg0.1:0.7", 0.1, 0.7))
  return presets.apply_preset(c, preset)
