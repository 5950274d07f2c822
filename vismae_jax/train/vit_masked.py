"""ViT-MAE pretraining (SelfMedMAE's): the plain ViT masked autoencoder of models/vit.py on 2-D
images or 3-D crops, the masked tokens dropped before the encoder, MSE on the masked patches.

One of train/methods.py's methods (its settings, model, loss and checkpoint figure), the one
with `config.model.arch == "vit"`. 2-D batches are the shards' uint8 images, made model inputs as
the Swin methods make them; 3-D batches are float crops of normalised volumes
(data_pipelines/volume_crops.py), flipped, turned and intensity-jittered on device.
"""
import jax
import jax.numpy as jnp

from vismae_jax import augment, config_lib, preprocess
from vismae_jax.models import vit

NAMES = {"vit_mae": "ViT-MAE"}
ARCH = "vit"  # models/vit.py
FIGURE = "reconstructions"
ROWS = ("original", "masked", "reconstruction")


def defaults(c, method: str, ndim: int = 2):
  """MAE's recipe on the ViT, for images (ndim 2: 2-D shards, as the Swin methods) or volumes
  (ndim 3: volume shards, data_pipelines.volume_ingest): the encoder sees the visible 25% of
  the tokens (3-D: 87.5%, the ratio SelfMedMAE found best on volumes), a 512-wide 8-block
  decoder, MSE on each masked patch normalised by its own mean and variance; AdamW lr 1.5e-4
  per 256 images."""
  del method
  c.model = config_lib.vit_model()
  c.mae = dict(mask_ratio=0.75 if ndim == 2 else 0.125, norm_pix_loss=True, decoder_dim=512,
               decoder_depth=8, decoder_heads=16)
  c.optim.update(lr=1.5e-4, lr_batch_base=256)
  c.batch_size = 1024 if ndim == 2 else 64
  if ndim == 3:
    c.input = dict(roi=(96, 96, 96), intensity=0.1)
    c.data = dict(source="volumes", path="", workers=0)
    c.figure_images = 4


def variant(c, name: str):
  """sample / cpu: config_lib.vit_cpu_model's ViT with a 2-block decoder of 64; 2-D at 64 px on
  the bundled sample, 3-D on crops of 32 x 48 x 32 voxels (the Decathlon hippocampus); tiny: a
  20-step schedule, 3-D on crops of 32^3, for tests."""
  config_lib.vit_cpu_model(c)
  c.mae.update(decoder_dim=64, decoder_depth=2, decoder_heads=4)
  c.optim.update(lr=1.5e-3, lr_batch_base=0, warmup_epochs=5.0)
  c.batch_size, c.num_epochs, c.log_every, c.checkpoint_every = 16, 125.0, 100, 500
  if config_lib.volumetric(c):
    c.input.roi = (32, 48, 32)
    c.batch_size = 8
  else:
    c.data.source = "sample"
    c.input.image_size = 64
  if name == "tiny":
    c.total_steps, c.checkpoint_every, c.log_every = 20, 10, 5
    c.optim.warmup_epochs = 0.2
    if config_lib.volumetric(c):
      c.input.roi = (32, 32, 32)


def check(config, check):
  mae, dims = config.mae, config_lib.spatial_shape(config)
  if not config_lib.positive(config, ("mae.decoder_dim", "mae.decoder_depth",
                                      "mae.decoder_heads"), check):
    return
  check(mae.decoder_dim % mae.decoder_heads == 0 and mae.decoder_dim % 2 == 0
        and mae.decoder_dim >= 2 * len(dims),
        f"config.mae.decoder_dim={mae.decoder_dim}: must be even, at least {2 * len(dims)} (its "
        f"sine-cosine table) and a multiple of config.mae.decoder_heads={mae.decoder_heads}")
  check(0.0 < mae.mask_ratio < 1.0, f"config.mae.mask_ratio={mae.mask_ratio}: must be in (0, 1)")


