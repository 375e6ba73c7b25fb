"""Metric writers: one small interface, several backends (``train.log_to``).

The interface is the ``clu.metric_writers`` shape the flax examples use:
``write_scalars(step, {name: value})``, ``write_images(step, {name: image})``,
``write_hparams({name: value})``, ``flush()``, ``close()``. Backends:

* ``tensorboard``: TensorBoard event files under ``<workdir>/tensorboard``,
  written with TensorBoard's own event writer and protocol buffers (no
  TensorFlow). A resumed run first writes a "session start" event at its
  step, so TensorBoard drops what the interrupted run logged past it.
* ``wandb`` and ``mlflow``: only when the package is installed (it is not a
  requirement) and asked for; a missing package is a clear error before
  training starts.

``metrics.jsonl`` (``workdir.MetricsLog``) is always written besides; the
training loop hands the same records to both.
"""

from __future__ import annotations

import abc
import importlib
import io
import os
import time
from typing import Any, Mapping, Sequence

import numpy as np

from jaxseg.config import ConfigError

Image = np.ndarray  # (H, W, 3 or 4) uint8, or float in [0, 1]


class MetricWriter(abc.ABC):
  """What the training loop writes metrics through."""

  @abc.abstractmethod
  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Scalar values at ``step``; names may hold ``/`` to group them."""

  @abc.abstractmethod
  def write_images(self, step: int, images: Mapping[str, Image]) -> None:
    """``(H, W, C)`` images at ``step``."""

  @abc.abstractmethod
  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """The run's hyperparameters (flat names; bools, numbers or strings)."""

  def flush(self) -> None:
    """Makes everything written so far visible to readers."""

  def close(self) -> None:
    self.flush()


