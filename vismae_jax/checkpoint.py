"""Orbax checkpoints of a whole run: train state, data-iterator position, config, and the best.

Saves are asynchronous. A manager keeps the newest `keep` steps for resuming and, for a run
that validates (fine-tuning), also the step that scored best on its validation metric:
Orbax's own preservation policies, with the score stored beside each step. A step folder
appears only once it is complete, so a run killed mid-save resumes from the previous one.
Restoring places every array directly onto its sharding (no host copy of the full model first).

Orbax checks that a step is complete and readable, not that its bytes are the ones written: a
flipped block in an uncompressed array file restores as silently wrong values. So once a save
has finished, `seal` records the SHA-256 of every file of the step (in `checkpoint_checksums/`
beside `checkpoints/`, process 0, where the workdir is shared), and `damage` compares them
before a resume: the loop then falls back to the newest step that verifies and restores, and
sets the damaged ones aside (`damaged_checkpoints/`). A step killed before it was sealed is
restored on Orbax's checks alone, and the log says so.
"""
import contextlib
import hashlib
import json
import math
import os
import shutil

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from data_pipelines import disk


def _score(best_metric: str):
  """The ranking of checkpoints by `best_metric`; an undefined score (NaN: e.g. a one-class
  validation AUC) ranks below every defined one."""
  def score(metrics):
    value = float(metrics[best_metric])
    return -math.inf if math.isnan(value) else value
  return score


def _options(keep: int | None, best_metric: str, **kwargs) -> ocp.CheckpointManagerOptions:
  policies = [checkpoint_managers.LatestN(n=keep)]
  if best_metric:
    policies.append(checkpoint_managers.BestN(get_metric_fn=_score(best_metric), n=1,
                                              keep_checkpoints_without_metrics=False))
  return ocp.CheckpointManagerOptions(
      preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
      best_fn=_score(best_metric) if best_metric else None, best_mode="max", **kwargs)


def manager(workdir: str, keep: int, best_metric: str = "") -> ocp.CheckpointManager:
  """Checkpoints of the run in `workdir`: the newest `keep`, plus the best by `best_metric`."""
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=_options(keep, best_metric,
                                                enable_async_checkpointing=True))


class CheckpointDamaged(OSError):
  """No checkpoint of a run restores; the message names the folder and what was wrong."""


def _checksums_dir(mngr: ocp.CheckpointManager) -> str:
  return os.path.join(os.path.dirname(str(mngr.directory)), "checkpoint_checksums")


def _digests(step_dir: str) -> dict:
  """{path relative to the step folder: SHA-256} of every file of a step."""
  digests = {}
  for folder, _, names in os.walk(step_dir):
    for name in sorted(names):
      path = os.path.join(folder, name)
      h = hashlib.sha256()
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          h.update(block)
      digests[os.path.relpath(path, step_dir)] = h.hexdigest()
  return digests


def seal(mngr: ocp.CheckpointManager) -> None:
  """Records the checksums of every finished step not sealed yet, and forgets deleted steps'
  (process 0; call after the saves have finished)."""
  if jax.process_index() != 0:
    return
  folder = _checksums_dir(mngr)
  os.makedirs(folder, exist_ok=True)
  steps = set(mngr.all_steps())
  for name in os.listdir(folder):
    if name.endswith(".json") and int(name[:-5]) not in steps:
      os.remove(os.path.join(folder, name))
  for step in steps:
    path = os.path.join(folder, f"{step}.json")
    if not os.path.exists(path):
      with open(path + ".tmp", "w") as f:
        json.dump(_digests(os.path.join(str(mngr.directory), str(step))), f)
      os.replace(path + ".tmp", path)


