"""Contrastive pretraining: SimCLR's NT-Xent on two augmented views of each image.

One of train/methods.py's methods: its settings (`defaults`, `variant`, `check`), model, loss
and checkpoint figure. Its augmented views serve DINO too (distillation.py).
"""
import jax
import jax.numpy as jnp

from vismae_jax import augment, config_lib, preprocess
from vismae_jax.models import simclr
from vismae_jax.train import masked_image

NAMES = {"simclr": "SimCLR"}
FIGURE = "views"
# It reconstructs nothing, so its figure shows what its loss compares.
ROWS = ("view 1", "view 2")


def view_defaults() -> dict:
  """The augmented views of SimCLR and DINO, besides input.crop_scale's crop and input.hflip:
  brightness and contrast jitter (SimCLR's colour strength 0.5: grey images have no saturation
  or hue), and with probability blur_prob a Gaussian blur of sigma in blur_sigma px."""
  return dict(brightness=0.4, contrast=0.4, blur_prob=0.5, blur_sigma=(0.1, 2.0))


def defaults(c, method: str):
  """SimCLR's crops (0.08 to 1 of the area), views and head: temperature 0.1, the paper's best
  at its 4096 batch (ours: 5120); projection_dims, the projection head's (hidden, output)
  widths (the paper's 2048 -> 128). The optimiser stays AdamW (configs/simclr.py says why)."""
  del method
  c.input.crop_scale = (0.08, 1.0)
  c.views = view_defaults()
  c.simclr = dict(temperature=0.1, projection_dims=(2048, 128))


def variant(c, name: str):
  """sample / tiny at 64 px and batch 16: crops of at least 20% of the area (8% is 18 px), blur
  scaled from 224 px, a head as wide as the last stage, temperature 0.2 and lr 5e-4: at this
  batch a higher temperature learns slowly and a higher lr collapses the embeddings to one
  point (the loss goes to log(2N - 1))."""
  config_lib.swin_cpu_variant(c, name)
  c.views.blur_sigma = (0.1, 0.6)
  c.input.crop_scale = (0.2, 1.0)
  c.simclr.update(temperature=0.2, projection_dims=(128, 32))
  c.optim.lr = 5e-4


def widths(dims, count: int, name: str, what: str, check):
  dims = tuple(dims)
  check(len(dims) == count and all(isinstance(d, int) and d > 0 for d in dims),
        f"{name}={dims}: {count} positive widths, {what}")


def check_views(config, check):
  views = config.views
  for name in ("brightness", "contrast"):
    check(0 <= views[name] < 1, f"config.views.{name}={views[name]}: must be in [0, 1)")
  check(0 <= views.blur_prob <= 1, f"config.views.blur_prob={views.blur_prob}: must be in "
        "[0, 1]")
  low, high = views.blur_sigma
  check(0 < low <= high, f"config.views.blur_sigma={tuple(views.blur_sigma)}: need "
        "0 < min <= max (px)")
  masked_image.check_crop_scale(config, check)


def check(config, check):
  check_views(config, check)
  s = config.simclr
  check(s.temperature > 0, f"config.simclr.temperature={s.temperature}: must be > 0")
  widths(s.projection_dims, 2, "config.simclr.projection_dims", "(hidden, output)", check)


def build_model(config):
  return simclr.SwinSimCLR(**config_lib.swin_kwargs(config),
                           projection_dims=tuple(config.simclr.projection_dims))


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
