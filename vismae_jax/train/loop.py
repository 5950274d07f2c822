"""One training loop for every task: a jitted, sharded step; metrics, checkpoints, pictures.

A task (pretrain.make_task, finetune.make_task) supplies its initial parameters, the loss and
this host's batches; everything else is shared. A self-distillation task (DINO) also keeps
state beside the parameters, outside the gradient: its EMA teacher and centres (`Task.extra`).
The step is a pure function `step(state, batch, schedule) -> (state, metrics)` whose randomness is
`fold_in(state.rng, state.step)`, so a resumed run replays an uninterrupted one exactly. The
learning-rate schedule is an argument (optim.schedule), not a constant of the compiled step, and
the step functions are cached per (loss, optimizer): the runs of a fine-tuning protocol, which
differ only in data and length, trace and compile the step once.
"""
import dataclasses
import functools
import json
import os
import time
from typing import Callable, Optional

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import logging
from jax.experimental import multihost_utils

from data_pipelines import disk, pretrain_input, signals
from vismae_jax import checkpoint, parallel, resume_guard
from vismae_jax.train import extra_state, optim


@dataclasses.dataclass
class Task:
  """What the loop needs from a task."""
  init_params: Callable        # rng -> params, traced under jit (random initialisation)
  loss_fn: Callable            # (params, batch, rng) -> scalar loss
  dataset: grain.MapDataset    # this host's batches (arrays or dicts of arrays), endless
  num_examples: int            # one epoch
  # host random params -> host params, e.g. the random ones with pretrained weights
  # transferred in
  initial_params: Optional[Callable] = None
  on_checkpoint: Optional[Callable] = None   # (params, step) -> {name: value}: figures, validation
  best_metric: str = ""        # also keep the step with the highest on_checkpoint[best_metric]
  outputs: dict = dataclasses.field(default_factory=dict)  # {what: path} for the closing line
  extra: Optional[extra_state.ExtraState] = None  # outside the gradient (self-distillation)


