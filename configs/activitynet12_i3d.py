"""ActivityNet 1.2 with I3D features (2048-d): the paper's data and schedule with
jaxseg's defaults.

Expects an ActivityNet-format annotation JSON (``activity_net.v1-2.min.json``
or the BaSNet copy) and ``features/<video_id>.npy`` of shape ``(T, 2048)``;
trains on "training" and tests on "validation" (the test labels are withheld)::

  python -m jaxseg.main --config configs/activitynet12_i3d.py --workdir runs/anet12 \
      --config.data.annotation_path=/data/anet12/gt.json \
      --config.data.features_dir=/data/anet12/features

Also ``configs/activitynet12_i3d.py:paper`` and ``:printed`` (docs/presets.md).
"""

from jaxseg import config as config_lib
from jaxseg import presets


def get_config(preset=None):
  c = config_lib.base_config()
  c.data.format = "activitynet"
  c.data.feature_dim = 2048
  c.data.train_subset = "training"
  c.data.test_subset = "validation"
  c.labels.mode = "one-segment"
  c.train.batch_size = 16
  c.train.num_steps = 20000
  c.train.learning_rate = 1e-4
  c.train.weight_decay = 5e-4
  c.train.max_length = 750
  c.train.validation_fraction = 0.05
  c.eval.tiou_thresholds = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
  c.eval.averages = (("avg0.5:0.95", 0.5, 0.95),)
  c.ablation.annotation_time = config_lib.ACTIVITYNET_ANNOTATION_TIME
  return presets.apply_preset(c, preset)
