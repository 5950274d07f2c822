"""The pretraining task: `config.method`'s model and loss (train/methods.py) on the configured
shards, its figure at every checkpoint.

Everything per-pixel happens inside the jitted step: uint8 -> float, resize, augmentation,
masks or views, and the loss. Randomness comes from the step's key only, so a resumed run
repeats exactly what an uninterrupted one does.
"""
import os

import jax
import numpy as np
from absl import logging

from data_pipelines import pretrain_input, records, sample, volume_crops
from vismae_jax import config_lib, figures, parallel
from vismae_jax.train import loop, methods


def build_model(config):
  """config.method's model."""
  return methods.get(config.method).build_model(config)


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


def evenly(count: int, wanted: int) -> np.ndarray:
  """`wanted` indices spread evenly over `count` examples (all of them when fewer)."""
  return np.linspace(0, count - 1, min(wanted, count)).astype(int)


def figure_batch(data_dir: str, config) -> np.ndarray:
  """Records spread evenly over the (filtered) dataset: the same pictures at every checkpoint."""
  source = pretrain_input.record_source(data_dir, config.data.modalities)
  return np.stack([records.decode_image(source[int(i)])
                   for i in evenly(len(source), config.figure_images)])


def volume_crop_source(data_dir: str, config) -> volume_crops.CropSource:
  """Random config.input.roi crops of the volume shards, one per volume and epoch."""
  from data_pipelines import volume_ingest  # the [ingest] extra's readers come with it
  return volume_crops.CropSource(volume_ingest.volume_source(data_dir), None,
                                 tuple(config.input.roi), seed=config.seed)


def data(config, workdir: str):
  """(this host's dataset, examples per epoch, the checkpoint figure's batch)."""
  data_dir = resolve_data_dir(config, workdir)
  if config_lib.volumetric(config):
    crops = volume_crop_source(data_dir, config)
    pictures = np.stack([crops[int(i)]["image"] for i in evenly(len(crops), config.figure_images)])
    dataset = pretrain_input.host_batches(crops, seed=config.seed, batch_size=config.batch_size,
                                          transform=lambda example: example["image"])
    return dataset, len(crops), pictures
  dataset = pretrain_input.pretrain_dataset(
      data_dir, modalities=config.data.modalities, seed=config.seed,
      per_host_batch=config.batch_size // jax.process_count(),
      process_index=jax.process_index(), process_count=jax.process_count(),
      mixture=dict(config.data.mixture))
  return (dataset, pretrain_input.num_examples(data_dir, config.data.modalities),
          figure_batch(data_dir, config))


def make_task(config, workdir: str, mesh) -> loop.Task:
  """config.method's pretraining on the configured shards; its figure at every checkpoint."""
  dataset, num_examples, pictures = data(config, workdir)
  model = build_model(config)
  module = methods.get(config.method)
  figure_path = os.path.join(workdir, f"{module.FIGURE}.png")
  replicated = parallel.replicated(mesh)
  draw = jax.jit(lambda params, images: module.figure_rows(
      model, config, params, images, jax.random.PRNGKey(config.seed)), out_shardings=replicated)
  what = module.figure_note(config) if hasattr(module, "figure_note") else ""
  norm = config.input.get("normalization", "minmax")  # volumes' rows come in [0, 1]

  def write_figure(params, step):
    rows = jax.device_get(draw(params, parallel.global_batch(pictures, replicated)))
    if jax.process_index() == 0:
      figures.image_grid({name: figures.to_display(rows[name], norm)
                          for name in module.ROWS if name in rows},
                         figure_path,
                         title=f"{methods.display_name(config.method)} {module.FIGURE}{what}, "
                               f"step {step}")
    return {}

  return loop.Task(
      **module.task_fields(model, config), dataset=dataset, num_examples=num_examples,
      on_checkpoint=write_figure, outputs={module.FIGURE.capitalize(): figure_path})