@functools.lru_cache(maxsize=8)
def make_train_step(loss_fn, tx, update_extra=None):
  """step(state, batch, schedule) of `loss_fn` under `tx` (and ExtraState.update where the
  task keeps extra state): one function object per combination."""
  def step(state, batch, schedule):
    rng = jax.random.fold_in(state["rng"], state["step"])
    aux = {}
    if update_extra is None:
      loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch, rng)
    else:
      (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          state["params"], batch, rng, state["extra"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    lr = optim.learning_rate(state["step"], schedule)
    updates = optim.hold_encoder(optax.tree.scale(lr, updates),
                                 state["step"] < schedule["probe_steps"])
    new_state = dict(state, step=state["step"] + 1, opt_state=opt_state,
                     params=optax.apply_updates(state["params"], updates))
    if update_extra is not None:
      new_state["extra"] = update_extra(state["extra"], new_state["params"], aux, state["step"],
                                        schedule)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "learning_rate": lr,
                       **aux.get("metrics", {})}
  return step


@functools.lru_cache(maxsize=8)
def make_state_initializer(tx, seed: int, init_extra=None):
  """params -> the step-0 train state (jit it with out_shardings)."""
  train_rng = jax.random.split(jax.random.PRNGKey(seed))[1]

  def init_state(params):
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": train_rng}
    if init_extra is not None:
      state["extra"] = init_extra(params)
    return state
  return init_state


def init_key(seed: int):
  """The key of a run's random parameters, so that others can remake them (feature reuse)."""
  return jax.random.split(jax.random.PRNGKey(seed))[0]


def initial_state(task: Task, init_state, shardings, seed: int):
  """The sharded step-0 state: random parameters made on device, then the task's own.

  Why one initialisation for both: it is a compilation as long as a forward pass's, and the
  runs from random and from pretrained weights share it.
  """
  param_shardings = shardings["params"]
  params = jax.jit(task.init_params, out_shardings=param_shardings)(init_key(seed))
  if task.initial_params is not None:
    params = jax.device_put(task.initial_params(jax.device_get(params)), param_shardings)
  return jax.jit(init_state, out_shardings=shardings, donate_argnums=0)(params)


def abstract_params(task: Task):
  return jax.eval_shape(task.init_params, jax.random.PRNGKey(0))


def compile_train_step(task: Task, tx, state_shardings, mesh):
  """The jitted, sharded, state-donating step(state, batch, schedule)."""
  return jax.jit(make_train_step(task.loss_fn, tx, task.extra and task.extra.update),
                 in_shardings=(state_shardings, parallel.batch_sharding(mesh),
                               parallel.replicated(mesh)),
                 out_shardings=(state_shardings, None), donate_argnums=0)


def _keep_steps_up_to(path: str, step: int):
  """Drops the lines of a metrics.jsonl after `step` (and a line cut short by a kill)."""
  if not os.path.exists(path):
    return
  kept = []
  with open(path) as f:
    for line in f:
      try:
        if json.loads(line)["step"] <= step:
          kept.append(line)
      except (ValueError, KeyError):
        continue
  with open(path + ".tmp", "w") as f:
    f.writelines(kept)
  os.replace(path + ".tmp", path)


class _Logger:
  """Scalars to TensorBoard and metrics.jsonl (process 0), a progress bar with rate and ETA."""
  COMMON = ("loss", "learning_rate", "grad_norm")

  def __init__(self, workdir: str, total_steps: int, start: int, batch: int):
    self.primary = jax.process_index() == 0
    self.batch, self.total_steps = batch, total_steps
    self.tb_dir = os.path.join(workdir, "tensorboard")
    self.tb = self.jsonl = None
    if self.primary:
      # Imported here, not at the top: tensorboardX imports PyTorch where it is installed, which
      # added about 1 s to every command's start, --help and --only_check_args included.
      from tensorboardX import SummaryWriter
      # A resumed run replays the steps after its checkpoint: what was logged of them before
      # goes, so that every step has one entry (TensorBoard's purge_step hides the old ones).
      self.tb = SummaryWriter(self.tb_dir, purge_step=start + 1 if start else None)
      path = os.path.join(workdir, "metrics.jsonl")
      _keep_steps_up_to(path, start)
      self.jsonl = open(path, "a")
    self.bar = tqdm.tqdm(total=total_steps, initial=start, unit="step",
                         disable=None if self.primary else True,  # None: off unless a tty
                         dynamic_ncols=True, mininterval=5.0)
    self.last_step, self.last_time = start, time.perf_counter()

  def write(self, step: int, metrics: dict):
    now = time.perf_counter()
    steps = step - self.last_step
    rate = steps * self.batch / max(now - self.last_time, 1e-9)
    eta = (self.total_steps - step) * (now - self.last_time) / max(steps, 1)
    self.last_step, self.last_time = step, now
    scalars = {**metrics, "images_per_s": rate}
    self.bar.update(steps)
    self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['learning_rate']:.2e}",
                         img_s=f"{rate:.1f}")
    # The task's own metrics too (DINO's teacher entropy and spread), in the order it gave them.
    own = "".join(f" {k} {v:.4g}" for k, v in metrics.items() if k not in self.COMMON)
    logging.info("step %d/%d loss %.5f lr %.3e grad_norm %.3f%s images/s %.1f ETA %.0fs", step,
                 self.total_steps, metrics["loss"], metrics["learning_rate"],
                 metrics["grad_norm"], own, rate, eta)
    self.scalars(step, scalars)

  def scalars(self, step: int, scalars: dict):
    if self.primary and scalars:
      for name, value in scalars.items():
        self.tb.add_scalar(name, value, step)
      self.tb.flush()
      self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
      self.jsonl.flush()

  def restart_clock(self):
    """Checkpoints and figures are not training: keep them out of images/s."""
    self.last_time = time.perf_counter()

  def close(self):
    self.bar.close()
    if self.primary:
      self.tb.close()
      self.jsonl.close()


def stop_agreed(stop: signals.StopRequests, at_flush: bool) -> bool:
  """Whether every process stops after this step. Multi-host runs agree on the step: the hosts
  compare their requests when they flush metrics (every config.log_every steps), so each stops
  after the same step; one process stops after the step the signal came in."""
  if jax.process_count() == 1:
    return stop.received is not None
  if not at_flush:
    return False
  return bool(np.max(multihost_utils.process_allgather(np.int32(stop.received is not None))))


