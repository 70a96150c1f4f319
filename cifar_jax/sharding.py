"""The device mesh and where arrays live on it: all sharding decisions are here.

One 1-D mesh over every device (of every process) with the axis `data`. The
train state is replicated; dataset splits are sharded by rows, so each device
holds 1/n of every split and the whole dataset stays on the accelerators. With
several processes, each process holds the rows of its own devices only.
"""
import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'


def create_mesh() -> jax.sharding.Mesh:
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def row_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def pad_rows(array: np.ndarray, multiple: int) -> np.ndarray:
  """Zero rows appended so the row count divides by `multiple`."""
  missing = -len(array) % multiple
  if not missing:
    return array
  return np.concatenate([array, np.zeros((missing, *array.shape[1:]), array.dtype)])


def shard_rows(array: np.ndarray, mesh) -> jax.Array:
  """Places a host array on the mesh split by rows (padded to divide evenly).

  Every process passes the same whole array and copies to its devices only the rows they
  hold, whatever order the mesh puts the devices in.
  """
  array = pad_rows(array, mesh.size)
  return jax.make_array_from_callback(array.shape, row_sharded(mesh), lambda index: array[index])
