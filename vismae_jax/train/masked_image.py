"""Masked-image pretraining: SwinMAE (MSE) or SimMIM (L1) on window-masked images, the loss on
the masked pixels. Both models return pixel patches of the same layout, so their masking, loss
and reconstruction figure are shared; `config.method` chooses the model and the loss.

One of pretrain.py's methods: `MODELS`, `head_kwargs`, `task_fields`, `figure_rows`.
"""
import jax
import jax.numpy as jnp

from vismae_jax import augment, preprocess
from vismae_jax.models import mae, simmim

MODELS = {"mae": mae.SwinMAE, "simmim": simmim.SwinSimMIM}
LOSSES = {"mae": mae.masked_mse, "simmim": mae.masked_l1}
FIGURE = "reconstructions"
# reconstruct's rows, top to bottom (jit hands dicts back with their keys sorted).
ROWS = ("original", "masked", "encoder input", "reconstruction")


def head_kwargs(config) -> dict:
  return {"decoder_depths": tuple(config.model.decoder_depths)} if config.method == "mae" else {}


def grid(config):
  """(tokens per side, mask units per side, tokens per unit)."""
  size, patch, unit = config.input.image_size, config.model.patch_size, config.mae.mask_unit
  return size // patch, size // unit, unit // patch


def init_params(model, config, rng):
  tokens, _, _ = grid(config)
  size, chans = config.input.image_size, config.model.in_chans
  return model.init(rng, jnp.zeros((1, size, size, chans)),
                    jnp.zeros((1, tokens, tokens), bool))["params"]


def token_mask(config, rng, batch: int):
  """config.mae's window masking at token level: (B, tokens, tokens), True where hidden."""
  _, units, per_unit = grid(config)
  return mae.unit_mask_to_tokens(mae.window_mask(rng, batch, units, config.mae.mask_ratio),
                                 per_unit)


def model_inputs(config, images_u8, rng, train: bool):
  """uint8 batch -> (normalised images, token mask, kept units or None).

  The token mask is True where the encoder sees nothing (what the loss scores); kept units, in
  the sparse "uniform" masking only, are the units the encoder's compacted image is made of.
  """
  flip_rng, mask_rng, crop_rng = jax.random.split(rng, 3)
  x = preprocess.to_model_input(images_u8, image_size=config.input.image_size,
                                channels=config.model.in_chans,
                                normalization=config.input.normalization)
  if train and tuple(config.input.crop_scale) != (1.0, 1.0):
    x = augment.random_resized_crop(crop_rng, x, scale=tuple(config.input.crop_scale))
  if train and config.input.hflip:
    x = augment.random_hflip(flip_rng, x)
  if config.mae.masking == "uniform":
    _, units, per_unit = grid(config)
    kept, hidden = mae.uniform_mask(mask_rng, x.shape[0], units, config.mae.secondary_ratio)
    return x, mae.unit_mask_to_tokens(hidden, per_unit), kept
  return x, token_mask(config, mask_rng, x.shape[0]), None


def make_loss_fn(model, config):
  def loss_fn(params, images_u8, rng):
    input_rng, drop_rng = jax.random.split(rng)
    x, hidden, kept = model_inputs(config, images_u8, input_rng, train=True)
    pred = model.apply({"params": params}, x, hidden, deterministic=False, kept_units=kept,
                       rngs={"dropout": drop_rng})
    return LOSSES[config.method](pred, x, hidden, config.model.patch_size,
                                 config.mae.norm_pix_loss)
  return loss_fn


def task_fields(model, config) -> dict:
  return {"init_params": lambda rng: init_params(model, config, rng),
          "loss_fn": make_loss_fn(model, config)}


def figure_rows(model, config, params, images_u8, rng) -> dict:
  """Picture rows in input units: original, masked (hidden pixels NaN), what the encoder saw
  (sparse masking only: the compacted image, shown at twice its size) and reconstruction.

  Visible patches are shown as they were; masked ones as predicted. With norm_pix_loss the
  prediction is mapped back with each target patch's own mean and variance.
  """
  patch, chans = config.model.patch_size, config.model.in_chans
  x, hidden, kept = model_inputs(config, images_u8, rng, train=False)
  pred = model.apply({"params": params}, x, hidden, deterministic=True, kept_units=kept)
  if config.mae.norm_pix_loss:
    target = mae.patchify(x, patch)
    pred = pred * jnp.sqrt(target.var(-1, keepdims=True, ddof=1) + 1e-6) + target.mean(
        -1, keepdims=True)
  pixel_mask = hidden_pixels(hidden, patch, chans)
  masked = jnp.where(pixel_mask, jnp.nan, x)
  rows = {"original": x, "masked": masked}
  if kept is not None:
    seen = jnp.where(mae.compact(pixel_mask, kept), jnp.nan, mae.compact(x, kept))
    rows["encoder input"] = seen.repeat(2, axis=1).repeat(2, axis=2)
  rows["reconstruction"] = jnp.where(pixel_mask, mae.unpatchify(pred, patch, chans), x)
  return rows


def hidden_pixels(hidden, patch: int, chans: int):
  """A (B, h, w) token mask as a (B, H, W, C) pixel mask."""
  return mae.unpatchify(
      jnp.broadcast_to(hidden[..., None], hidden.shape + (patch * patch * chans,)),
      patch, chans)