def resume(mngr, config, abstract_state, data_iterator):
  """The state of the newest checkpoint that verifies and restores; damaged newer ones are
  named in one line each and set aside. A checkpoint made under another config is refused
  (resume_guard), not skipped: that is the user's choice to make, not damage."""
  for step in sorted(mngr.all_steps(), reverse=True):
    problem = checkpoint.damage(mngr, step)
    if not problem:
      try:
        saved = checkpoint.saved_config(mngr, step)
      except Exception as e:  # broken metadata: Orbax's own error, in one line
        problem = f"its config cannot be read ({type(e).__name__}: {str(e).splitlines()[0]})"
    if not problem:
      resume_guard.check_unchanged(config, saved, resume_guard.RUN_RESUMABLE,
                                   f"checkpoint {step} in {mngr.directory}")
      try:
        state = checkpoint.restore(mngr, step, abstract_state, data_iterator)
      except Exception as e:
        problem = f"it does not restore ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    if not problem:
      unsealed = " (unsealed: killed before its checksums were written)" if problem is None else ""
      logging.info("resumed from step %d in %s%s", step, mngr.directory, unsealed)
      return state
    where = checkpoint.set_aside(mngr, step)
    logging.warning("checkpoint %d in %s is damaged: %s; set aside in %s, trying the one before",
                    step, mngr.directory, problem, where)
  raise checkpoint.CheckpointDamaged(
      f"no checkpoint in {mngr.directory} restores (each is set aside in damaged_checkpoints/ "
      "with the reason in the log): start over in a new workdir, or restore the folder from a "
      "backup")


def run_steps(config, num_examples: int) -> int:
  """A run's length: config.total_steps, else num_epochs over num_examples, at least min_steps
  (label_efficiency_plan.py counts a run's images with it before it runs)."""
  epoch_steps = int(config.num_epochs * (num_examples / config.batch_size))  # as train logs it
  return config.total_steps or max(1, config.get("min_steps", 0), epoch_steps)


def train(task: Task, config, workdir: str, mesh) -> dict:
  """Runs (or resumes) `task` as `config` describes in `workdir` on `mesh`; returns the last
  metrics. On SIGTERM or SIGINT it checkpoints the step it is at and raises signals.Stopped."""
  with signals.StopRequests("after this step, with a checkpoint") as stop:
    return _train(task, config, workdir, mesh, stop)


