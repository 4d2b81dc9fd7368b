"""Data parallelism through JAX's own runtime: one Mesh over every device of every host.

The batch is split along the mesh's `data` axis; parameters and optimizer state are
replicated (the `model` axis, of size 1 today, leaves room to shard them later). The
same jitted train step serves one CPU, eight GPUs or a TPU pod slice: XLA inserts the
gradient all-reduce because the program is written for the global batch.
"""

from __future__ import annotations

from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from xray_jax.errors import UsageError

DATA, MODEL = "data", "model"


def initialize_distributed(*, auto: bool = False, coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None) -> None:
  """Starts JAX's multi-controller runtime when flags or the environment ask for it.

  With --coordinator_address (and --num_processes, --process_id) it connects to that
  coordinator; on TPU pods, SLURM or Open MPI, `--distributed` alone lets JAX find them.
  """
  if not auto and coordinator_address is None and num_processes is None:
    return
  kwargs = {k: v for k, v in dict(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id).items() if v is not None}
  jax.distributed.initialize(**kwargs)
  logging.info("Process %d of %d; %d local and %d global devices.", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def make_mesh() -> Mesh:
  devices = np.asarray(jax.devices()).reshape(-1, 1)
  return Mesh(devices, (DATA, MODEL))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def check_batch_size(batch_size: int, mesh: Mesh, flag: str = "--batch_size") -> None:
  n = mesh.shape[DATA]
  if batch_size % n:
    lower, upper = batch_size // n * n, (batch_size // n + 1) * n
    options = " or ".join(str(b) for b in (lower, upper) if b > 0)
    raise UsageError(f"{flag}={batch_size} is the global batch and must divide by the {n} devices; "
                     f"pass {flag}={options}.")


def round_up_to_devices(batch_size: int, mesh: Mesh) -> int:
  """The smallest multiple of the device count >= batch_size (evaluation pads and masks anyway)."""
  return -(-batch_size // mesh.size) * mesh.size


def local_batch_size(global_batch_size: int) -> int:
  return global_batch_size // jax.process_count()


def put_global_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """A batch that every process holds whole (evaluation) -> arrays split over `data`."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx]) for k, v in batch.items()}


def put_local_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's slice of the global batch (training) -> one global array."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf on every device of the mesh (leaves already there are kept)."""
  target = replicated(mesh)

  def put(x):
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(target, x.ndim):
      return x
    # Across processes, each places its own copy of the host value: no cross-host transfer.
    return jax.device_put(np.asarray(x) if jax.process_count() > 1 else x, target)

  return jax.tree.map(put, tree)


def is_primary() -> bool:
  """Only process 0 writes logs and reports; every process takes part in checkpoints."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
