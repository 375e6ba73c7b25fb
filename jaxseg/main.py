"""Command line: train, evaluate or run the loss ablation from a config file.

  python -m jaxseg.main --config configs/synthetic.py --workdir runs/synthetic
  python -m jaxseg.main --config configs/synthetic.py --workdir runs/synthetic --mode eval
  python -m jaxseg.main --config configs/synthetic.py --workdir runs/ablation --mode ablate
  python -m jaxseg.main --config configs/thumos14_i3d.py --workdir runs/t14 \\
      --config.data.annotation_path=gt.json --config.data.features_dir=features \\
      --config.train.learning_rate=3e-4
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for this run's outputs.")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "eval", "ablate", "data"],
    "train: train then evaluate the final and the selected checkpoint; "
    "eval: evaluate the checkpoints in --workdir; "
    "ablate: the paper's Table 1 (every loss combination); "
    "data: load the dataset and print its summary.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False,
    "Allow --workdir to hold a run of a different config (it is replaced).")
_SEEDS = flags.DEFINE_integer(
    "seeds", None, "With --mode ablate: seeds per cell (overrides config.ablation.num_seeds).")

flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Imported here so that `--help` is fast and JAX starts after flag parsing.
  from jaxseg import train  # pylint: disable=g-import-not-at-top
  from jaxseg.data.video import DataError  # pylint: disable=g-import-not-at-top

  # Orbax logs every checkpoint step at INFO; keep the console for progress and results.
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  workdir = _WORKDIR.value
  try:
    if _MODE.value == "train":
      train.train_and_evaluate(config, workdir, overwrite=_OVERWRITE.value)
    elif _MODE.value == "eval":
      train.evaluate_workdir(config, workdir)
    elif _MODE.value == "ablate":
      from jaxseg import ablation  # pylint: disable=g-import-not-at-top
      ablation.run_ablation(config, workdir, num_seeds=_SEEDS.value,
                            overwrite=_OVERWRITE.value)
    elif _MODE.value == "data":
      train.describe_data(config, workdir)
  except (DataError, train.ConfigError, train.NonFiniteError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