class MultiWriter(MetricWriter):
  """Writes to every writer of a list."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self.writers = list(writers)

  def write_scalars(self, step, scalars):
    for w in self.writers:
      w.write_scalars(step, scalars)

  def write_images(self, step, images):
    for w in self.writers:
      w.write_images(step, images)

  def write_hparams(self, hparams):
    for w in self.writers:
      w.write_hparams(hparams)

  def flush(self):
    for w in self.writers:
      w.flush()

  def close(self):
    for w in self.writers:
      w.close()


def _as_uint8(image: Image) -> np.ndarray:
  a = np.asarray(image)
  if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
    raise ValueError(f"image: expected (H, W, 1|3|4), got shape {a.shape}")
  if a.dtype != np.uint8:
    a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  return a


def encode_png(image: Image) -> bytes:
  """PNG bytes of an ``(H, W, C)`` image."""
  from PIL import Image as PILImage  # pylint: disable=g-import-not-at-top
  a = _as_uint8(image)
  buf = io.BytesIO()
  PILImage.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(buf, format="PNG")
  return buf.getvalue()


def hparam_value(value: Any) -> bool | float | str:
  """A config value as TensorBoard/W&B take it: bool, number, or its text."""
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, float, np.integer, np.floating)):
    return float(value)
  return str(value)


class TensorBoardWriter(MetricWriter):
  """TensorBoard event files, without TensorFlow.

  Args:
    log_dir: the folder of the event files (created).
    start_step: the step the run starts (or resumes) at: a session-start event
      at the next step tells TensorBoard to drop what an interrupted run
      logged past the checkpoint it resumes from.
  """

  def __init__(self, log_dir: str, start_step: int = 0):
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.summary.writer import event_file_writer  # pylint: disable=g-import-not-at-top
    os.makedirs(log_dir, exist_ok=True)
    self._event_pb2 = event_pb2
    self._writer = event_file_writer.EventFileWriter(log_dir)
    self.log_dir = log_dir
    if start_step > 0:
      self._add(event_pb2.Event(
          step=int(start_step) + 1,
          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def _add(self, event) -> None:
    event.wall_time = time.time()
    self._writer.add_event(event)

  def _summary(self, step: int, values: list) -> None:
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    self._add(self._event_pb2.Event(step=int(step),
                                    summary=summary_pb2.Summary(value=values)))

  def write_scalars(self, step, scalars):
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    self._summary(step, [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                         for k, v in scalars.items()])

  def write_images(self, step, images):
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    values = []
    for tag, image in images.items():
      a = _as_uint8(image)
      values.append(summary_pb2.Summary.Value(tag=tag, image=summary_pb2.Summary.Image(
          height=a.shape[0], width=a.shape[1], colorspace=a.shape[2],
          encoded_image_string=encode_png(a))))
    self._summary(step, values)

  def write_hparams(self, hparams):
    # The hparams plugin's session-start record, built from its protocol buffers.
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.plugins.hparams import api_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.plugins.hparams import metadata  # pylint: disable=g-import-not-at-top
    from tensorboard.plugins.hparams import plugin_data_pb2  # pylint: disable=g-import-not-at-top
    info = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, value in hparams.items():
      v = hparam_value(value)
      if isinstance(v, bool):
        info.hparams[name].bool_value = v
      elif isinstance(v, float):
        info.hparams[name].number_value = v
      else:
        info.hparams[name].string_value = v
    content = plugin_data_pb2.HParamsPluginData(session_start_info=info,
                                                version=metadata.PLUGIN_DATA_VERSION)
    meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
        plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString()))
    del api_pb2  # the value types above live there; imported to fail early if absent
    self._summary(0, [summary_pb2.Summary.Value(tag=metadata.SESSION_START_INFO_TAG,
                                                metadata=meta)])

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


class WandbWriter(MetricWriter):
  """Weights & Biases (``pip install wandb``), one run per work directory."""

  def __init__(self, workdir: str, project: str):
    wandb = _optional("wandb", "train.log_to='wandb'")
    self._wandb = wandb
    self._run = wandb.init(project=project or "jaxseg", dir=workdir,
                           name=os.path.basename(os.path.abspath(workdir)),
                           id=_run_id(workdir), resume="allow")

  def write_scalars(self, step, scalars):
    self._run.log({k: float(v) for k, v in scalars.items()}, step=int(step))

  def write_images(self, step, images):
    self._run.log({k: self._wandb.Image(_as_uint8(v)) for k, v in images.items()},
                  step=int(step))

  def write_hparams(self, hparams):
    self._run.config.update({k: hparam_value(v) for k, v in hparams.items()},
                            allow_val_change=True)

  def close(self):
    self._run.finish()


class MlflowWriter(MetricWriter):
  """MLflow (``pip install mlflow``): a run named after the work directory."""

  def __init__(self, workdir: str, experiment: str):
    mlflow = _optional("mlflow", "train.log_to='mlflow'")
    self._mlflow = mlflow
    if experiment:
      mlflow.set_experiment(experiment)
    self._run = mlflow.start_run(run_name=os.path.basename(os.path.abspath(workdir)))

  def write_scalars(self, step, scalars):
    self._mlflow.log_metrics({_mlflow_key(k): float(v) for k, v in scalars.items()},
                             step=int(step))

  def write_images(self, step, images):
    for k, v in images.items():
      self._mlflow.log_image(_as_uint8(v), f"{_mlflow_key(k)}_step{int(step)}.png")

  def write_hparams(self, hparams):
    self._mlflow.log_params({_mlflow_key(k): hparam_value(v) for k, v in hparams.items()})

  def close(self):
    self._mlflow.end_run()


def _mlflow_key(name: str) -> str:
  return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in name)


def _run_id(workdir: str) -> str:
  import hashlib  # pylint: disable=g-import-not-at-top
  return hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:16]


def _optional(module: str, field: str):
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ConfigError(f"config.{field}: the package {module!r} is not installed "
                      f"(pip install {module})") from None


def check_backends(log_to: Sequence[str]) -> None:
  """Raises ``ConfigError`` naming ``train.log_to`` if a backend cannot be used.

  Called before anything is created, so a run asked to log to W&B without
  wandb installed fails at once, not after training.
  """
  for name in log_to:
    if name == "tensorboard":
      _optional("tensorboard", "train.log_to='tensorboard'")
    elif name == "wandb":
      _optional("wandb", "train.log_to='wandb'")
    elif name == "mlflow":
      _optional("mlflow", "train.log_to='mlflow'")


TERMS = (("classification", None), ("segment", "alpha"), ("sphere", "beta"),
         ("propagation", "gamma"))


def train_scalars(record: Mapping[str, float], loss_config, learning_rate: float) -> dict:
  """What a writer gets at a logging step, from a ``metrics.jsonl`` train record.

  Each loss term unweighted (``train/<term>``, as in ``metrics.jsonl``) and
  weighted as it enters eq. 1 (``train/weighted/<term>``: times ``alpha``,
  ``beta`` or ``gamma``; 0 for a switched-off term), the total, the gradient
  norm, the learning rate, steps per second and the skipped-step count.
  """
  out = {}
  for term, weight in TERMS:
    value = float(record[term])
    on = bool(loss_config[f"use_{term}"])
    out[f"train/{term}"] = value
    out[f"train/weighted/{term}"] = (value * float(loss_config[weight]) if weight else value
                                     ) if on else 0.0
  for key in ("total", "grad_norm", "steps_per_s", "skipped"):
    out[f"train/{key}"] = float(record[key])
  out["train/learning_rate"] = float(learning_rate)
  return out


def validation_scalars(summary: Mapping[str, float], selection: float) -> dict:
  """``validation/mAP@t``, the averages, ``validation/cls_mAP`` and the selection score."""
  out = {f"validation/{k}": float(v) for k, v in summary.items()}
  out["validation/selection"] = float(selection)
  return out


def create(log_to: Sequence[str], workdir: str, *, start_step: int,
           project: str) -> MetricWriter:
  """The writers ``train.log_to`` names (``metrics.jsonl`` is written apart).

  Args:
    log_to: backend names, a subset of ``config.METRIC_BACKENDS``.
    workdir: the run's work directory (TensorBoard files go to
      ``<workdir>/tensorboard``).
    start_step: the step the run starts or resumes at.
    project: the W&B project or MLflow experiment (``train.log_project``).
  """
  writers: list[MetricWriter] = []
  for name in log_to:
    if name == "tensorboard":
      writers.append(TensorBoardWriter(os.path.join(workdir, "tensorboard"), start_step))
    elif name == "wandb":
      writers.append(WandbWriter(workdir, project))
    elif name == "mlflow":
      writers.append(MlflowWriter(workdir, project))
    else:
      raise ValueError(f"train.log_to: unknown backend {name!r}")
  return MultiWriter(writers)
