"""Data parallelism with JAX's own SPMD sharding: one mesh axis, ``data``.

Batches are split along their first axis (``B``, the videos) across every
device of every process; the training state (parameters, Adam moments, step
counters) is replicated. The same config runs on 1 or many devices: ``jax.jit``
partitions the step from the shardings of its inputs and inserts the
cross-device reductions of the batch-mean losses (eq. 1-13 are per-video sums
averaged over the batch) and of their gradients. Nothing in the model or the
losses mixes two videos of a batch, so no step needs the whole batch on one
device.

Multi-host: :func:`initialize_distributed` calls ``jax.distributed.initialize``
from ``config.distributed`` (or from the environment variables JAX reads on
managed clusters); each process then feeds only its own rows of every global
batch (:func:`process_rows`) and :func:`shard_batch` assembles the global array
with ``jax.make_array_from_process_local_data``.

See ``docs/scaling.md`` for launch commands and limits.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def is_main_process() -> bool:
  """Only process 0 writes logs and results in a multi-process run."""
  return jax.process_index() == 0


def initialize_distributed(config: ml_collections.ConfigDict) -> bool:
  """Starts JAX's multi-process runtime when the config or environment asks for it.

  ``config.distributed.coordinator_address`` (``host:port`` of process 0),
  ``num_processes`` and ``process_id`` are passed to
  ``jax.distributed.initialize``; with ``config.distributed.auto = True`` (or
  ``JAX_COORDINATOR_ADDRESS`` set) it is called without arguments, and JAX
  reads SLURM, Open MPI or Cloud TPU environments. Must run before any JAX
  computation. Idempotent.

  Returns:
    True if the multi-process runtime is (now) initialized.

  Raises:
    ValueError: naming ``config.distributed.*`` when the fields are inconsistent.
  """
  d = config.get("distributed")
  if d is None:
    return False
  if jax.distributed.is_initialized():
    return True
  if d.coordinator_address:
    if d.num_processes < 1:
      raise ValueError(f"config.distributed.num_processes: must be >= 1, got {d.num_processes}")
    if not 0 <= d.process_id < d.num_processes:
      raise ValueError(f"config.distributed.process_id: {d.process_id} is not in "
                       f"[0, num_processes={d.num_processes})")
    jax.distributed.initialize(coordinator_address=d.coordinator_address,
                               num_processes=d.num_processes, process_id=d.process_id)
    return True
  if d.auto or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize()
    return True
  return False


def make_mesh(num_devices: int = -1) -> Mesh:
  """A 1-D ``data`` mesh over the first ``num_devices`` global devices (-1: all).

  Raises:
    ValueError: naming ``config.parallel.num_devices`` if more devices are
      asked for than exist, or if a multi-process run leaves a process
      without a device in the mesh.
  """
  devices = jax.devices()
  if num_devices != -1:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f"config.parallel.num_devices: {num_devices} requested but "
                       f"{len(devices)} device(s) are available")
    devices = devices[:num_devices]
  if jax.process_count() > 1:
    used = {d.process_index for d in devices}
    if len(used) != jax.process_count():
      raise ValueError(
          f"config.parallel.num_devices: {num_devices} device(s) leave process(es) "
          f"{sorted(set(range(jax.process_count())) - used)} without a device; use -1 "
          "(all devices) in a multi-process run")
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Split along axis 0 (the videos of a batch) over the ``data`` axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every array of ``tree`` on every device of ``mesh``.

  In a multi-process run every process must pass the same values (the state
  is initialized from ``config.seed`` on every process, so it is).
  """
  return jax.device_put(tree, replicated(mesh))


def process_rows(global_batch_size: int, mesh: Mesh) -> slice:
  """The rows of a global batch that this process feeds (its devices' rows).

  Device ``i`` of the mesh holds rows ``[i * B/n, (i + 1) * B/n)``; a process
  owns a contiguous run of mesh devices, hence a contiguous slice of rows.

  Raises:
    ValueError: naming ``config.train.batch_size`` if the batch does not split
      evenly over the devices; if this process's devices are not contiguous in
      the mesh.
  """
  flat = list(mesh.devices.flat)
  n_dev = len(flat)
  if global_batch_size % n_dev:
    raise ValueError(f"config.train.batch_size: {global_batch_size} is not divisible by "
                     f"the number of devices ({n_dev})")
  mine = [i for i, d in enumerate(flat) if d.process_index == jax.process_index()]
  if not mine:
    raise ValueError(f"process {jax.process_index()} has no device in the mesh")
  if mine != list(range(mine[0], mine[0] + len(mine))):
    raise ValueError(f"process {jax.process_index()}'s devices are not contiguous in the "
                     f"mesh (positions {mine})")
  per_device = global_batch_size // n_dev
  return slice(mine[0] * per_device, (mine[-1] + 1) * per_device)


def shard_batch(local_batch: dict, mesh: Mesh, global_batch_size: int) -> dict:
  """Global arrays sharded along ``data`` from this process's rows of a batch.

  Args:
    local_batch: the batch pytree of ``docs/design.md`` holding only this
      process's rows (``process_rows``; all rows in a single-process run);
      non-array entries (e.g. ``video_ids``) are dropped. Every process must
      pass arrays of the same trailing shape (the same padded ``T``).
    mesh: the data mesh.
    global_batch_size: rows of the global batch ``B``.

  Returns:
    The same keys, as ``jax.Array`` of shape ``(B, ...)`` with sharding
    ``P("data")``: each device holds ``B / num_devices`` rows.

  Raises:
    ValueError: if an array does not hold this process's share of the rows.
  """
  sharding = batch_sharding(mesh)
  rows = process_rows(global_batch_size, mesh)
  want = rows.stop - rows.start
  out = {}
  for key, value in local_batch.items():
    if not isinstance(value, np.ndarray):
      continue
    if value.ndim == 0 or value.shape[0] != want:
      raise ValueError(f"shard_batch: batch[{key!r}] has shape {value.shape}; this process "
                       f"feeds {want} of the {global_batch_size} rows")
    shape = (global_batch_size,) + value.shape[1:]
    out[key] = jax.make_array_from_process_local_data(sharding, value, shape)
  return out