def damage(mngr: ocp.CheckpointManager, step: int) -> str:
  """What is wrong with the files of `step` against its seal ("" when they match, and None
  when it was never sealed: a run killed between the save and the seal)."""
  path = os.path.join(_checksums_dir(mngr), f"{step}.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    sealed = json.load(f)
  found = _digests(os.path.join(str(mngr.directory), str(step)))
  missing = sorted(set(sealed) - set(found))
  changed = sorted(k for k in sealed if k in found and found[k] != sealed[k])
  if missing:
    return f"{len(missing)} files missing ({missing[0]}, ...)"
  if changed:
    return f"{len(changed)} files changed since they were written ({changed[0]}, ...)"
  return ""


def set_aside(mngr: ocp.CheckpointManager, step: int) -> str:
  """Moves a damaged step out of the checkpoints (to `damaged_checkpoints/`, kept for a look),
  so that the run neither retries nor overwrites it; returns where it went."""
  target = os.path.join(os.path.dirname(str(mngr.directory)), "damaged_checkpoints", str(step))
  if jax.process_index() == 0:
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(os.path.join(str(mngr.directory), str(step)), target)
    checksums = os.path.join(_checksums_dir(mngr), f"{step}.json")
    if os.path.exists(checksums):
      os.remove(checksums)
  multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
  mngr.reload()
  return target


def _out_of_space(mngr: ocp.CheckpointManager) -> disk.OutOfSpace:
  """A full disk during a run (a checkpoint, a figure, a log line), in one line: the folder and
  the newest complete checkpoint. An interrupted save's temporary folder goes (Orbax never
  takes it for a finished step)."""
  directory = str(mngr.directory)
  for name in os.listdir(directory):
    if ".orbax-checkpoint-tmp" in name:
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
  mngr.reload()
  kept = mngr.all_steps()
  what = f"checkpoint {max(kept)}, the last complete one" if kept else "no checkpoint yet"
  return disk.OutOfSpace(f"{directory}: out of disk space; kept: {what} "
                         f"({disk.human(disk.free_bytes(directory))} free now). Free space "
                         "there and rerun the same command to resume")


@contextlib.contextmanager
def space_errors_in_one_line(mngr: ocp.CheckpointManager):
  """Turns a full disk inside the block into disk.OutOfSpace naming what `mngr` kept."""
  try:
    yield
  except Exception as e:
    if disk.is_out_of_space(e):
      raise _out_of_space(mngr) from None
    raise


def save(mngr: ocp.CheckpointManager, step: int, state, data_iterator, config,
         metrics: dict | None = None) -> None:
  """Saves everything a resume needs; `metrics` ({best_metric: value}) ranks the step. The
  previous save is finished and sealed first (Orbax waits for it before a new one anyway)."""
  with space_errors_in_one_line(mngr):
    mngr.wait_until_finished()
    seal(mngr)
    mngr.save(step, metrics=metrics, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave(config.to_dict())))


def finish(mngr: ocp.CheckpointManager) -> None:
  """Waits for the last save to end and seals it."""
  with space_errors_in_one_line(mngr):
    mngr.wait_until_finished()
    seal(mngr)


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
  """An Orbax checkpoint's arrays (or the subtree at `key`, a path such as "extra/teacher") on
  this host's CPU.

  The target is built from the checkpoint's own metadata, so whatever topology saved it (FSDP
  over many hosts and devices) one process reads it, and only the requested subtree is read.
  """
  host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  # The handler's metadata, not the checkpointer's: an item folder has no step metadata and the
  # checkpointer would warn about it.
  tree = ocp.StandardCheckpointHandler().metadata(epath.Path(directory))
  path = key.split("/") if key else []
  for name in path:
    tree = tree[name]
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=host), tree)
  for name in reversed(path):
    target = {name: target}
  with ocp.PyTreeCheckpointer() as checkpointer:
    restored = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
  for name in path:
    restored = restored[name]
  return restored


def handed_on(directory: str) -> str:
  """Which weights of a saved state the next stage takes: the EMA teacher where the run kept
  one (self-distillation: DINO's teacher is the better encoder, and what its paper evaluates)
  unless the run's method section says `hand_on="student"` (config.smit.hand_on), else the
  trained parameters."""
  tree = ocp.StandardCheckpointHandler().metadata(epath.Path(directory))
  if "teacher" not in tree.get("extra", {}):
    return "params"
  saved = epath.Path(directory).parent / "config"
  config = ocp.JsonCheckpointHandler().restore(saved) if saved.exists() else {}
  section = config.get(config.get("method", ""), {})
  return "params" if section.get("hand_on") == "student" else "extra/teacher"


def chosen_step(workdir: str, best_metric: str = "") -> tuple[str, int | None]:
  """(checkpoints folder, step): the best step by `best_metric` where the run kept one, else
  the newest; step None when there is none."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    return directory, None
  mngr = ocp.CheckpointManager(directory, options=_options(None, best_metric, create=False))
  return directory, (mngr.best_step() if best_metric else None) or mngr.latest_step()


def load_params(path: str, best_metric: str = ""):
  """Parameters (host arrays) of a run (see `chosen_step`) or of one of its step folders: the
  weights it hands on (`handed_on`).

  Only the saved arrays are read (Orbax metadata), never pickles.
  """
  path = os.path.abspath(path)
  if os.path.basename(path) == "checkpoints":
    path = os.path.dirname(path)
  step_dir = path
  if not os.path.isdir(os.path.join(path, "state")):
    directory, step = chosen_step(path, best_metric)
    step_dir = os.path.join(directory, str(step))
  if not os.path.isdir(os.path.join(step_dir, "state")):
    raise FileNotFoundError(f"{path}: no Orbax checkpoint here (expected a workdir with "
                            "checkpoints/<step>/state, or a step folder)")
  state_dir = os.path.join(step_dir, "state")
  return restore_on_host(state_dir, handed_on(state_dir))


def keep_best_only(workdir: str, best_metric: str) -> None:
  """Deletes every checkpoint of a finished run but its best: nothing resumes it any more, and
  a fine-tuning protocol keeps one checkpoint per run instead of two."""
  directory, best = chosen_step(workdir, best_metric)
  mngr = ocp.CheckpointManager(directory, options=_options(None, best_metric))
  for step in mngr.all_steps():
    if step != best:
      mngr.delete(step)
  seal(mngr)  # forgets the deleted steps' checksums
  mngr.close()
