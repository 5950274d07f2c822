"""Per-pixel input processing, jitted on device: the host hands over uint8 bytes only."""
import jax
import jax.numpy as jnp

# The release's pretraining statistics; fine-tuning in the release uses per-image min-max.
RELEASE_MEAN, RELEASE_STD = 0.223, 0.202
NORMALIZATIONS = ("minmax", "release", "unit")


def normalize(images, mode: str):
  """(B, H, W, C) float in [0, 255] -> model input.

  minmax: per image to [0, 1] (the release's fine-tuning; our default for pretraining too, so
  both stages see the same inputs); release: (x/255 - 0.223) / 0.202; unit: x / 255.
  """
  if mode == "minmax":
    lo = images.min(axis=(1, 2, 3), keepdims=True)
    hi = images.max(axis=(1, 2, 3), keepdims=True)
    return (images - lo) / jnp.maximum(hi - lo, 1e-6)
  if mode == "release":
    return (images / 255.0 - RELEASE_MEAN) / RELEASE_STD
  if mode == "unit":
    return images / 255.0
  raise ValueError(f"unknown normalization {mode!r}; expected one of {NORMALIZATIONS}")


def to_model_input(images_u8, *, image_size: int, channels: int, normalization: str):
  """(B, H, W) uint8 -> (B, S, S, channels) float32, resized on device when S != H."""
  x = images_u8.astype(jnp.float32)[..., None]
  if x.shape[1:3] != (image_size, image_size):
    x = jax.image.resize(x, (x.shape[0], image_size, image_size, 1), "bilinear")
  x = normalize(x, normalization)
  return jnp.broadcast_to(x, x.shape[:3] + (channels,)) if channels > 1 else x

