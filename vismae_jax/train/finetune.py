"""The fine-tuning task: the config's kind (tasks.py: segmentation or classification) on the
config's encoder family (Swin-UNet or UNETR, Swin or ViT classifier); on volumes too
(config.input.roi: trained on crops, validated on whole volumes by sliding windows).

Like pretraining, everything per-pixel runs in the jitted step: uint8 -> float, per-image
min-max to [0, 1] (the release's fine-tuning input), channel replication, augmentation from the
step's key; the loss is the kind's.
"""
import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from data_pipelines import downstream, labelled, pretrain_input, volume_crops
from vismae_jax import augment, config_lib, inference, preprocess, tasks
from vismae_jax.convert import weights
from vismae_jax.train import loop, optim, vit_masked


def read_labelled(config, path: str):
  """A labelled set as fine-tuning reads it (data_pipelines/labelled.py): (examples, table,
  skipped rows); the task kind refuses labels it cannot learn from before any image is read."""
  if config_lib.volumetric(config):
    i = config.input
    return labelled.read_volumes(path, labelled.VolumeOptions(
        spacing=tuple(i.spacing) or None, modality=i.modality, ct_window=tuple(i.ct_window)))
  return labelled.read_images(path, columns(config), config.input.image_size,
                              bool(config.finetune.multilabel),
                              check=lambda table: tasks.of(config).check_labels(config, table,
                                                                                path))


def columns(config) -> downstream.Columns:
  """The CSV's optional columns as config.data names them."""
  d = config.data
  return downstream.Columns(group=d.group_column, fold=d.fold_column,
                            pixel_size=d.pixel_size_column)


def build_model(config):
  """The kind's model on the config's encoder family."""
  m, f = config.model, config.finetune
  kind = tasks.of(config)
  encoder = (vit_masked.encoder_kwargs(config) if m.arch == "vit"
             else config_lib.swin_kwargs(config))
  return kind.model_class(m.arch)(**encoder, num_classes=f.num_classes,
                                  **kind.head_kwargs(config))


def init_params(model, config, rng):
  return model.init(rng, jnp.zeros((1, *config_lib.input_shape(config))))["params"]


def model_inputs(config, batch, rng, train: bool):
  """Batch of uint8 images or float volume crops (+ masks) -> (float images, masks or None),
  augmented if training."""
  masks = batch.get("mask")
  if config_lib.volumetric(config):
    x = batch["image"].astype(jnp.float32)[..., None]
    if train:
      x, masks = augment.volume_augment(rng, x, masks, flip=config.input.flip,
                                        rotate90=config.input.rotate90,
                                        scale=config.input.intensity,
                                        shift=config.input.intensity)
    return x, masks
  x = preprocess.to_model_input(batch["image"], image_size=config.input.image_size,
                                channels=config.model.in_chans, normalization="minmax")
  if train:
    x, masks = tasks.of(config).augment(config, rng, x, masks)
  return x, masks


def make_loss_fn(model, config):
  def loss_fn(params, batch, rng):
    if config.finetune.freeze_encoder:
      params = optim.stop_encoder_gradient(params)
    input_rng, drop_rng = jax.random.split(rng)
    x, masks = model_inputs(config, batch, input_rng, train=True)
    logits = model.apply({"params": params}, x, deterministic=False,
                         rngs={"dropout": drop_rng})
    return tasks.of(config).loss(config, logits, batch, masks)
  return loss_fn


@dataclasses.dataclass(frozen=True)
class Functions:
  """The functions of a fine-tuning config's model that the loop and the evaluation jit."""
  init_params: Callable  # rng -> random parameters
  loss_fn: Callable      # (params, batch, rng) -> loss
  predict: Callable      # jitted (params, images) -> probabilities (inference.py)


def functions(config) -> Functions:
  """The model and functions of `config`, built once per process and config.

  Why: JAX caches traces and compilations per function object, and on a CPU tracing and
  compiling a Swin-UNet takes longer than a small label fraction trains; the runs of a protocol
  share one config and so one set of functions.
  The seed is left out of the key: it chooses the data order and the initial values, which reach
  these functions as arguments, so a protocol's repeats (other seeds) share them too.
  """
  return _functions(ml_collections.FrozenConfigDict({**config.to_dict(), "seed": 0}))


@functools.lru_cache(maxsize=4)
def _functions(config: ml_collections.FrozenConfigDict) -> Functions:
  model = build_model(config)
  return Functions(init_params=lambda rng: init_params(model, config, rng),
                   loss_fn=make_loss_fn(model, config),
                   predict=jax.jit(inference.make_predict_fn(model, config, model_inputs)))


class ArraySource:
  """Random access over in-memory arrays: example i is {name: array[i]}."""

  def __init__(self, arrays: dict):
    self.arrays = arrays

  def __len__(self):
    return len(next(iter(self.arrays.values())))

  def __getitem__(self, i):
    return {k: v[int(i)] for k, v in self.arrays.items()}


def pretrained_params(config, target_params):
  """The configured pretrained weights transferred into `target_params` (host arrays)."""
  f = config.finetune
  params, report = weights.load_into(
      f.pretrained, target_params, arch=config.model.arch, encoder_only=f.encoder_only,
      fill_deeper=f.fill_deeper)
  logging.info("weights from %s:\n%s", f.pretrained, report.table())
  return params


def check_pretrained(config):
  """Reads finetune.pretrained and transfers it into the model's shapes once, so that a file
  that cannot be read, or that does not fit, fails before any data is read."""
  if config.finetune.pretrained:
    shapes = jax.eval_shape(functions(config).init_params, jax.random.PRNGKey(0))
    pretrained_params(config, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))


def make_task(config, examples: dict, train, val, init: str, mesh) -> loop.Task:
  """Fine-tuning on examples[train], validated on examples[val] at every checkpoint."""
  fns, kind = functions(config), tasks.of(config)
  keep = {k: examples[k] for k in kind.example_keys}
  arrays = {k: v[np.asarray(train)] for k, v in keep.items()}
  if config_lib.volumetric(config):
    source = volume_crops.CropSource(list(arrays["image"]), list(arrays["mask"]),
                                     tuple(config.input.roi),
                                     foreground_share=config.input.foreground_share,
                                     seed=config.seed)
  else:
    source = ArraySource(arrays)
  dataset = pretrain_input.host_batches(source, seed=config.seed, batch_size=config.batch_size)
  val_examples = {k: v[np.asarray(val)] for k, v in examples.items()}

  def validate(params, step):
    decided = inference.predict_cases(fns.predict, params, val_examples["image"], config, mesh)
    return {kind.best_metric: kind.validation_score(config, decided, val_examples)}

  initial = functools.partial(pretrained_params, config) if init == "pretrained" else None
  return loop.Task(init_params=fns.init_params, loss_fn=fns.loss_fn, dataset=dataset,
                   num_examples=len(train), initial_params=initial, on_checkpoint=validate,
                   best_metric=kind.best_metric)
