"""The training loop: one jitted, sharded step; metrics, checkpoints and pictures around it.

The step is a pure function `step(state, batch) -> (state, metrics)`; its randomness is
`fold_in(state.rng, state.step)`, so a resumed run replays an uninterrupted one exactly.
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P
from tensorboardX import SummaryWriter

from data_pipelines import pretrain_input, records, sample
from vismae_jax import checkpoint, config_lib, figures, parallel
from vismae_jax.train import optim, pretrain


def resolve_data_dir(config, workdir: str) -> str:
  """The shard directory: config.data.path, or the bundled sample written into the workdir."""
  if config.data.source == "sample":
    # One copy per process: hosts need not share a filesystem.
    return sample.write_sample_shards(
        os.path.join(workdir, "sample_shards", f"process_{jax.process_index()}"))
  return config.data.path


def make_train_step(loss_fn, tx, schedule):
  def step(state, images):
    rng = jax.random.fold_in(state["rng"], state["step"])
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], images, rng)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = dict(state, step=state["step"] + 1, opt_state=opt_state,
                     params=optax.apply_updates(state["params"], updates))
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads),
                       "learning_rate": schedule(state["step"])}
  return step


def make_state_initializer(model, config, tx):
  """A no-argument function building the step-0 train state (jit it with out_shardings)."""
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))

  def init_state():
    params = pretrain.init_params(model, config, init_rng)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
            "rng": train_rng}
  return init_state


def compile_train_step(model, config, tx, schedule, state_shardings, mesh):
  """The jitted, sharded, state-donating pretraining step."""
  return jax.jit(make_train_step(pretrain.make_loss_fn(model, config), tx, schedule),
                 in_shardings=(state_shardings, parallel.batch_sharding(mesh)),
                 out_shardings=(state_shardings, None), donate_argnums=0)


def figure_batch(data_dir: str, config) -> np.ndarray:
  """Records spread evenly over the (filtered) dataset: the same pictures at every checkpoint."""
  source = pretrain_input.record_source(data_dir, config.data.modalities)
  picks = np.linspace(0, len(source) - 1, min(config.figure_images, len(source))).astype(int)
  return np.stack([records.decode_image(source[int(i)]) for i in picks])


class _Logger:
  """Scalars to TensorBoard and metrics.jsonl (process 0), a progress bar with rate and ETA."""

  def __init__(self, workdir: str, total_steps: int, start: int, batch: int):
    self.primary = jax.process_index() == 0
    self.batch, self.total_steps = batch, total_steps
    self.tb_dir = os.path.join(workdir, "tensorboard")
    self.tb = SummaryWriter(self.tb_dir) if self.primary else None
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if self.primary else None
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
    logging.info("step %d/%d loss %.5f lr %.3e grad_norm %.3f images/s %.1f ETA %.0fs", step,
                 self.total_steps, metrics["loss"], metrics["learning_rate"],
                 metrics["grad_norm"], rate, eta)
    if self.primary:
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


def train(config, workdir: str) -> dict:
  """Runs (or resumes) the run described by `config` in `workdir`; returns the last metrics."""
  config_lib.validate(config, jax.device_count(), jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh(config.mesh)

  # Data: this host's slice of the global batch.
  data_dir = resolve_data_dir(config, workdir)
  n_examples = pretrain_input.num_examples(data_dir, config.data.modalities)
  per_host_batch = config.batch_size // jax.process_count()
  dataset = pretrain_input.pretrain_dataset(
      data_dir, modalities=config.data.modalities, seed=config.seed,
      per_host_batch=per_host_batch, process_index=jax.process_index(),
      process_count=jax.process_count(), mixture=dict(config.data.mixture))
  data_iterator = pretrain_input.make_iterator(dataset, config.data.workers)

  # Model, optimiser, schedule.
  steps_per_epoch = n_examples / config.batch_size
  total_steps = config.total_steps or max(1, int(config.num_epochs * steps_per_epoch))
  schedule = optim.learning_rate_schedule(config, steps_per_epoch, total_steps)
  tx = optim.make_optimizer(config, schedule)
  model = pretrain.build_model(config)
  init_state = make_state_initializer(model, config, tx)
  shardings = parallel.state_shardings(jax.eval_shape(init_state), mesh)
  batch_sharding = parallel.batch_sharding(mesh)

  # Fresh start or resume.
  mngr = checkpoint.manager(workdir, config.keep_checkpoints)
  latest = mngr.latest_step()
  if latest is None:
    state = jax.jit(init_state, out_shardings=shardings)()
  else:
    abstract = checkpoint.abstract_like(jax.eval_shape(init_state), shardings)
    state = checkpoint.restore(mngr, latest, abstract, data_iterator)
    logging.info("resumed from step %d in %s", latest, mngr.directory)
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  logging.info("%d examples, global batch %d (%d per host), %d steps, %.2fM parameters, mesh %s",
               n_examples, config.batch_size, per_host_batch, total_steps, n_params / 1e6,
               dict(mesh.shape))

  train_step = compile_train_step(model, config, tx, schedule, shardings, mesh)
  replicated = NamedSharding(mesh, P())
  reconstruct = jax.jit(lambda params, images: pretrain.reconstruct(
      model, config, params, images, jax.random.PRNGKey(config.seed)), out_shardings=replicated)
  pictures = figure_batch(data_dir, config)
  figure_path = os.path.join(workdir, "reconstructions.png")

  def write_figure(step):
    x, masked, recon = jax.device_get(reconstruct(
        state["params"], parallel.global_batch(pictures, replicated)))
    if jax.process_index() == 0:
      norm = config.input.normalization
      figures.image_grid({"original": figures.to_display(x, norm),
                          "masked": figures.to_display(masked, norm),
                          "reconstruction": figures.to_display(recon, norm)},
                         figure_path, title=f"SwinMAE reconstructions, step {step}")

  start = int(state["step"])
  logger = _Logger(workdir, total_steps, start, config.batch_size)
  pending, last = [], {}

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
    pending = []

  for step in range(start + 1, total_steps + 1):
    batch = parallel.global_batch(next(data_iterator), batch_sharding)
    state, metrics = train_step(state, batch)
    pending.append(metrics)
    is_last = step == total_steps
    if step % config.log_every == 0 or step % config.checkpoint_every == 0 or is_last:
      flush(step)
    if step % config.checkpoint_every == 0 or is_last:
      checkpoint.save(mngr, step, state, data_iterator, config)
      write_figure(step)
      logger.restart_clock()
  mngr.wait_until_finished()
  logger.close()
  if jax.process_index() == 0:
    print(f"Done: {total_steps} steps. Checkpoints: {mngr.directory} | TensorBoard: "
          f"{logger.tb_dir} (also metrics.jsonl) | Reconstructions: {figure_path}", flush=True)
  return last