def _train(task: Task, config, workdir: str, mesh, stop: signals.StopRequests) -> dict:
  os.makedirs(workdir, exist_ok=True)
  per_host_batch = config.batch_size // jax.process_count()
  data_iterator = pretrain_input.make_iterator(task.dataset, config.data.workers)

  # Optimiser and schedule.
  steps_per_epoch = task.num_examples / config.batch_size
  epoch_steps = int(config.num_epochs * steps_per_epoch)
  total_steps = run_steps(config, task.num_examples)
  tx = optim.make_optimizer(config)
  schedule = jax.tree.map(lambda x: parallel.global_batch(x, parallel.replicated(mesh)),
                          optim.schedule(config, steps_per_epoch, total_steps))
  init_state = make_state_initializer(tx, config.seed, task.extra and task.extra.init)
  abstract_state = jax.eval_shape(init_state, abstract_params(task))
  shardings = parallel.state_shardings(abstract_state, mesh, config.mesh.fsdp_min_mb)
  batch_sharding = parallel.batch_sharding(mesh)

  # Fresh start or resume, with room for the checkpoints still to come (Orbax writes a new one
  # before it deletes the oldest).
  mngr = checkpoint.manager(workdir, config.keep_checkpoints, task.best_metric)
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_state))
  copies = max(1, config.keep_checkpoints + bool(task.best_metric) + 1 - len(mngr.all_steps()))
  disk.check_free(str(mngr.directory), state_bytes * copies,
                  f"{copies} more checkpoints of {disk.human(state_bytes)}",
                  "lower config.keep_checkpoints")
  if mngr.latest_step() is None:
    state = initial_state(task, init_state, shardings, config.seed)
  else:
    state = resume(mngr, config, checkpoint.abstract_like(abstract_state, shardings),
                   data_iterator)
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  length = ("config.total_steps; num_epochs is not used" if config.total_steps else
            f"{config.num_epochs:g} epochs" + (
                f" are {epoch_steps} steps, raised to config.min_steps"
                if total_steps > epoch_steps else ""))
  logging.info("%d examples, global batch %d (%d per host), %d steps (%s), %.2fM parameters, "
               "mesh %s", task.num_examples, config.batch_size, per_host_batch, total_steps,
               length, n_params / 1e6, dict(mesh.shape))

  train_step = compile_train_step(task, tx, shardings, mesh)
  start = int(state["step"])
  logger = _Logger(workdir, total_steps, start, config.batch_size)
  pending, last = [], {}

  @checkpoint.space_errors_in_one_line(mngr)
  def flush(step):
    """Brings the metrics since the last flush to the host; stops on a non-finite loss."""
    nonlocal pending, last
    if not pending:
      return
    values = jax.device_get(pending)
    losses = np.array([m["loss"] for m in values])
    if not np.all(np.isfinite(losses)):
      mngr.wait_until_finished()
      first_bad = step - len(values) + 1 + int(np.argmin(np.isfinite(losses)))
      raise FloatingPointError(
          f"loss became {losses[~np.isfinite(losses)][0]} at step {first_bad}; stopped without "
          f"saving. The last good checkpoint is step {mngr.latest_step()} in {mngr.directory}; "
          "lower config.optim.lr, set config.optim.clip_norm, or use config.dtype=float32.")
    last = {k: float(np.mean([m[k] for m in values])) for k in values[0]}
    logger.write(step, last)
    warning = task.extra.check(last) if task.extra and task.extra.check else ""
    if warning:
      logging.warning("step %d: %s", step, warning)
    pending = []

  @checkpoint.space_errors_in_one_line(mngr)
  def save(step):
    """A checkpoint of `step`, after the task's evaluation (validation picks the best) and
    figures; a full disk on the way ends the run in one line."""
    evaluated = task.on_checkpoint(state["params"], step) if task.on_checkpoint else {}
    if evaluated:
      logger.scalars(step, evaluated)
      logging.info("step %d: %s", step, evaluated)
      last.update(evaluated)
    checkpoint.save(mngr, step, state, data_iterator, config,
                    {task.best_metric: evaluated[task.best_metric]} if task.best_metric
                    else None)
    logger.restart_clock()

  for step in range(start + 1, total_steps + 1):
    batch = jax.tree.map(lambda x: parallel.global_batch(x, batch_sharding),
                         next(data_iterator))
    with parallel.activation_sharding(mesh):  # the step is traced with the sharding rules
      state, metrics = train_step(state, batch, schedule)
    pending.append(metrics)
    is_last = step == total_steps
    at_flush = step % config.log_every == 0 or step % config.checkpoint_every == 0 or is_last
    stopping = stop_agreed(stop, at_flush)
    if at_flush or stopping:
      flush(step)
    if step % config.checkpoint_every == 0 or is_last or stopping:
      save(step)
    if stopping and not is_last:
      checkpoint.finish(mngr)
      logger.close()
      why = stop.received or "another host's signal"
      raise signals.Stopped(f"stopped on {why} after step {step} of {total_steps}, "
                            f"checkpointed in {mngr.directory}; the same command resumes "
                            "from there")
  checkpoint.finish(mngr)
  logger.close()
  if jax.process_index() == 0:
    outputs = {"Checkpoints": mngr.directory, "TensorBoard": f"{logger.tb_dir} (also "
               "metrics.jsonl)", **task.outputs}
    if task.best_metric:
      best = mngr.best_step()
      outputs[f"Best {task.best_metric} ({mngr.metrics(best)[task.best_metric]:.4f})"] = (
          f"step {best}")
    print(f"Done: {total_steps} steps. " + " | ".join(f"{k}: {v}" for k, v in outputs.items()),
          flush=True)
  return last
