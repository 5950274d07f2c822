"""The fine-tuning tasks: Swin-UNet or UNETR segmentation, Swin or ViT classification; UNETR on
volumes too (config.input.roi: trained on crops, validated on whole volumes by sliding windows).

Like pretraining, everything per-pixel runs in the jitted step: uint8 -> float, per-image
min-max to [0, 1] (the release's fine-tuning input), channel replication, augmentation from the
step's key. Losses: 0.4 cross-entropy + 0.6 soft Dice over the foreground classes for
segmentation; cross-entropy (softmax) or binary cross-entropy (multi-label) for classification.
"""
import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from data_pipelines import pretrain_input, volume_crops
from vismae_jax import augment, checkpoint, config_lib, metrics, parallel, preprocess
from vismae_jax import sliding_window
from vismae_jax.convert import torch_import, transfer
from vismae_jax.models import unet, unetr, vit
from vismae_jax.train import loop, optim, vit_masked


def build_model(config):
  m, f = config.model, config.finetune
  seg = f.kind == config_lib.SEGMENTATION
  if m.arch == "vit":
    head = dict(feature_size=m.feature_size) if seg else {}
    return (unetr.UNETR if seg else vit.ViTClassifier)(
        **vit_masked.encoder_kwargs(config), num_classes=f.num_classes, **head)
  cls = unet.SwinUNet if f.kind == config_lib.SEGMENTATION else unet.SwinClassifier
  return cls(num_classes=f.num_classes, in_chans=m.in_chans, patch_size=m.patch_size,
             embed_dim=m.embed_dim, depths=tuple(m.depths), num_heads=tuple(m.num_heads),
             window=m.window, drop_path=m.drop_path, remat=config_lib.remat_policy(m),
             attention=m.attention, dtype=jnp.dtype(config.dtype))


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
  if train and config.finetune.kind == config_lib.SEGMENTATION:
    x, masks = augment.segmentation_augment(rng, x, masks)
  elif train and config.input.hflip:
    x = augment.random_hflip(rng, x)
  return x, masks


def soft_dice_loss(logits, masks, num_classes: int, eps: float = 1e-5):
  """1 - mean soft Dice over foreground classes, pooled over the batch's pixels or voxels."""
  probs = jax.nn.softmax(logits, axis=-1)[..., 1:]
  onehot = jax.nn.one_hot(masks, num_classes)[..., 1:]
  axes = tuple(range(logits.ndim - 1))
  inter = jnp.sum(probs * onehot, axis=axes)
  total = jnp.sum(probs, axis=axes) + jnp.sum(onehot, axis=axes)
  return 1.0 - jnp.mean((2 * inter + eps) / (total + eps))


def segmentation_loss(logits, masks, num_classes: int):
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, masks).mean()
  return 0.4 * ce + 0.6 * soft_dice_loss(logits, masks, num_classes)


def classification_loss(logits, labels):
  if labels.ndim == 2:  # multi-label flags
    return optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype)).mean()
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_loss_fn(model, config):
  def loss_fn(params, batch, rng):
    if config.finetune.freeze_encoder:
      params = optim.stop_encoder_gradient(params)
    input_rng, drop_rng = jax.random.split(rng)
    x, masks = model_inputs(config, batch, input_rng, train=True)
    logits = model.apply({"params": params}, x, deterministic=False,
                         rngs={"dropout": drop_rng})
    if config.finetune.kind == config_lib.SEGMENTATION:
      return segmentation_loss(logits, masks, config.finetune.num_classes)
    return classification_loss(logits, batch["label"])
  return loss_fn


# Test-time augmentation: every image also seen flipped along these axes of (B, H, W, C).
TTA_FLIPS = ((), (2,), (1,), (1, 2))


def make_predict_fn(model, config):
  """params, images (B, H, W) uint8 -> probabilities: per pixel (B, H, W, classes) for
  segmentation, per image (B, classes) for classification (a sigmoid per label with
  finetune.multilabel). With predict.tta, the mean over the image and its flips (a
  segmentation flipped back), as nnU-Net's mirroring does."""
  seg = config.finetune.kind == config_lib.SEGMENTATION

  def probabilities(params, x):
    logits = model.apply({"params": params}, x, deterministic=True)
    if not seg and config.finetune.multilabel:
      return jax.nn.sigmoid(logits)
    return jax.nn.softmax(logits, axis=-1)

  def predict(params, images):
    x, _ = model_inputs(config, {"image": images}, None, train=False)
    if not config.predict.tta:
      return probabilities(params, x)
    views = []
    for axes in TTA_FLIPS:
      p = probabilities(params, jnp.flip(x, axes))
      views.append(jnp.flip(p, axes) if seg else p)
    return jnp.mean(jnp.stack(views), axis=0)
  return predict


def predict_all(predict, params, images: np.ndarray, batch: int, mesh) -> np.ndarray:
  """`predict` over a whole in-memory set, in order: each batch split over the mesh's devices
  (the last one padded, then cut) and gathered back, on every process."""
  sharding = parallel.batch_sharding(mesh)
  outputs = []
  for start in range(0, len(images), batch):
    rows = images[start:start + batch]
    n = len(rows)
    rows = np.concatenate([rows, np.repeat(rows[-1:], batch - n, axis=0)])
    x = jax.make_array_from_callback(rows.shape, sharding, lambda index, rows=rows: rows[index])
    outputs.append(np.asarray(multihost_utils.process_allgather(predict(params, x),
                                                                tiled=True))[:n])
  return np.concatenate(outputs)


