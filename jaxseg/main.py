"""Command line: train, evaluate or run the loss ablation from a config file.

  python -m jaxseg.main --config configs/synthetic.py --workdir runs/synthetic
  python -m jaxseg.main --config configs/synthetic.py --workdir runs/seeds --seeds 3
  python -m jaxseg.main --config configs/synthetic.py --workdir runs/synthetic --mode eval
  python -m jaxseg.main --config configs/synthetic.py --workdir runs/synthetic --mode data
  python -m jaxseg.main --config configs/synthetic.py --workdir runs/ablation --mode ablate
  python -m jaxseg.main --config configs/thumos14_i3d.py --workdir runs/t14 \\
      --config.data.annotation_path=gt.json --config.data.features_dir=features \\
      --config.train.learning_rate=3e-4
  python -m jaxseg.main --mode predict --workdir runs/t14 \\
      --predict_features FEATURES_DIR --predict_out predictions [--predict_plots]

Which config to start from (configs/):
  synthetic.py, synthetic_small.py   the embedded synthetic dataset (no download)
  thumos14_i3d.py                    THUMOS14 I3D features, ActivityNet JSON + .npy
                                     (BaSNet/LACP layouts, or jaxseg.extract's)
  thumos14_wtalc_i3d.py              THUMOS14 as W-TALC's bundle
  activitynet12_i3d.py               ActivityNet v1.2
  activitynet13_i3d.py               ActivityNet v1.3
  test.py                            a tiny run for trying the commands
Each dataset config takes a preset after a colon: configs/thumos14_i3d.py:jaxseg
(the default: the choices validated across data worlds, inference rules chosen
on each run's validation hold-out), :paper (the paper's method with the readings
it needs to train) or :printed (every choice as printed). docs/presets.md says
what each sets; the README, how to feed your own features.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for this run's outputs.")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "eval", "ablate", "data", "predict"],
    "train: train then evaluate the final and the selected checkpoint; "
    "eval: evaluate the checkpoints in --workdir; "
    "ablate: the paper's Table 1 (every loss combination); "
    "data: load the dataset and print its summary; "
    "predict: run the finished run in --workdir on --predict_features "
    "(no annotations; --config not needed) into --predict_out.")
_PREDICT_FEATURES = flags.DEFINE_string(
    "predict_features", None,
    "With --mode predict: a folder of .npy features in any layout "
    "(DIR/<vid>.npy, DIR/<subset>/<vid>.npy, DIR/<stream>/<vid>.npy, "
    "DIR/<subset>/<stream>/<vid>.npy).")
_PREDICT_OUT = flags.DEFINE_string(
    "predict_out", None,
    "With --mode predict: the output folder (detections.json, cas/<vid>.npz, "
    "plots/); written all at once; must be absent or empty unless --overwrite.")
_PREDICT_PLOTS = flags.DEFINE_bool(
    "predict_plots", False, "With --mode predict: also write plots/<vid>.png.")
_PREDICT_CHECKPOINT = flags.DEFINE_enum(
    "predict_checkpoint", "selected", ["selected", "final"],
    "With --mode predict: the checkpoint to run.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False,
    "Allow --workdir to hold a run of a different config (it is replaced).")
_SEEDS = flags.DEFINE_integer(
    "seeds", None,
    "With --mode train: train N runs (seed_<i>/) and write their mean ± std "
    "(seeds.md); with --mode ablate: seeds per cell (overrides config.ablation.num_seeds).")

flags.mark_flags_as_required(["workdir"])  # and --config, except with --mode predict


class _OrbaxWarningsOnly(std_logging.Filter):
  """Keeps the console for the run's own lines.

  Orbax logs every checkpoint step at INFO, and warns that a manager opened to
  read a run back (``workdir.load_run``) is read-only, which is the point.
  """

  def filter(self, record: std_logging.LogRecord) -> bool:
    if "orbax" not in record.pathname:
      return True
    return (record.levelno >= std_logging.WARNING
            and "read_only" not in record.getMessage()
            and "read only" not in record.getMessage())


def main(argv):
  if len(argv) > 1:
    _flag_error(f"unexpected arguments {argv[1:]} (every option is a --flag; see --help)")
  # Imported here so that `--help` is fast and JAX starts after flag parsing.
  # pylint: disable=g-import-not-at-top
  from jaxseg import ablation
  from jaxseg import evaluate
  from jaxseg import seeds
  from jaxseg import train
  from jaxseg import workdir as workdir_lib
  from jaxseg.config import ConfigError
  from jaxseg.data.video import DataError
  # pylint: enable=g-import-not-at-top

  logging.set_verbosity(logging.INFO)  # progress and results go through absl logging
  logging.get_absl_handler().addFilter(_OrbaxWarningsOnly())
  config = _CONFIG.value
  workdir = _WORKDIR.value
  if flags.FLAGS["config"].present and not isinstance(config, ml_collections.ConfigDict):
    _flag_error(f"--config: the config file's get_config() returned "
                f"{type(config).__name__}, not an ml_collections.ConfigDict")
  if config is None and _MODE.value != "predict":
    _flag_error(f"--config is required with --mode {_MODE.value} (see --help)")
  if _SEEDS.value is not None and _MODE.value not in ("train", "ablate"):
    print(f"error: --seeds applies to --mode train and ablate, not {_MODE.value}",
          file=sys.stderr)
    sys.exit(2)
  try:
    if _MODE.value == "predict":
      _predict(config, workdir)
    elif _MODE.value == "train" and _SEEDS.value is not None:
      summary = seeds.run_seeds(config, workdir, _SEEDS.value, overwrite=_OVERWRITE.value)
      print(seeds.seeds_markdown(summary, config, _SEEDS.value))
    elif _MODE.value == "train":
      out = train.train_and_evaluate(config, workdir, overwrite=_OVERWRITE.value)
      _print_summaries(out)
    elif _MODE.value == "eval":
      _print_summaries(evaluate.evaluate_workdir(config, workdir))
    elif _MODE.value == "ablate":
      df = ablation.run_ablation(config, workdir, num_seeds=_SEEDS.value,
                                 overwrite=_OVERWRITE.value)
      print(ablation.ablation_markdown(df, config))
    elif _MODE.value == "data":
      print(workdir_lib.describe_data(config, workdir))
  except (DataError, ConfigError, train.NonFiniteError) as e:
    _exit_error(str(e))
  except OSError as e:  # disk full, read-only file system, permissions: one line
    _exit_error(os_error_line(e))
  except MemoryError:  # a huge feature file padded into a batch, ...: one line
    _exit_error(f"out of memory in --mode {_MODE.value} (host memory): a video or a "
                "batch larger than this machine holds; lower train.batch_size or "
                "inference.batch_size, lower train.max_length, or drop the longest videos")


def _exit_error(message: str) -> None:
  """Prints ``error: message`` and exits with status 2.

  Nothing follows the error line on stderr: when Orbax failed to read a
  damaged checkpoint, its TensorStore readers print tracebacks of their own
  ("Event loop is closed") from their threads, also while Python shuts down;
  from here on stderr (the descriptor) is the null device.
  """
  print(f"error: {message}", file=sys.stderr)
  sys.stderr.flush()
  null = os.open(os.devnull, os.O_WRONLY)
  os.dup2(null, 2)
  os.close(null)
  sys.stderr = open(os.devnull, "w")  # pylint: disable=consider-using-with
  sys.exit(2)


def os_error_line(e: OSError) -> str:
  """``<path>: no space left on device`` (the path when known, the reason lowercased)."""
  reason = e.strerror or str(e)
  reason = reason[:1].lower() + reason[1:]
  return f"{e.filename}: {reason}" if e.filename else reason


def _predict(config, workdir: str) -> None:
  """``--mode predict``; a --config, when given, must be the run's."""
  from jaxseg import predict  # pylint: disable=g-import-not-at-top
  from jaxseg import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from jaxseg.config import ConfigError  # pylint: disable=g-import-not-at-top
  if not _PREDICT_FEATURES.value or not _PREDICT_OUT.value:
    print("error: --mode predict needs --predict_features and --predict_out (folders)",
          file=sys.stderr)
    sys.exit(2)
  if config is not None:
    diff = workdir_lib.config_diff(config, workdir)
    if diff:
      raise ConfigError(f"--config differs from the run in {workdir} ({', '.join(diff[:5])}); "
                        "--mode predict uses the run's config.json: leave --config out")
  out = predict.predict_folder(workdir, _PREDICT_FEATURES.value, _PREDICT_OUT.value,
                               which=_PREDICT_CHECKPOINT.value, plots=_PREDICT_PLOTS.value,
                               overwrite=_OVERWRITE.value)
  print(f"{out['layout']}\n{out['num_videos']} videos, {out['num_detections']} detections "
        f"({_PREDICT_CHECKPOINT.value} checkpoint, step {out['step']}) written to "
        f"{out['out_dir']}")


