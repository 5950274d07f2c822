"""Orbax checkpoints of a whole run: train state, data-iterator position and config.

Saves are asynchronous and keep the newest `keep` steps. A step directory appears only once it
is complete, so a run killed mid-save resumes from the previous one. Restoring places every
array directly onto its sharding (no host copy of the full model first).
"""
import os

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


def abstract_like(state_shapes, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state_shapes, shardings)
