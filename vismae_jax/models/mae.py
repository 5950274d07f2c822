"""SwinMAE: the VIS-MAE pretraining model, window masking and the masked-pixel loss.

Two maskings (`config.mae.masking`), one set of parameters:
- "random", the release's: masked tokens are replaced by a learned `mask_token` after the patch
  embedding and the encoder computes the whole token grid, 75% of it carrying nothing.
- "uniform", sparse (after UM-MAE): of every 2x2 block of mask units exactly one is kept, and the
  kept units are laid side by side into an image of half the side (`compact`), which the
  encoder runs on as on any image: a quarter of the tokens at every stage. A quarter of the
  compacted units is then hidden behind `mask_token` as well (`secondary_ratio`), so the task
  stays as hard as masking 75% at random. Unit alignment through the patch merges: a 16 px unit is
  4x4 tokens at stage 1, 2x2 at stage 2 and one token at stage 3; the merge into stage 4 joins
  four neighbouring compacted units (an odd grid is zero-padded, as Swin does), so stage 4 is
  compact too. The decoder runs in the compacted layout until its tokens are unit-sized again,
  then every unit goes back to its place (`uncompact`) and the units nobody saw are zero vectors,
  the decoder's mask token; from there on it runs on the full grid and predicts every pixel.

Positions come only from the relative position bias: the release's sin-cos `pos_embed` is never
added, so it is not a parameter here (the PyTorch export writes it back as a buffer).
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vismae_jax.models import swin, vit


def window_mask(rng, batch: int, units, mask_ratio: float):
  """Boolean (batch, *units) mask, True = masked; exactly the release's unit count. `units` is
  the units per side of a square image, or one count per axis (a volume's).

  Keeps int(prod(units) * (1 - mask_ratio)) units per image, uniformly at random, vectorised
  over the batch (the release loops over samples on the host).
  """
  units = swin.per_axis(units, 2)
  n_units = int(np.prod(units))
  n_keep = int(n_units * (1 - mask_ratio))
  noise = jax.random.uniform(rng, (batch, n_units))
  rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
  return (rank >= n_keep).reshape(batch, *units)


def uniform_mask(rng, batch: int, units_per_side: int, secondary_ratio: float):
  """(kept, hidden), both boolean (batch, units, units): the sparse mode's masks.

  kept: exactly one unit of every 2x2 block, at random (the units `compact` keeps);
  hidden: what the encoder never sees and the loss scores, the other three of each block plus
  the kept units that `window_mask` hides at secondary_ratio (hidden behind the mask token).
  """
  half = units_per_side // 2
  offset_rng, secondary_rng = jax.random.split(rng)
  offset = jax.random.randint(offset_rng, (batch, half, half), 0, 4)
  kept = jax.nn.one_hot(offset, 4, dtype=bool).reshape(batch, half, half, 2, 2)
  kept = kept.transpose(0, 1, 3, 2, 4).reshape(batch, units_per_side, units_per_side)
  secondary = unit_mask_to_tokens(window_mask(secondary_rng, batch, half, secondary_ratio), 2)
  return kept, ~kept | secondary


def _kept_one_hot(kept_units, x):
  """kept_units (B, U, U) as the (B, U/2, 2, 1, U/2, 2, 1, 1...) one-hot that picks each
  block's kept unit out of x, a grid already split as (B, U/2, 2|1, s, U/2, 2|1, s, ...)."""
  b, units = kept_units.shape[:2]
  ones = [1] * (x.ndim - 7)
  return kept_units.reshape(b, units // 2, 2, 1, units // 2, 2, 1, *ones).astype(x.dtype)


def compact(x, kept_units):
  """(B, U*s, U*s, ...) -> (B, U/2*s, U/2*s, ...): each 2x2 block of units replaced by its kept
  unit, s = pixels or tokens per unit. Static shapes: the pick is a multiply by the one-hot."""
  b, side, rest = x.shape[0], x.shape[1], x.shape[3:]
  half = kept_units.shape[1] // 2
  s = side // (2 * half)
  x = x.reshape(b, half, 2, s, half, 2, s, *rest)
  return (x * _kept_one_hot(kept_units, x)).sum(axis=(2, 5)).reshape(b, half * s, half * s,
                                                                     *rest)


def uncompact(x, kept_units):
  """Inverse of `compact`: each unit back at its place in the full grid, zeros elsewhere."""
  b, side, rest = x.shape[0], x.shape[1], x.shape[3:]
  half = kept_units.shape[1] // 2
  s = side // half
  x = x.reshape(b, half, 1, s, half, 1, s, *rest)
  return (x * _kept_one_hot(kept_units, x)).reshape(b, 2 * half * s, 2 * half * s, *rest)


def unit_mask_to_tokens(unit_mask, tokens_per_unit: int):
  """(B, *units) -> (B, *(units * t)): each mask unit covers t tokens along every axis."""
  for axis in range(1, unit_mask.ndim):
    unit_mask = jnp.repeat(unit_mask, tokens_per_unit, axis=axis)
  return unit_mask


def patchify(images, patch: int):
  """(B, *spatial, C) -> (B, *spatial/p, p^d * C), each patch flattened as (offset along each
  axis in order, channel): vit.patchify on the token grid."""
  b, *spatial, _ = images.shape
  return vit.patchify(images, patch).reshape(b, *[s // patch for s in spatial], -1)


def unpatchify(patches, patch: int, channels: int):
  """Inverse of `patchify`."""
  b, *grid, _ = patches.shape
  return vit.unpatchify(patches.reshape(b, int(np.prod(grid)), -1), tuple(grid), patch)


def masked_pixel_loss(pred, images, token_mask, patch: int, norm_pix_loss: bool, error):
  """vit.masked_patch_error on the token grid: the mean of error(pred - target) over the masked
  pixels, as every token holds as many."""
  return vit.masked_patch_error(pred, patchify(images, patch), token_mask, norm_pix_loss, error)


def masked_mse(pred, images, token_mask, patch: int, norm_pix_loss: bool = False):
  """MAE's loss: the squared error on the masked pixels."""
  return masked_pixel_loss(pred, images, token_mask, patch, norm_pix_loss, jnp.square)


def masked_l1(pred, images, token_mask, patch: int, norm_pix_loss: bool = False):
  """SimMIM's loss: the absolute error on the masked pixels."""
  return masked_pixel_loss(pred, images, token_mask, patch, norm_pix_loss, jnp.abs)


class SwinMAE(swin.SwinBackbone):
  """Swin encoder on the masked token grid + mirrored Swin decoder predicting pixel patches."""
  decoder_depths: Sequence[int] = (2, 2, 2)

  @nn.compact
  def __call__(self, images, token_mask, deterministic: bool = True, kept_units=None):
    """images (B, H, W, in_chans) float; token_mask (B, H/p, W/p) bool, True where the encoder
    sees nothing -> (B, H/p, W/p, p*p*C). kept_units (B, U, U) bool from `uniform_mask`
    chooses the sparse mode; None, the release's dense one."""
    x, skips = self.encode_visible(images, token_mask, deterministic, kept_units)
    # Unit-sized tokens: the stage where a unit is one token (or the last stage, if units are
    # larger); the sparse decoder puts the units back in place there.
    unit_level = -1
    if kept_units is not None:
      tokens_per_unit = images.shape[1] // self.patch_size // kept_units.shape[1]
      unit_level = min(int(np.log2(tokens_per_unit)), len(self.depths) - 1)

    def at_level(x, level):
      """While compacted, crop what an odd grid's padding added; at the unit level, back to the
      full grid."""
      if level < unit_level:
        return x
      x = x[:, :skips[level].shape[1], :skips[level].shape[2]]
      return uncompact(x, kept_units) if level == unit_level else x

    n = len(self.depths)
    x = at_level(x, n - 1)
    # Decoder stage j mirrors encoder stage n-2-j and takes the drop-path rates it would have.
    mirrored = list(reversed(self.decoder_depths)) + [self.depths[-1]]
    rates = swin.drop_path_rates(mirrored, self.drop_path)
    x = swin.PatchExpand(x.shape[-1] // 2, 2, self.dtype, name="first_patch_expanding")(x)
    x = at_level(x, n - 2)
    for j, depth in enumerate(self.decoder_depths):
      stage = n - 2 - j
      x = swin.SwinStage(self.embed_dim * 2 ** stage, depth, self.num_heads[stage], self.window,
                         rates[stage], resample="up" if stage > 0 else None,
                         remat=self.remat, attention=self.attention, dtype=self.dtype,
                         name=f"layers_up_{j}")(x, deterministic)
      x = at_level(x, stage - 1) if stage > 0 else x
    x = swin.layer_norm("norm_up", self.dtype)(x)
    pred = swin.dense(self.patch_size ** 2 * self.in_chans, "decoder_pred", self.dtype)(x)
    return swin.name_axes(pred.astype(jnp.float32))

  def encode_visible(self, images, token_mask, deterministic: bool, kept_units=None):
    """The encoder's (features, skips) on what it may see: the whole masked grid, or in the
    sparse mode the compacted kept units (skips then hold the compacted grids' shapes)."""
    if kept_units is not None:
      images = compact(images, kept_units)
      token_mask = compact(token_mask, kept_units).astype(bool)
    return self.encode(images, deterministic, token_mask)


class SwinMAEEncoder(SwinMAE):
  """SwinMAE's encoder alone on the same parameters (the rest unused): what the sparse mode
  saves is measured on it (benchmarks/train_throughput.py) and its inputs tested."""

  @nn.compact
  def __call__(self, images, token_mask, deterministic: bool = True, kept_units=None):
    return self.encode_visible(images, token_mask, deterministic, kept_units)[0]
