"""The pretraining task: SwinMAE (MSE) or SimMIM (L1) on window-masked images, the loss on
the masked pixels. Both models return pixel patches of the same layout, so everything else here
(masking, figure, loop) is shared; `config.method` chooses the model and the loss.

Everything per-pixel happens here, inside the jitted step: uint8 -> float, resize, flip,
normalisation, mask sampling and the loss. Randomness comes from the step's key only, so a
resumed run repeats exactly what an uninterrupted one does.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from data_pipelines import pretrain_input, records, sample
from vismae_jax import augment, config_lib, figures, parallel, preprocess
from vismae_jax.models import mae, simmim
from vismae_jax.train import loop

# Per config.method: the model, its loss and the name the figure gives it.
MODELS = {"mae": mae.SwinMAE, "simmim": simmim.SwinSimMIM}
LOSSES = {"mae": mae.masked_mse, "simmim": mae.masked_l1}
NAMES = {"mae": "SwinMAE", "simmim": "SimMIM"}


def build_model(config, model_class=None):
  """config.method's model, or model_class (a SwinMAE variant) on the same settings."""
  m = config.model
  model_class = model_class or MODELS[config.method]
  decoder = dict(decoder_depths=tuple(m.decoder_depths)) if config.method == "mae" else {}
  return model_class(in_chans=m.in_chans, patch_size=m.patch_size, embed_dim=m.embed_dim,
                     depths=tuple(m.depths), num_heads=tuple(m.num_heads), window=m.window,
                     drop_path=m.drop_path, remat=config_lib.remat_policy(m),
                     attention=m.attention, dtype=jnp.dtype(config.dtype), **decoder)


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


def make_loss_fn(model, config):
  def loss_fn(params, images_u8, rng):
    input_rng, drop_rng = jax.random.split(rng)
    x, token_mask, kept = model_inputs(config, images_u8, input_rng, train=True)
    pred = model.apply({"params": params}, x, token_mask, deterministic=False, kept_units=kept,
                       rngs={"dropout": drop_rng})
    return LOSSES[config.method](pred, x, token_mask, config.model.patch_size,
                                 config.mae.norm_pix_loss)
  return loss_fn


# reconstruct's rows, top to bottom (jit hands dicts back with their keys sorted).
FIGURE_ROWS = ("original", "masked", "encoder input", "reconstruction")


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
  """config.method's pretraining on the configured shards; a reconstruction grid at every
  checkpoint."""
  config_lib.validate(config, jax.device_count(), jax.process_count())
  data_dir = resolve_data_dir(config, workdir)
  model = build_model(config)
  dataset = pretrain_input.pretrain_dataset(
      data_dir, modalities=config.data.modalities, seed=config.seed,
      per_host_batch=config.batch_size // jax.process_count(),
      process_index=jax.process_index(), process_count=jax.process_count(),
      mixture=dict(config.data.mixture))
  pictures = figure_batch(data_dir, config)
  figure_path = os.path.join(workdir, "reconstructions.png")
  replicated = parallel.replicated(mesh)
  draw = jax.jit(lambda params, images: reconstruct(
      model, config, params, images, jax.random.PRNGKey(config.seed)), out_shardings=replicated)

  def write_figure(params, step):
    rows = jax.device_get(draw(params, parallel.global_batch(pictures, replicated)))
    if jax.process_index() == 0:
      norm = config.input.normalization
      figures.image_grid({name: figures.to_display(rows[name], norm)
                          for name in FIGURE_ROWS if name in rows},
                         figure_path, title=f"{NAMES[config.method]} reconstructions "
                                            f"({config.mae.masking} masking), step {step}")
    return {}

  return loop.Task(
      init_params=lambda rng: init_params(model, config, rng),
      loss_fn=make_loss_fn(model, config), dataset=dataset,
      num_examples=pretrain_input.num_examples(data_dir, config.data.modalities),
      on_checkpoint=write_figure, outputs={"Reconstructions": figure_path})