def encoder_kwargs(config) -> dict:
  """The ViT encoder's settings, which its MAE, UNETR and classifier share."""
  m = config.model
  return dict(patch_size=m.patch_size, embed_dim=m.embed_dim, depth=m.depth,
              num_heads=m.num_heads, mlp_ratio=m.mlp_ratio, drop_path=m.drop_path,
              attention=m.attention, dtype=jnp.dtype(config.dtype))


def build_model(config):
  mae = config.mae
  return vit.ViTMAE(**encoder_kwargs(config), decoder_dim=mae.decoder_dim,
                    decoder_depth=mae.decoder_depth, decoder_heads=mae.decoder_heads,
                    mask_ratio=mae.mask_ratio)


def model_inputs(config, batch, rng, train: bool):
  """A batch as the shards give it -> model inputs (B, *spatial, C): 2-D uint8 images
  normalised (and flipped when training), or 3-D float crops with a channel axis (augmented
  when training)."""
  if config_lib.volumetric(config):
    x = batch.astype(jnp.float32)[..., None]
    if train:
      x, _ = augment.volume_augment(rng, x, scale=config.input.intensity,
                                    shift=config.input.intensity)
    return x
  x = preprocess.to_model_input(batch, image_size=config.input.image_size,
                                channels=config.model.in_chans,
                                normalization=config.input.normalization)
  return augment.random_hflip(rng, x) if train and config.input.hflip else x


def init_params(model, config, rng):
  images = jnp.zeros((1, *config_lib.input_shape(config)))
  return model.init(rng, images, jax.random.PRNGKey(0))["params"]


def make_loss_fn(model, config):
  def loss_fn(params, batch, rng):
    input_rng, mask_rng, drop_rng = jax.random.split(rng, 3)
    x = model_inputs(config, batch, input_rng, train=True)
    pred, mask = model.apply({"params": params}, x, mask_rng, deterministic=False,
                             rngs={"dropout": drop_rng})
    return vit.masked_patch_loss(pred, x, mask, config.model.patch_size,
                                 config.mae.norm_pix_loss)
  return loss_fn


def task_fields(model, config) -> dict:
  return {"init_params": lambda rng: init_params(model, config, rng),
          "loss_fn": make_loss_fn(model, config)}


def figure_rows(model, config, params, batch, rng) -> dict:
  """Original, masked (hidden patches NaN) and reconstruction (visible patches as they were,
  masked ones as predicted, mapped back from the normalised target where norm_pix_loss); for
  volumes the middle axial slice of each crop, anterior up, in [0, 1] of the crop's range."""
  patch = config.model.patch_size
  x = model_inputs(config, batch, None, train=False)
  pred, mask = model.apply({"params": params}, x, rng, deterministic=True)
  target = vit.patchify(x, patch)
  if config.mae.norm_pix_loss:
    pred = pred * jnp.sqrt(target.var(-1, keepdims=True, ddof=1) + 1e-6) + target.mean(
        -1, keepdims=True)
  grid = vit.token_grid(x.shape[1:-1], patch)
  hidden = vit.unpatchify(jnp.broadcast_to(mask[..., None], target.shape), grid, patch)
  rows = {"original": x, "masked": jnp.where(hidden, jnp.nan, x),
          "reconstruction": jnp.where(hidden, vit.unpatchify(pred, grid, patch), x)}
  return axial_slices(rows) if x.ndim == 5 else rows


def axial_slices(rows: dict) -> dict:
  """Figure rows of (B, X, Y, Z, C) volumes in RAS, the first row the original -> the middle
  axial slice of each, anterior up, in [0, 1] of the original crop's range."""
  x = next(iter(rows.values()))
  lo = x.min(axis=(1, 2, 3, 4), keepdims=True)
  scale = jnp.maximum(x.max(axis=(1, 2, 3, 4), keepdims=True) - lo, 1e-6)
  return {k: jnp.flip(jnp.swapaxes(((v - lo) / scale)[:, :, :, v.shape[3] // 2], 1, 2), 1)
          for k, v in rows.items()}
