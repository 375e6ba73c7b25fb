"""The synthetic data at a size a laptop CPU trains in about a minute per run.

``configs/synthetic.py`` shrunk: 10 classes, 80 training videos (a quarter held
out for validation), 40 test videos, 400 steps of 8 videos. It is the setup of
``benchmarks/robustness.py`` (every world of the family starts from it) and of
docs/results.md's Table 1::

  python -m jaxseg.main --config configs/synthetic_small.py --workdir runs/small
  python -m jaxseg.main --config configs/synthetic_small.py --workdir runs/table1 --mode ablate --seeds 3

With the presets of ``configs/synthetic.py``: ``configs/synthetic_small.py:paper``,
``configs/synthetic_small.py:printed``.
"""

from configs import synthetic as synthetic_config
from jaxseg import presets


def get_config(preset=None):
  c = synthetic_config.get_config()
  s = c.data.synthetic
  s.num_classes, s.num_train, s.num_test, s.max_length = 10, 80, 40, 1200
  c.train.num_steps = 400
  c.train.batch_size = 8
  c.train.eval_every = 200
  c.train.checkpoint_every = 200
  c.train.log_every = 100
  c.train.validation_fraction = 0.25
  if preset == "printed":
    c.loss.gamma = 0.02  # the printed weight (configs/synthetic.py lowers it)
  return presets.apply_preset(c, preset)