def predict_volumes(predict, params, volumes, config, mesh) -> list[np.ndarray]:
  """Class probabilities (X, Y, Z, classes) of each whole volume: Gaussian-weighted sliding
  windows of config.input.roi overlapping by input.overlap, eval_batch_size windows at a time
  split over the mesh as `predict_all` splits images."""
  def windows(batch):  # (B, *roi, 1) -> (B, *roi, classes)
    return predict_all(predict, params, np.asarray(batch)[..., 0], config.eval_batch_size, mesh)
  return [sliding_window.sliding_window_inference(
              windows, np.asarray(v)[..., None], tuple(config.input.roi),
              overlap=config.input.overlap, batch=config.eval_batch_size)
          for v in volumes]


def segment(predict, params, images, config, mesh):
  """Label maps of `images`: an (N, H, W) array of 2-D images, a list of whole volumes."""
  if config_lib.volumetric(config):
    return [label_maps(p) for p in predict_volumes(predict, params, images, config, mesh)]
  return label_maps(predict_all(predict, params, images, config.eval_batch_size, mesh))


def label_maps(probabilities: np.ndarray) -> np.ndarray:
  """Per-pixel classes (B, H, W) of segmentation probabilities (B, H, W, classes)."""
  return probabilities.argmax(axis=-1).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Functions:
  """The functions of a fine-tuning config's model that the loop and the evaluation jit."""
  init_params: Callable  # rng -> random parameters
  loss_fn: Callable      # (params, batch, rng) -> loss
  predict: Callable      # jitted (params, images) -> probabilities (make_predict_fn)


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
                   predict=jax.jit(make_predict_fn(model, config)))


class ArraySource:
  """Random access over in-memory arrays: example i is {name: array[i]}."""

  def __init__(self, arrays: dict):
    self.arrays = arrays

  def __len__(self):
    return len(next(iter(self.arrays.values())))

  def __getitem__(self, i):
    return {k: v[int(i)] for k, v in self.arrays.items()}


def pretrained_params(config, target_params):
  """The configured pretraining checkpoint transferred into `target_params` (host arrays)."""
  f = config.finetune
  if f.pretrained.endswith(torch_import.SUFFIXES):  # published PyTorch weights
    source = torch_import.load_state(f.pretrained)
  else:
    source = checkpoint.load_params(f.pretrained)
  if config.model.arch == "vit":  # one `encoder` subtree in every ViT model
    params, report = transfer.transfer_by_name(source, target_params)
  else:
    params, report = transfer.transfer(source, target_params, encoder_only=f.encoder_only,
                                       fill_deeper=f.fill_deeper)
  logging.info("weights from %s:\n%s", f.pretrained, report.table())
  return params


def best_metric(config) -> str:
  """The validation metric that chooses a fine-tuning run's best checkpoint."""
  return "val_dice" if config.finetune.kind == config_lib.SEGMENTATION else "val_auc"


def check_pretrained(config):
  """Reads finetune.pretrained and transfers it into the model's shapes once, so that a file
  that cannot be read, or that does not fit, fails before any data is read."""
  if config.finetune.pretrained:
    shapes = jax.eval_shape(functions(config).init_params, jax.random.PRNGKey(0))
    pretrained_params(config, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))


def make_task(config, examples: dict, train, val, init: str, mesh) -> loop.Task:
  """Fine-tuning on examples[train], validated on examples[val] at every checkpoint."""
  fns = functions(config)
  seg = config.finetune.kind == config_lib.SEGMENTATION
  keep = {k: v for k, v in examples.items() if seg or k != "mask"}
  arrays = {k: v[np.asarray(train)] for k, v in keep.items()}
  if config_lib.volumetric(config):
    source = volume_crops.CropSource(list(arrays["image"]), list(arrays["mask"]),
                                     tuple(config.input.roi),
                                     foreground_share=config.input.foreground_share,
                                     seed=config.seed)
  else:
    source = ArraySource(arrays)
  dataset = pretrain_input.host_batches(source, seed=config.seed, batch_size=config.batch_size)
  val_examples = {k: v[np.asarray(val)] for k, v in keep.items()}
  metric = best_metric(config)

  def validate(params, step):
    if seg:
      predicted = segment(fns.predict, params, val_examples["image"], config, mesh)
      dice = metrics.segmentation_scores(list(predicted), list(val_examples["mask"]),
                                         config.finetune.num_classes, hd95=False)["dice"]
      return {metric: float(np.nanmean(dice))}
    predictions = predict_all(fns.predict, params, val_examples["image"],
                              config.eval_batch_size, mesh)
    try:
      return {metric: float(metrics.classification_scores(val_examples["label"],
                                                          predictions)["roc_auc"])}
    except ValueError:  # a validation split with one class only
      return {metric: float("nan")}

  initial = functools.partial(pretrained_params, config) if init == "pretrained" else None
  return loop.Task(init_params=fns.init_params, loss_fn=fns.loss_fn, dataset=dataset,
                   num_examples=len(train), initial_params=initial, on_checkpoint=validate,
                   best_metric=metric)
