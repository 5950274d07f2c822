"""The pretraining task: SwinMAE (MSE) or SimMIM (L1) on window-masked images, the loss on
the masked pixels, or SimCLR (NT-Xent) on two augmented views of each image. Both masked-image
models return pixel patches of the same layout, so their masking and figure are shared;
`config.method` chooses the model and the loss.

Everything per-pixel happens here, inside the jitted step: uint8 -> float, resize, flip,
normalisation, mask sampling or the views, and the loss. Randomness comes from the step's key only,
so a resumed run repeats exactly what an uninterrupted one does.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from data_pipelines import pretrain_input, records, sample
from vismae_jax import augment, config_lib, figures, parallel, preprocess
from vismae_jax.models import mae, simclr, simmim
from vismae_jax.train import loop

# Per config.method: the model, the loss of the masked-image ones and the figure's name.
MODELS = {"mae": mae.SwinMAE, "simmim": simmim.SwinSimMIM, "simclr": simclr.SwinSimCLR}
LOSSES = {"mae": mae.masked_mse, "simmim": mae.masked_l1}
NAMES = {"mae": "SwinMAE", "simmim": "SimMIM", "simclr": "SimCLR"}


def build_model(config, model_class=None):
  """config.method's model, or model_class (a SwinMAE variant) on the same settings."""
  m = config.model
  model_class = model_class or MODELS[config.method]
  head = {"mae": dict(decoder_depths=tuple(m.decoder_depths)),
          "simclr": dict(projection_dims=tuple(config.simclr.projection_dims))}
  return model_class(in_chans=m.in_chans, patch_size=m.patch_size, embed_dim=m.embed_dim,
                     depths=tuple(m.depths), num_heads=tuple(m.num_heads), window=m.window,
                     drop_path=m.drop_path, remat=config_lib.remat_policy(m),
                     attention=m.attention, dtype=jnp.dtype(config.dtype),
                     **head.get(config.method, {}))


def _grid(config):
  """(tokens per side, mask units per side, tokens per unit)."""
  size, patch, unit = config.input.image_size, config.model.patch_size, config.mae.mask_unit
  return size // patch, size // unit, unit // patch


def init_params(model, config, rng):
  tokens, _, _ = _grid(config)
  size, chans = config.input.image_size, config.model.in_chans
  images = jnp.zeros((1, size, size, chans))
  if config.method == "simclr":  # no mask
    return model.init(rng, images)["params"]
  return model.init(rng, images, jnp.zeros((1, tokens, tokens), bool))["params"]


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
  _, units, per_unit = _grid(config)
  kept = None
  if config.mae.masking == "uniform":
    kept, hidden = mae.uniform_mask(mask_rng, x.shape[0], units, config.mae.secondary_ratio)
  else:
    hidden = mae.window_mask(mask_rng, x.shape[0], units, config.mae.mask_ratio)
  return x, mae.unit_mask_to_tokens(hidden, per_unit), kept


def two_views(config, images_u8, rng):
  """uint8 batch (B, H, W) -> (B, 2, S, S, C): two independent SimCLR views of each image.

  The views sit side by side on axis 1, so that (B, 2) -> 2B keeps each device's images on
  that device when the batch is sharded.
  """
  x = preprocess.to_model_input(images_u8, image_size=config.input.image_size,
                                channels=config.model.in_chans,
                                normalization=config.input.normalization)
  s = config.simclr
  return jnp.stack([augment.contrastive_view(
      key, x, crop_scale=config.input.crop_scale, hflip=config.input.hflip,
      brightness=s.brightness, contrast=s.contrast, blur_prob=s.blur_prob,
      blur_sigma=s.blur_sigma) for key in jax.random.split(rng)], axis=1)


def make_loss_fn(model, config):
  def masked_image_loss(params, images_u8, rng):
    input_rng, drop_rng = jax.random.split(rng)
    x, token_mask, kept = model_inputs(config, images_u8, input_rng, train=True)
    pred = model.apply({"params": params}, x, token_mask, deterministic=False, kept_units=kept,
                       rngs={"dropout": drop_rng})
    return LOSSES[config.method](pred, x, token_mask, config.model.patch_size,
                                 config.mae.norm_pix_loss)

  def contrastive_loss(params, images_u8, rng):
    view_rng, drop_rng = jax.random.split(rng)
    views = two_views(config, images_u8, view_rng)
    z = model.apply({"params": params}, views.reshape((-1,) + views.shape[2:]),
                    deterministic=False, rngs={"dropout": drop_rng})
    z = z.reshape(views.shape[:2] + z.shape[1:])
    return simclr.nt_xent(z[:, 0], z[:, 1], config.simclr.temperature)
  return contrastive_loss if config.method == "simclr" else masked_image_loss


# reconstruct's rows, top to bottom (jit hands dicts back with their keys sorted), and
# SimCLR's figure's: it reconstructs nothing, so it shows what its loss compares.
FIGURE_ROWS = ("original", "masked", "encoder input", "reconstruction")
VIEW_ROWS = ("view 1", "view 2")


