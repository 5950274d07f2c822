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


def layer_ids(params) -> tuple[dict, int]:
  """Depth of every parameter for layer-wise decay: the patch embedding 0, encoder block k
  (counted over all stages) k + 1, a stage's patch merging with its last block, everything
  after the encoder (decoder, norms, heads) the top, n_blocks + 1."""
  depths = [len([k for k in params["encoder"][f"layers_{i}"] if k.startswith("blocks_")])
            for i in range(len(params["encoder"]))]
  top = sum(depths) + 1

  def layer(path):
    names = [getattr(p, "key", str(p)) for p in path]
    if names[0] == "patch_embed":
      return 0
    if names[0] != "encoder":
      return top
    stage = int(names[1].split("_")[1])
    done = sum(depths[:stage])
    return done + (int(names[2].split("_")[1]) + 1 if names[2].startswith("blocks_")
                   else depths[stage])
  return jax.tree_util.tree_map_with_path(lambda path, _: layer(path), params), top


def layer_decay_scales(params, decay: float):
  """decay^(top - depth) per parameter: the head learns at the full rate, the stem slowest."""
  ids, top = layer_ids(params)
  return jax.tree.map(lambda i: decay ** (top - i), ids)


def make_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
  """AdamW; with optim.layer_decay < 1 (fine-tuning) each update is scaled by its depth's
  factor, as in BEiT / MAE fine-tuning, so pretrained early layers move least."""
  o = config.optim
  tx = optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                   mask=None if o.decay_norms_biases else decay_mask)
  if o.get("layer_decay", 1.0) < 1.0:
    def scale(updates, state, params=None):
      scales = layer_decay_scales(updates, o.layer_decay)
      return jax.tree.map(lambda u, s: u * s, updates, scales), state
    tx = optax.chain(tx, optax.GradientTransformation(lambda _: optax.EmptyState(), scale))
  if o.clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.clip_norm), tx)
  return tx