def _print_summaries(out: dict) -> None:
  """The run's test mAP (%), final and selected checkpoint, on stdout."""
  import pandas as pd  # pylint: disable=g-import-not-at-top
  table = pd.DataFrame({"final": out["final"], "selected": out["selected"]}).T
  print(f"Test mAP (%); the selected checkpoint is step {out['selected_step']}")
  print(table.round(2).to_string())


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with each way it fails as one ``error:`` line and exit 2.

  A bad flag value, an unknown ``--config.<field>`` and a ``--config`` file
  that cannot be loaded are user errors like a bad config value: no usage
  text, no traceback.
  """
  if any(a in ("--help", "-h", "-?", "--helpshort") for a in argv[1:]):
    # The flags of this module (absl would look them up by sys.argv[0], which
    # for the installed `jaxseg` command is not this file) and exit 0.
    print(__doc__.rstrip() + "\n\nflags:\n")
    print(flags.FLAGS.module_help(sys.modules[__name__]))
    sys.exit(0)
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)  # config_flags' warnings: the error line says it
  try:
    rest = flags.FLAGS(argv)
    if _CONFIG.value is not None:  # --mode predict may go without one
      _CONFIG.value.keys()  # a --config file that failed to load raises on first use
    return rest
  except flags.Error as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    if len(lines) > 1 and "config file" in lines[0]:  # the reason is the last line
      _flag_error(f"--config: cannot load the config file: {lines[-1]}")
    _flag_error(lines[0] if lines else "bad flag")
  except (AttributeError, KeyError) as e:  # an unknown override, or a broken config file
    names = [a.split("=", 1)[0].lstrip("-") for a in argv[1:] if a.startswith("--config.")]
    unknown = [n for n in names if not _is_field(n[len("config."):])]
    if unknown:
      _flag_error(f"{unknown[0]}: unknown field (every field is listed in "
                  "jaxseg/config.py base_config)")
    _flag_error(f"--config: cannot load the config file: {type(e).__name__}: "
                f"{str(e).strip()}")
  except Exception as e:  # pylint: disable=broad-except  # loading the --config file
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    _flag_error(f"--config: cannot load the config file: {lines[-1] if lines else type(e).__name__}")
  finally:
    logging.set_verbosity(verbosity)
  return []  # not reached


def _is_field(path: str) -> bool:
  """Whether ``train.learning_rate`` (say) is a field of the config."""
  from jaxseg import config as config_lib  # pylint: disable=g-import-not-at-top
  node = config_lib.base_config()
  for name in path.split("."):
    if not hasattr(node, "keys") or name not in node:
      return False
    node = node[name]
  return True


def _flag_error(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def run() -> None:
  """The ``jaxseg`` command (the console script of ``pip install .``)."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
