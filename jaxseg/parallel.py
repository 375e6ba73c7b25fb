"""Data parallelism with JAX's own SPMD sharding: one mesh axis, ``data``.

Batches are split along their first axis across every device of every
process; the training state is replicated. The same config runs on 1 or many
devices: ``jax.jit`` inserts the cross-device reductions of the batch-mean
losses and their gradients.

Multi-host: :func:`initialize_distributed` calls ``jax.distributed.initialize``
from ``config.distributed`` (or from the environment variables JAX reads on
managed clusters); each process then builds only its own rows of every global
batch and :func:`shard_batch` assembles the global array with
``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed(config: ml_collections.ConfigDict) -> bool:
  """Starts JAX's multi-process runtime when the config or environment asks for it.

  ``config.distributed.coordinator_address`` (``host:port`` of process 0),
  ``num_processes`` and ``process_id`` are passed to
  ``jax.distributed.initialize``; with ``config.distributed.auto = True`` it is
  called without arguments (SLURM, Open MPI and Cloud TPU environments are
  detected by JAX). Idempotent.

  Returns:
    True if the multi-process runtime is (now) initialized.
  """
  d = config.get("distributed")
  if d is None:
    return False
  if jax.distributed.is_initialized():
    return True
  if d.coordinator_address:
    jax.distributed.initialize(coordinator_address=d.coordinator_address,
                               num_processes=d.num_processes, process_id=d.process_id)
    return True
  if d.auto or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize()
    return True
  return False


def make_mesh(num_devices: int = -1) -> Mesh:
  """A 1-D mesh over the first ``num_devices`` global devices (-1: all)."""
  devices = jax.devices()
  if num_devices != -1:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f"config.parallel.num_devices: {num_devices} requested but "
                       f"{len(devices)} device(s) are available")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every array of ``tree`` on every device of ``mesh``."""
  return jax.device_put(tree, replicated(mesh))


def process_rows(global_batch_size: int, mesh: Mesh) -> slice:
  """The rows of a global batch that this process feeds (its devices' rows).

  Raises:
    ValueError: if the batch does not split evenly over the devices.
  """
  n_dev = mesh.devices.size
  if global_batch_size % n_dev:
    raise ValueError(f"config.train.batch_size: {global_batch_size} is not divisible by "
                     f"the number of devices ({n_dev})")
  local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  per_device = global_batch_size // n_dev
  first = list(mesh.devices.flat).index(local[0])
  return slice(first * per_device, (first + len(local)) * per_device)


def shard_batch(local_batch: dict, mesh: Mesh, global_batch_size: int) -> dict:
  """Global arrays sharded along ``data`` from this process's rows of a batch.

  Args:
    local_batch: the batch pytree of ``docs/design.md`` holding only this
      process's rows (all rows in a single-process run); non-array entries
      (e.g. ``video_ids``) are dropped.
    mesh: the data mesh.
    global_batch_size: rows of the global batch.

  Returns:
    The same keys, as ``jax.Array`` of leading dimension ``global_batch_size``.
  """
  sharding = batch_sharding(mesh)
  out = {}
  for key, value in local_batch.items():
    if not isinstance(value, np.ndarray):
      continue
    shape = (global_batch_size,) + value.shape[1:]
    out[key] = jax.make_array_from_process_local_data(sharding, value, shape)
  return out
