"""AdamW with linear warm-up and a half-cycle cosine to zero, stepped every iteration.

The schedule is data, not code: `schedule()` gives its peak and lengths as numbers that the train
step takes as an argument and `learning_rate()` reads. The compiled step therefore does not
depend on a run's length, and the many runs of a fine-tuning protocol share one compilation.
The optimizer itself works at unit learning rate; the step scales its update.
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax


def peak_learning_rate(config) -> float:
  """config.optim.lr, scaled by batch / lr_batch_base when a base batch is given."""
  lr = config.optim.lr
  if config.optim.lr_batch_base:
    lr *= config.batch_size / config.optim.lr_batch_base
  return lr


def schedule(config, steps_per_epoch: float, total_steps: int) -> dict:
  """{peak, warmup_steps, total_steps, probe_steps} of a run, as arrays for the train step.

  probe_steps is how long the encoder is held (`hold_encoder`) while what follows it trains:
  finetune.probe_first of the run (LP-FT), all of it with finetune.freeze_encoder (linear
  probing), none in pretraining.
  """
  warmup = min(int(round(config.optim.warmup_epochs * steps_per_epoch)), total_steps)
  finetune = config.get("finetune", {})
  probe = 1.0 if finetune.get("freeze_encoder", False) else finetune.get("probe_first", 0.0)
  return {"peak": np.float32(peak_learning_rate(config)), "warmup_steps": np.int32(warmup),
          "total_steps": np.int32(max(total_steps, warmup + 1)),
          "probe_steps": np.int32(int(round(probe * total_steps)))}


def learning_rate(step, schedule: dict):
  """Linear warm-up from 0 to the peak, then a half cosine to 0 at total_steps.

  The curve of optax.warmup_cosine_decay_schedule(0, peak, warmup, total, end_value=0), with
  every length a traced value.
  """
  step = jnp.asarray(step, jnp.float32)
  warmup = schedule["warmup_steps"].astype(jnp.float32)
  total = schedule["total_steps"].astype(jnp.float32)
  peak = schedule["peak"]
  progress = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
  return jnp.where(step < warmup, peak * step / jnp.maximum(warmup, 1.0),
                   0.5 * peak * (1.0 + jnp.cos(jnp.pi * progress)))


def decay_mask(params):
  """Weight decay on matrices and tables only: norms and biases (1-D) are exempt."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


# The parameters that finetune.freeze_encoder keeps as loaded: the patch embedding and encoder.
ENCODER = ("patch_embed", "encoder")


def layer_ids(params) -> dict:
  """Depth of every parameter for layer-wise decay: the patch embedding 0, encoder block k
  (Swin: counted over all stages, a stage's patch merging with its last block) k + 1,
  everything after the blocks (the ViT's final norm, decoders, heads) the top, n_blocks + 1."""
  encoder = params["encoder"]
  if "patch_embed" in encoder:  # the ViT: encoder/{patch_embed, blocks_<k>, norm}
    top = len([k for k in encoder if k.startswith("blocks_")]) + 1

    def layer(path):
      names = [getattr(p, "key", str(p)) for p in path]
      if names[0] != "encoder" or names[1] == "norm":
        return top
      return 0 if names[1] == "patch_embed" else int(names[1].split("_")[1]) + 1
    return jax.tree_util.tree_map_with_path(lambda path, _: layer(path), params)
  depths = [len([k for k in encoder[f"layers_{i}"] if k.startswith("blocks_")])
            for i in range(len(encoder))]
  top = sum(depths) + 1

  def swin_layer(path):
    names = [getattr(p, "key", str(p)) for p in path]
    if names[0] == "patch_embed":
      return 0
    if names[0] not in ENCODER:
      return top
    stage = int(names[1].split("_")[1])
    done = sum(depths[:stage])
    if names[2] == "conv_block":  # SwinUNETR-v2's, before the stage's blocks
      return done
    return done + (int(names[2].split("_")[1]) + 1 if names[2].startswith("blocks_")
                   else depths[stage])
  return jax.tree_util.tree_map_with_path(lambda path, _: swin_layer(path), params)


def stop_encoder_gradient(params):
  """`params` with the ENCODER's behind stop_gradient: their gradient is zero by construction,
  so XLA leaves the encoder's backward pass out of the step (holding the encoder alone would
  still compute it; the hold stays, or weight decay would shrink the weights)."""
  return {k: jax.lax.stop_gradient(v) if k in ENCODER else v for k, v in params.items()}


def hold_encoder(updates, hold):
  """`updates` (weight decay included) with the ENCODER's zeroed while `hold` (a traced bool)
  is true: for a whole run in linear probing, for its start in LP-FT.

  Why LP-FT (Kumar et al., ICLR 2022): a head fitted to the pretrained features before the
  encoder moves distorts those features less than one that starts random, which matters most
  when labels are few. Being data, `hold` leaves one compiled step for every probe length.
  """
  keep = jnp.where(hold, 0.0, 1.0)
  return {k: optax.tree.scale(keep, v) if k in ENCODER else v for k, v in updates.items()}


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW at unit learning rate (the step multiplies by `learning_rate`). In fine-tuning each
  parameter group (one per depth, `layer_ids`) may have its update scaled by
  layer_decay^(top - depth): optim.layer_decay < 1, as in BEiT / MAE fine-tuning, so that the
  head learns at the full rate and pretrained early layers move least (a frozen encoder is the
  schedule's `probe_steps`, not the optimizer's).

  One object per optimizer recipe, so that runs with the same recipe reuse one traced step.
  """
  m = config.model
  blocks = m.depth if m.arch == "vit" else sum(m.depths)
  return _optimizer(ml_collections.FrozenConfigDict(config.optim), blocks + 1)


@functools.lru_cache(maxsize=8)
def _optimizer(o: ml_collections.FrozenConfigDict, top: int) -> optax.GradientTransformation:
  tx = optax.adamw(1.0, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                   mask=None if o.decay_norms_biases else decay_mask)
  layer_decay = o.get("layer_decay", 1.0)
  if layer_decay < 1.0:
    groups = {depth: optax.scale(layer_decay ** (top - depth)) for depth in range(top + 1)}
    tx = optax.chain(tx, optax.partition(groups, layer_ids))
  if o.clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.clip_norm), tx)
  return tx
