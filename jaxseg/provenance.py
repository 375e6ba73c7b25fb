"""What produced a result: config, data fingerprint, label seed, versions, commit."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess

import ml_collections

from jaxseg.data.video import Dataset


def dataset_fingerprint(dataset: Dataset) -> str:
  """SHA-256 of the annotations and of every feature array's shape (not values).

  Two runs with the same fingerprint read the same videos, instances, classes
  and feature shapes, whatever file layout they came from.
  """
  h = hashlib.sha256()
  h.update(json.dumps(dataset.class_names).encode())
  h.update(json.dumps(dataset.ground_truth(), sort_keys=True).encode())
  for v in sorted(dataset.videos, key=lambda v: v.video_id):
    h.update(f"{v.video_id}:{tuple(v.features.shape)}:{v.feature_rate!r};".encode())
  return h.hexdigest()


def git_commit(path: str | None = None) -> str | None:
  """The project's git commit (with ``-dirty`` if modified), or None outside git."""
  root = path or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    sha = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                         text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10,
                           check=True).stdout.strip()
    return sha + ("-dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return None


def versions() -> dict:
  """Versions of Python and of the numerical stack."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  import numpy  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  return {"python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "flax": flax.__version__,
          "optax": optax.__version__, "numpy": numpy.__version__,
          "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind)}


def collect(config: ml_collections.ConfigDict, dataset: Dataset, segment_labels,
            workdir: str | None = None) -> dict:
  """Everything a results file carries about what produced it."""
  return {
      "config": json.loads(config.to_json_best_effort()),
      "dataset_fingerprint": dataset_fingerprint(dataset),
      "label_mode": segment_labels.mode,
      "label_seed": segment_labels.seed,
      "seed": config.seed,
      "versions": versions(),
      "git_commit": git_commit(),
      "workdir": os.path.abspath(workdir) if workdir else None,
      # Videos the reader skipped (data.skip_bad_videos): [[video_id, reason], ...].
      "skipped_videos": [[v, r] for v, r in dataset.skipped_videos],
  }


def flat_columns(prov: dict) -> dict:
  """The provenance fields a results table carries as constant columns."""
  v = prov["versions"]
  return {"protocol": prov["config"]["eval"]["protocol"],
          "label_mode": prov["label_mode"], "label_seed": prov["label_seed"],
          "seed": prov["seed"], "dataset_fingerprint": prov["dataset_fingerprint"][:16],
          "git_commit": prov["git_commit"] or "", "jax": v["jax"], "jaxlib": v["jaxlib"],
          "flax": v["flax"], "optax": v["optax"], "device": v["device"]}
