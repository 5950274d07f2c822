"""Sliding-window inference: a model trained on fixed-size crops, applied to a whole volume.

Volumes (CT, MR: hundreds of voxels a side) do not fit a model whose input is a training crop
(the ROI), so the volume is tiled with overlapping ROI-sized windows, as MONAI's
`sliding_window_inference` and nnU-Net do: each window's class probabilities are weighted by a
Gaussian importance map (centres, where the model saw the most context, count most), summed and
divided by the summed weights. Windows go to `predict` `batch` at a time, the last batch padded
to the same size, so a jitted `predict` compiles once.

Host-side numpy throughout: the loop over windows is short (tens to hundreds) and the work is in
`predict`. Works for any number of spatial axes (the ROI's length): 2D images too.

  probs = sliding_window_inference(jax.jit(lambda x: model.apply(v, x)), volume, (96, 96, 96))
"""
import itertools
from typing import Callable

import numpy as np

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


def pad_to_roi(volume: np.ndarray, roi, value=None) -> tuple[np.ndarray, tuple]:
  """`volume` padded on both sides (as MONAI's SpatialPad, "symmetric") wherever its leading
  len(roi) axes are smaller than the ROI, and the slices that cut the padded array back.

  The pad value defaults to the volume's minimum: after normalisation that is the background
  (air in CT), where a constant 0 would be mid-grey for z-scored MR. Masks pass value=0.
  """
  n = len(roi)
  before = [max(r - s, 0) // 2 for s, r in zip(volume.shape[:n], roi)]
  widths = [(b, max(r - s, 0) - b) for b, s, r in zip(before, volume.shape[:n], roi)]
  back = tuple(slice(b, b + s) for b, s in zip(before, volume.shape[:n]))
  if not any(after for _, after in widths):
    return volume, back
  value = volume.min() if value is None else value
  widths += [(0, 0)] * (volume.ndim - n)
  return np.pad(volume, widths, constant_values=value), back


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
