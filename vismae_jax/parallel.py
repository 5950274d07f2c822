"""Multi-host start-up, the device mesh, sharding rules and global batches.

The same code runs on one CPU, eight local devices and many hosts: nothing here assumes
process_count() == 1. Batches are split over every device (the `data` and `fsdp` axes);
parameters and optimizer state are replicated, or with an `fsdp` axis > 1 sharded along their
largest dimension that the axis divides (big_vision's FSDP rule). The models name their
activation axes (models.swin.ACTIVATION_AXES) and only this module says which mesh axes those
names map to (`LOGICAL_RULES`, in force inside `activation_sharding`).
"""
import contextlib
import os

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp")
BATCH_SPEC = P(MESH_AXES)
# Logical activation axis -> mesh axes: activations are split by batch over every device and
# whole along the rest, whatever the parameters' layout.
LOGICAL_RULES = (("batch", MESH_AXES), ("height", None), ("width", None), ("embed", None))


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1):
  """Starts jax.distributed when the run spans several processes.

  Explicit arguments (from flags) win; otherwise JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID from the environment; otherwise JAX's own cluster detection where a launcher is
  recognisable (SLURM with several tasks, Open MPI, multi-host TPU). A single process needs none.
  """
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  num_processes = num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0"))
  if process_id < 0:
    process_id = int(os.environ.get("JAX_PROCESS_ID", "-1"))
  if coordinator_address:
    if num_processes < 1 or process_id < 0:
      raise ValueError("a coordinator address needs the number of processes and this process's "
                       "id (--num_processes, --process_id or JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif (int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
        or os.environ.get("TPU_WORKER_HOSTNAMES", "localhost").count(",") > 0):
    jax.distributed.initialize()
  else:
    return
  logging.info("process %d of %d, %d local of %d devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  if jax.default_backend() == "cpu":
    # Only process 0 reads and writes JAX's persistent compilation cache: on a rerun it loads
    # its executables while the others compile, and the first cross-process collective fails
    # once Gloo has waited its fixed timeout. Every process compiles instead.
    jax.config.update("jax_enable_compilation_cache", False)
    logging.info("persistent compilation cache off: every CPU process compiles, so that all "
                 "reach the first collective together")


def mesh_shape(data: int, fsdp: int, device_count: int) -> tuple[int, int]:
  """Resolves a -1 axis to the devices left over."""
  if data == -1:
    data = device_count // fsdp
  if fsdp == -1:
    fsdp = device_count // data
  return data, fsdp


def make_mesh(mesh_config) -> jax.sharding.Mesh:
  """The run's mesh over every device of every process (build it once per run)."""
  shape = mesh_shape(mesh_config.data, mesh_config.fsdp, jax.device_count())
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def fsdp_spec(shape, fsdp_size: int, min_bytes: float = 0.0, itemsize: int = 4) -> P:
  """Shards the largest dimension that `fsdp_size` divides; small or odd tensors replicate.

  Tensors under `min_bytes` stay replicated: gathering them at every use costs more latency
  than their memory is worth (big_vision's min_size_to_shard_mb).
  """
  if fsdp_size == 1 or not shape or np.prod(shape) * itemsize < min_bytes:
    return P()
  for dim in np.argsort(shape)[::-1]:
    if shape[dim] % fsdp_size == 0 and shape[dim] >= fsdp_size:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh, fsdp_min_mb: float = 0.0):
  """NamedSharding for every leaf of a (shape-only) train state."""
  fsdp_size = mesh.shape["fsdp"]
  return jax.tree.map(
      lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp_size, fsdp_min_mb * 2 ** 20,
                                              np.dtype(x.dtype).itemsize)),
      abstract_state)


@contextlib.contextmanager
def activation_sharding(mesh):
  """The context a training step is traced in: `mesh` set and LOGICAL_RULES in force, so the
  models' named activation axes become sharding constraints on this mesh."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
    yield


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, BATCH_SPEC)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """This host's rows -> one global jax.Array spanning every process."""
  return jax.make_array_from_process_local_data(sharding, local_batch)