def reconstruct(model, config, params, images_u8, rng) -> dict:
  """Picture rows in input units: original, masked (hidden pixels NaN), what the encoder saw
  (sparse masking only: the compacted image, shown at twice its size) and reconstruction.

  Visible patches are shown as they were; masked ones as predicted. With norm_pix_loss the
  prediction is mapped back with each target patch's own mean and variance.
  """
  patch, chans = config.model.patch_size, config.model.in_chans
  x, token_mask, kept = model_inputs(config, images_u8, rng, train=False)
  pred = model.apply({"params": params}, x, token_mask, deterministic=True, kept_units=kept)
  if config.mae.norm_pix_loss:
    target = mae.patchify(x, patch)
    pred = pred * jnp.sqrt(target.var(-1, keepdims=True, ddof=1) + 1e-6) + target.mean(
        -1, keepdims=True)
  pixel_mask = mae.unpatchify(
      jnp.broadcast_to(token_mask[..., None], token_mask.shape + (patch * patch * chans,)),
      patch, chans)
  masked = jnp.where(pixel_mask, jnp.nan, x)
  rows = {"original": x, "masked": masked}
  if kept is not None:
    seen = jnp.where(mae.compact(pixel_mask, kept), jnp.nan, mae.compact(x, kept))
    rows["encoder input"] = seen.repeat(2, axis=1).repeat(2, axis=2)
  rows["reconstruction"] = jnp.where(pixel_mask, mae.unpatchify(pred, patch, chans), x)
  return rows


def figure_rows(model, config, params, images_u8, rng) -> dict:
  """The figure's pictures: `reconstruct`'s rows, or for SimCLR the two views of each image."""
  if config.method != "simclr":
    return reconstruct(model, config, params, images_u8, rng)
  views = two_views(config, images_u8, rng)
  return dict(zip(VIEW_ROWS, (views[:, 0], views[:, 1])))


def resolve_data_dir(config, workdir: str) -> str:
  """The shard directory: config.data.path whenever it is given, else (data.source=sample,
  as the :sample and :tiny variants set it) the bundled sample written into the workdir.

  Why the path wins: it is what the user named on the command line, while the source may come
  from a variant chosen for its model and schedule; the log says which one trains.
  """
  if config.data.path:
    if config.data.source == "sample":
      logging.info("training on config.data.path=%s (config.data.source='sample' applies only "
                   "without a path)", config.data.path)
    return config.data.path
  logging.info("training on the bundled sample (config.data.source='sample'; pass "
               "--config.data.path=SHARDS for your own shards)")
  # One copy per process: hosts need not share a filesystem.
  return sample.write_sample_shards(
      os.path.join(workdir, "sample_shards", f"process_{jax.process_index()}"))


def figure_batch(data_dir: str, config) -> np.ndarray:
  """Records spread evenly over the (filtered) dataset: the same pictures at every checkpoint."""
  source = pretrain_input.record_source(data_dir, config.data.modalities)
  picks = np.linspace(0, len(source) - 1, min(config.figure_images, len(source))).astype(int)
  return np.stack([records.decode_image(source[int(i)]) for i in picks])


def make_task(config, workdir: str, mesh) -> loop.Task:
  """config.method's pretraining on the configured shards; a reconstruction grid (SimCLR: its
  views) at every checkpoint."""
  config_lib.validate(config, jax.device_count(), jax.process_count())
  data_dir = resolve_data_dir(config, workdir)
  model = build_model(config)
  dataset = pretrain_input.pretrain_dataset(
      data_dir, modalities=config.data.modalities, seed=config.seed,
      per_host_batch=config.batch_size // jax.process_count(),
      process_index=jax.process_index(), process_count=jax.process_count(),
      mixture=dict(config.data.mixture))
  pictures = figure_batch(data_dir, config)
  contrastive = config.method == "simclr"
  figure_name = "views" if contrastive else "reconstructions"
  figure_path = os.path.join(workdir, f"{figure_name}.png")
  replicated = parallel.replicated(mesh)
  draw = jax.jit(lambda params, images: figure_rows(
      model, config, params, images, jax.random.PRNGKey(config.seed)), out_shardings=replicated)
  what = "" if contrastive else f" ({config.mae.masking} masking)"

  def write_figure(params, step):
    rows = jax.device_get(draw(params, parallel.global_batch(pictures, replicated)))
    if jax.process_index() == 0:
      norm = config.input.normalization
      figures.image_grid({name: figures.to_display(rows[name], norm)
                          for name in FIGURE_ROWS + VIEW_ROWS if name in rows},
                         figure_path,
                         title=f"{NAMES[config.method]} {figure_name}{what}, step {step}")
    return {}

  return loop.Task(
      init_params=lambda rng: init_params(model, config, rng),
      loss_fn=make_loss_fn(model, config), dataset=dataset,
      num_examples=pretrain_input.num_examples(data_dir, config.data.modalities),
      on_checkpoint=write_figure, outputs={figure_name.capitalize(): figure_path})
