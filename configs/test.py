"""A tiny configuration for the test suite: seconds per run on a CPU.

  python -m jaxseg.main --config configs/test.py --workdir /tmp/jaxseg-test
"""

from jaxseg import config as config_lib


def get_config():
  c = config_lib.base_config()
  c.data.format = "synthetic"
  c.data.synthetic.num_classes = 4
  c.data.synthetic.num_train = 24
  c.data.synthetic.num_test = 12
  c.data.synthetic.feature_dim = 16
  c.data.synthetic.max_length = 300
  c.data.feature_dim = 16
  c.model.dropout_rate = 0.5
  c.train.batch_size = 4
  c.train.num_steps = 12
  c.train.learning_rate = 1e-3
  c.train.max_length = 128
  c.train.length_buckets = (64, 128, 256)
  c.train.log_every = 4
  c.train.eval_every = 6
  c.train.checkpoint_every = 4
  c.train.keep_checkpoints = 2
  c.train.validation_fraction = 0.25
  c.train.progress = False
  c.inference.batch_size = 4
  c.ablation.label_modes = ("one-segment",)
  return c
