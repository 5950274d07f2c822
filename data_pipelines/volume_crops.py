"""Random ROI crops of whole volumes: the training examples of 3D models (UNETR-3D).

A 3D model trains on fixed-size crops (the ROI, e.g. 96^3) of volumes that are larger, of
differing sizes, and mostly background: a lesion or organ can fill under 1% of a CT. Uniform
crops would then rarely show foreground, so as MONAI's RandCropByPosNegLabel a crop is centred
on a foreground voxel with probability `foreground_share`, else on any voxel (nnU-Net's
oversampling; MONAI draws these from the background only, which needs a second index list for
little difference), centres moved inwards so the crop stays inside the volume. Without masks
(pretraining) crops are uniform over the positions that fit.

`CropSource` is a random-access source for grain; example i depends only on (seed, i), so a
resumed run sees the same crops in the same order:

  source = CropSource(images, masks, roi=(96, 96, 96), crops_per_volume=4)
  dataset = grain.MapDataset.source(source).seed(0).shuffle().repeat().batch(2)
"""
import numpy as np



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


def central_crop(volume: np.ndarray, roi) -> np.ndarray:
  """The ROI at the centre of `volume` (padded as `pad_to_roi` where it is smaller): the same
  part of every case, for features compared across models."""
  volume, _ = pad_to_roi(volume, roi)
  start = [(s - r) // 2 for s, r in zip(volume.shape, roi)]
  return volume[tuple(slice(a, a + r) for a, r in zip(start, roi))]


class CropSource:
  """Example i: a crop of volume i % len(images), {"image": float32 ROI, "mask": uint8 ROI}
  ("mask" only with masks).

  images: float32 (X, Y, Z) volumes, normalised: a list, or any random-access source (the volume
  shards of pretraining, read one volume at a time); masks: uint8 label maps of the same shapes,
  or None. A volume smaller than the ROI along an axis is padded on both sides, the image with its
  minimum (the background after normalisation) and the mask with 0, so every crop has the ROI's
  shape. `crops_per_volume` repeats the volumes within one epoch, each time with other crops.
  """

  def __init__(self, images: list[np.ndarray], masks: list[np.ndarray] | None,
               roi: tuple[int, int, int], foreground_share: float = 0.5, seed: int = 0,
               crops_per_volume: int = 1):
    self.roi = tuple(roi)
    self.images = images  # padded as they are read: a source may hold millions
    self.masks = None if masks is None else [pad_to_roi(m, self.roi, 0)[0] for m in masks]
    # Flat indices of each volume's foreground, found once: drawing a centre is then O(1).
    self.foreground = (None if masks is None else
                       [np.flatnonzero(mask) for mask in self.masks])
    self.foreground_share = foreground_share
    self.seed = seed
    self.crops_per_volume = crops_per_volume

  def __len__(self):
    return len(self.images) * self.crops_per_volume

  def _start(self, rng, v: int, shape) -> np.ndarray:
    """The crop's corner in volume v of (padded) `shape`: uniform without masks, else around a
    drawn centre."""
    shape, roi = np.array(shape), np.array(self.roi)
    if self.masks is None:
      return rng.integers(0, shape - roi + 1)
    foreground = self.foreground[v]
    if len(foreground) and rng.random() < self.foreground_share:
      centre = np.array(np.unravel_index(foreground[rng.integers(len(foreground))], shape))
    else:
      centre = rng.integers(0, shape)
    return np.clip(centre - roi // 2, 0, shape - roi)

  def __getitem__(self, i):
    i = int(i)
    v = i % len(self.images)
    rng = np.random.default_rng([self.seed, i])
    image = pad_to_roi(np.asarray(self.images[v]), self.roi)[0]
    start = self._start(rng, v, image.shape)
    crop = tuple(slice(s, s + r) for s, r in zip(start, self.roi))
    example = {"image": np.array(image[crop], np.float32)}  # copies: not a view
    if self.masks is not None:
      example["mask"] = np.array(self.masks[v][crop], np.uint8)
    return example
