"""Orbax checkpoints of a whole run: train state, data-iterator position and config.

Saves are asynchronous and keep the newest `keep` steps. A step directory appears only once it
is complete, so a run killed mid-save resumes from the previous one. Restoring places every
array directly onto its sharding (no host copy of the full model first).
"""
import os

from etils import epath
import grain
import jax
import orbax.checkpoint as ocp


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True))


def save(mngr: ocp.CheckpointManager, step: int, state, data_iterator, config) -> None:
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iterator),
      config=ocp.args.JsonSave(config.to_dict())))


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state, data_iterator):
  """State at `step` laid out like `abstract_state` (ShapeDtypeStructs with shardings); the
  iterator is moved to the saved position in place."""
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(data_iterator)))
  return restored["state"]


def saved_config(mngr: ocp.CheckpointManager, step: int) -> dict:
  """The config (a dict) that the checkpoint at `step` was saved under."""
  return mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]


def abstract_like(state_shapes, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state_shapes, shardings)


def restore_on_host(directory: str, key: str | None = None):
  """An Orbax checkpoint's arrays (or its `key` subtree only) on this host's CPU.

  The target is built from the checkpoint's own metadata, so whatever topology saved it (FSDP
  over many hosts and devices) one process reads it, and only the requested subtree is read.
  """
  host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  # The handler's metadata, not the checkpointer's: an item folder has no step metadata and the
  # checkpointer would warn about it.
  tree = ocp.StandardCheckpointHandler().metadata(epath.Path(directory))
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=host),
                        tree[key] if key else tree)
  target = {key: target} if key else target
  with ocp.PyTreeCheckpointer() as checkpointer:
    restored = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
  return restored[key] if key else restored


def load_params(path: str):
  """Parameters (host arrays) of a run's newest checkpoint, or of one checkpoint step.

  `path` is a workdir, its `checkpoints/` folder, or a step folder inside it. Only the saved
  arrays are read (Orbax metadata), never pickles.
  """
  path = os.path.abspath(path)
  for candidate in (os.path.join(path, "checkpoints"), path):
    if os.path.isdir(candidate) and any(d.isdigit() for d in os.listdir(candidate)):
      steps = sorted(int(d) for d in os.listdir(candidate) if d.isdigit())
      path = os.path.join(candidate, str(steps[-1]))
      break
  state_dir = os.path.join(path, "state")
  if not os.path.isdir(state_dir):
    raise FileNotFoundError(f"{path}: no Orbax checkpoint here (expected a workdir with "
                            "checkpoints/<step>/state, or a step folder)")
  return restore_on_host(state_dir, "params")
