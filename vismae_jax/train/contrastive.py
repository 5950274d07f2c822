"""Contrastive pretraining: SimCLR's NT-Xent on two augmented views of each image.

One of pretrain.py's methods: `MODELS`, `head_kwargs`, `task_fields`, `figure_rows`.
"""
import jax
import jax.numpy as jnp

from vismae_jax import augment, preprocess
from vismae_jax.models import simclr

MODELS = {"simclr": simclr.SwinSimCLR}
FIGURE = "views"
# It reconstructs nothing, so its figure shows what its loss compares.
ROWS = ("view 1", "view 2")


def head_kwargs(config) -> dict:
  return {"projection_dims": tuple(config.simclr.projection_dims)}


def init_params(model, config, rng):
  size, chans = config.input.image_size, config.model.in_chans
  return model.init(rng, jnp.zeros((1, size, size, chans)))["params"]


def views(config, images_u8, rng, count: int = 2, size=None, crop_scale=None):
  """uint8 batch (B, H, W) -> (B, count, S, S, C): independent augmented views of each image
  (config.views; crops from crop_scale, else config.input.crop_scale, to `size` px, else the
  input size).

  The views sit side by side on axis 1, so that (B, count) -> B * count keeps each device's
  images on that device when the batch is sharded.
  """
  x = preprocess.to_model_input(images_u8, image_size=config.input.image_size,
                                channels=config.model.in_chans,
                                normalization=config.input.normalization)
  v = config.views
  return jnp.stack([augment.contrastive_view(
      key, x, crop_scale=crop_scale or config.input.crop_scale, hflip=config.input.hflip,
      brightness=v.brightness, contrast=v.contrast, blur_prob=v.blur_prob,
      blur_sigma=v.blur_sigma, size=size) for key in jax.random.split(rng, count)], axis=1)


def flat(x):
  """(B, V, ...) -> (B * V, ...): one forward pass over every view."""
  return x.reshape((-1,) + x.shape[2:])


def make_loss_fn(model, config):
  def loss_fn(params, images_u8, rng):
    view_rng, drop_rng = jax.random.split(rng)
    pair = views(config, images_u8, view_rng)
    z = model.apply({"params": params}, flat(pair), deterministic=False,
                    rngs={"dropout": drop_rng})
    z = z.reshape(pair.shape[:2] + z.shape[1:])
    return simclr.nt_xent(z[:, 0], z[:, 1], config.simclr.temperature)
  return loss_fn


def task_fields(model, config) -> dict:
  return {"init_params": lambda rng: init_params(model, config, rng),
          "loss_fn": make_loss_fn(model, config)}


def figure_rows(model, config, params, images_u8, rng) -> dict:
  del model, params
  pair = views(config, images_u8, rng)
  return dict(zip(ROWS, (pair[:, 0], pair[:, 1])))
