"""The pretraining task: SwinMAE on window-masked images, MSE on the masked pixels.

Everything per-pixel happens here, inside the jitted step: uint8 -> float, resize, flip,
normalisation, mask sampling and the loss. Randomness comes from the step's key only, so a
resumed run repeats exactly what an uninterrupted one does.
"""
import jax
import jax.numpy as jnp

from vismae_jax import augment, preprocess
from vismae_jax.models import mae


def build_model(config) -> mae.SwinMAE:
  m = config.model
  return mae.SwinMAE(in_chans=m.in_chans, patch_size=m.patch_size, embed_dim=m.embed_dim,
                     depths=tuple(m.depths), decoder_depths=tuple(m.decoder_depths),
                     num_heads=tuple(m.num_heads), window=m.window, drop_path=m.drop_path,
                     remat=m.remat, dtype=jnp.dtype(config.dtype))


def _grid(config):
  """(tokens per side, mask units per side, tokens per unit)."""
  size, patch, unit = config.input.image_size, config.model.patch_size, config.mae.mask_unit
  return size // patch, size // unit, unit // patch


def init_params(model, config, rng):
  tokens, _, _ = _grid(config)
  size, chans = config.input.image_size, config.model.in_chans
  return model.init(rng, jnp.zeros((1, size, size, chans)), jnp.zeros((1, tokens, tokens), bool))[
      "params"]


def model_inputs(config, images_u8, rng, train: bool):
  """uint8 batch -> (normalised images, token mask)."""
  flip_rng, mask_rng, crop_rng = jax.random.split(rng, 3)
  x = preprocess.to_model_input(images_u8, image_size=config.input.image_size,
                                channels=config.model.in_chans,
                                normalization=config.input.normalization)
  if train and tuple(config.input.crop_scale) != (1.0, 1.0):
    x = augment.random_resized_crop(crop_rng, x, scale=tuple(config.input.crop_scale))
  if train and config.input.hflip:
    x = augment.random_hflip(flip_rng, x)
  _, units, per_unit = _grid(config)
  unit_mask = mae.window_mask(mask_rng, x.shape[0], units, config.mae.mask_ratio)
  return x, mae.unit_mask_to_tokens(unit_mask, per_unit)


def make_loss_fn(model, config):
  def loss_fn(params, images_u8, rng):
    input_rng, drop_rng = jax.random.split(rng)
    x, token_mask = model_inputs(config, images_u8, input_rng, train=True)
    pred = model.apply({"params": params}, x, token_mask, deterministic=False,
                       rngs={"dropout": drop_rng})
    return mae.masked_mse(pred, x, token_mask, config.model.patch_size, config.mae.norm_pix_loss)
  return loss_fn


def reconstruct(model, config, params, images_u8, rng):
  """(inputs, masked inputs, reconstructions) in input units, for pictures.

  Visible patches are shown as they were; masked ones as predicted. With norm_pix_loss the
  prediction is mapped back with each target patch's own mean and variance.
  """
  patch, chans = config.model.patch_size, config.model.in_chans
  x, token_mask = model_inputs(config, images_u8, rng, train=False)
  pred = model.apply({"params": params}, x, token_mask, deterministic=True)
  if config.mae.norm_pix_loss:
    target = mae.patchify(x, patch)
    pred = pred * jnp.sqrt(target.var(-1, keepdims=True, ddof=1) + 1e-6) + target.mean(
        -1, keepdims=True)
  pixel_mask = mae.unpatchify(
      jnp.broadcast_to(token_mask[..., None], token_mask.shape + (patch * patch * chans,)),
      patch, chans)
  recon = jnp.where(pixel_mask, mae.unpatchify(pred, patch, chans), x)
  return x, jnp.where(pixel_mask, jnp.nan, x), recon
