"""Inference: a fine-tuned model's probabilities for images and whole volumes, on the mesh.

Fine-tuning's validation and test scoring, `task=predict` and `task=evaluate` all predict
through here: `make_predict_fn` (the jitted forward pass with optional flips, as nnU-Net's
mirroring), `predict_all` (an in-memory set in batches split over the devices) and
`predict_cases` (2-D images at once, volumes by sliding windows).

Sliding-window inference applies a model trained on fixed-size crops to a whole volume.
Volumes (CT, MR: hundreds of voxels a side) do not fit a model whose input is a training crop
(the ROI), so the volume is tiled with overlapping ROI-sized windows, as MONAI's
`sliding_window_inference` and nnU-Net do: each window's class probabilities are weighted by a
Gaussian importance map (centres, where the model saw the most context, count most), summed and
divided by the summed weights. Windows go to `predict` `batch` at a time, the last batch padded
to the same size, so a jitted `predict` compiles once. Host-side numpy: the loop over windows is
short (tens to hundreds) and the work is in `predict`. Any number of spatial axes works.

  probs = sliding_window_inference(jax.jit(lambda x: model.apply(v, x)), volume, (96, 96, 96))
"""

import itertools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from data_pipelines.volume_crops import pad_to_roi
from vismae_jax import config_lib, parallel, tasks

# MONAI's floor for the importance map: corners of the window keep a tiny weight, so that a
# voxel covered only by window corners is still divided by a positive sum.
_MIN_IMPORTANCE = 1e-3


def gaussian_importance(roi, sigma_scale: float = 0.125) -> np.ndarray:
  """MONAI's / nnU-Net's Gaussian importance map over a window of shape `roi`.

  sigma = sigma_scale * roi per axis, centred on the window's middle ((n - 1) / 2, so the map
  is symmetric for even sizes too), normalised to a maximum of 1 and floored at 1e-3.
  """
  axes = [np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / (sigma_scale * n)) ** 2) for n in roi]
  importance = np.ones(tuple(roi), np.float32)
  for axis, profile in enumerate(axes):
    importance = importance * profile.reshape([-1 if a == axis else 1 for a in range(len(roi))])
  return np.maximum(importance / importance.max(), _MIN_IMPORTANCE).astype(np.float32)


def window_starts(shape, roi, overlap: float) -> list[tuple]:
  """Every window's start corner, as MONAI scans: per axis a step of roi * (1 - overlap) rounded
  down (at least 1), the last window flush with the end; one start, 0, where the volume is no
  larger than the ROI (it is padded to the ROI)."""
  per_axis = []
  for size, r in zip(shape, roi):
    step = max(int(r * (1 - overlap)), 1)
    per_axis.append(list(range(0, size - r, step)) + [max(size - r, 0)])
  return list(itertools.product(*per_axis))


def sliding_window_inference(predict: Callable, volume: np.ndarray, roi, overlap: float = 0.5,
                             batch: int = 4, sigma_scale: float = 0.125) -> np.ndarray:
  """Class probabilities (*spatial, K) float32 for `volume` (*spatial, C), from `predict`, which
  maps (batch, *roi, C) inputs to (batch, *roi, K) probabilities.

  A volume smaller than the ROI along an axis is padded with its minimum (`pad_to_roi`) and the
  result cut back to its shape. The last batch of windows is filled up by repeating its last
  window and the surplus outputs dropped, so `predict` always sees the same shape.
  """
  roi = tuple(roi)
  padded, back = pad_to_roi(np.asarray(volume), roi)
  spatial = padded.shape[:len(roi)]
  importance = gaussian_importance(roi, sigma_scale)
  starts = window_starts(spatial, roi, overlap)
  weights = np.zeros(spatial, np.float32)
  total = None
  for first in range(0, len(starts), batch):
    chunk = starts[first:first + batch]
    windows = [tuple(slice(s, s + r) for s, r in zip(start, roi)) for start in chunk]
    inputs = np.stack([padded[w] for w in windows + windows[-1:] * (batch - len(windows))])
    outputs = np.asarray(predict(inputs), np.float32)[:len(windows)]
    if total is None:
      total = np.zeros(spatial + outputs.shape[-1:], np.float32)
    for window, output in zip(windows, outputs):
      total[window] += output * importance[..., None]
      weights[window] += importance
  return (total / weights[..., None])[back]


# Test-time augmentation: every image also seen flipped along these axes of (B, H, W, C).
TTA_FLIPS = ((), (2,), (1,), (1, 2))


def make_predict_fn(model, config, model_inputs):
  """params, images (B, H, W) uint8 -> probabilities: per pixel (B, H, W, classes) for
  segmentation, per image (B, classes) for classification (a sigmoid per label with
  finetune.multilabel). With predict.tta, the mean over the image and its flips (a
  segmentation flipped back). `model_inputs(config, batch, rng, train)` prepares the input."""
  kind = tasks.of(config)

  def probabilities(params, x):
    return kind.probabilities(config, model.apply({"params": params}, x, deterministic=True))

  def predict(params, images):
    x, _ = model_inputs(config, {"image": images}, None, train=False)
    if not config.predict.tta:
      return probabilities(params, x)
    views = [kind.unflip(probabilities(params, jnp.flip(x, axes)), axes) for axes in TTA_FLIPS]
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
  return [sliding_window_inference(windows, np.asarray(v)[..., None], tuple(config.input.roi),
                                   overlap=config.input.overlap, batch=config.eval_batch_size)
          for v in volumes]


def predict_cases(predict, params, images, config, mesh):
  """What the config's kind scores (tasks.*.decide) for `images`: an (N, H, W) array of 2-D
  images, or a list of whole volumes."""
  if config_lib.volumetric(config):
    probabilities = predict_volumes(predict, params, images, config, mesh)
  else:
    probabilities = predict_all(predict, params, images, config.eval_batch_size, mesh)
  return tasks.of(config).decide(probabilities)
