"""AdamW with linear warm-up and a half-cycle cosine to zero, stepped every iteration."""
import jax
import optax


def peak_learning_rate(config) -> float:
  """config.optim.lr, scaled by batch / lr_batch_base when a base batch is given."""
  lr = config.optim.lr
  if config.optim.lr_batch_base:
    lr *= config.batch_size / config.optim.lr_batch_base
  return lr


def learning_rate_schedule(config, steps_per_epoch: float, total_steps: int) -> optax.Schedule:
  warmup = min(int(round(config.optim.warmup_epochs * steps_per_epoch)), total_steps)
  return optax.warmup_cosine_decay_schedule(0.0, peak_learning_rate(config), warmup,
                                            max(total_steps, warmup + 1), end_value=0.0)


def decay_mask(params):
  """Weight decay on matrices and tables only: norms and biases (1-D) are exempt."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
  o = config.optim
  tx = optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                   mask=None if o.decay_norms_biases else decay_mask)
  if o.clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.clip_norm), tx)
  return tx
