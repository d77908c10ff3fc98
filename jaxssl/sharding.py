"""The device mesh and the placement of replicated state and sharded batches.

jaxssl trains data-parallel over a 1-D mesh whose axis is named `DATA_AXIS`.
The same names are used by `jax.shard_map` (collectives in the per-device
step), by `NamedSharding` (where global arrays live), and by the models'
global BatchNorm.
"""

from typing import Any, Optional, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

DATA_AXIS = "data"


def data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of state that every device holds in full."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding of a global batch split along its leading axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> int:
  """Per-device batch size; a clear error if `batch_size` does not divide evenly."""
  num_devices = mesh.devices.size
  if batch_size <= 0 or batch_size % num_devices:
    raise ValueError(
        f"config.{what}={batch_size} must be a positive multiple of the "
        f"number of devices ({num_devices}: {jax.process_count()} process(es) "
        f"x {jax.local_device_count()} local device(s)); e.g. "
        f"{max(1, batch_size // num_devices) * num_devices}")
  return batch_size // num_devices


def global_batch(local: Any, mesh: Mesh) -> Any:
  """Assembles this process's slice of a batch into global `jax.Array`s.

  Each process passes the rows it loaded (its contiguous slice of the global
  batch, `process_index`-th of `process_count`); the result is a global array
  sharded over `DATA_AXIS` (big_vision's `make_fsarray_from_local_slice`).
  """
  sharding = batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local)
