"""SwinMAE: the VIS-MAE pretraining model, window masking and the masked-pixel loss.

Masked tokens are replaced by a learned `mask_token` after the patch embedding; nothing is
dropped, so the encoder sees the full token grid (as in the release). Positions come only from
the relative position bias: the release's sin-cos `pos_embed` is never added, so it is not a
parameter here (the PyTorch export writes it back as a buffer).
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vismae_jax.models import swin


def window_mask(rng, batch: int, units_per_side: int, mask_ratio: float):
  """Boolean (batch, units, units) mask, True = masked; exactly the release's unit count.

  Keeps int(units^2 * (1 - mask_ratio)) units per image, uniformly at random, vectorised over
  the batch (the release loops over samples on the host).
  """
  n_units = units_per_side * units_per_side
  n_keep = int(n_units * (1 - mask_ratio))
  noise = jax.random.uniform(rng, (batch, n_units))
  rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
  return (rank >= n_keep).reshape(batch, units_per_side, units_per_side)


def unit_mask_to_tokens(unit_mask, tokens_per_unit: int):
  """(B, u, u) -> (B, u * t, u * t): each mask unit covers t x t tokens."""
  return jnp.repeat(jnp.repeat(unit_mask, tokens_per_unit, axis=1), tokens_per_unit, axis=2)


def patchify(images, patch: int):
  """(B, H, W, C) -> (B, H/p, W/p, p * p * C), each patch flattened as (row, col, channel)."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // patch, w // patch, patch * patch * c)


def unpatchify(patches, patch: int, channels: int):
  """Inverse of `patchify`."""
  b, gh, gw, _ = patches.shape
  x = patches.reshape(b, gh, gw, patch, patch, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh * patch, gw * patch, channels)


def masked_mse(pred, images, token_mask, patch: int, norm_pix_loss: bool = False):
  """Per-token MSE over the p*p*C values, averaged over masked tokens only.

  With `norm_pix_loss` each target patch is standardised by its own mean and unbiased variance.
  """
  target = patchify(images, patch).astype(jnp.float32)
  if norm_pix_loss:
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, keepdims=True, ddof=1)
    target = (target - mean) / jnp.sqrt(var + 1e-6)
  per_token = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=-1)
  mask = token_mask.astype(jnp.float32)
  return jnp.sum(per_token * mask) / jnp.maximum(jnp.sum(mask), 1.0)


class SwinMAE(swin.SwinBackbone):
  """Swin encoder on the masked token grid + mirrored Swin decoder predicting pixel patches."""
  decoder_depths: Sequence[int] = (2, 2, 2)

  @nn.compact
  def __call__(self, images, token_mask, deterministic: bool = True):
    """images (B, H, W, in_chans) float; token_mask (B, H/p, W/p) bool -> (B, H/p, W/p, p*p*C)."""
    x, _ = self.encode(images, deterministic, token_mask)

    n = len(self.depths)
    # Decoder stage j mirrors encoder stage n-2-j and takes the drop-path rates it would have.
    mirrored = list(reversed(self.decoder_depths)) + [self.depths[-1]]
    rates = swin.drop_path_rates(mirrored, self.drop_path)
    x = swin.PatchExpand(x.shape[-1] // 2, 2, self.dtype, name="first_patch_expanding")(x)
    for j, depth in enumerate(self.decoder_depths):
      stage = n - 2 - j
      x = swin.SwinStage(self.embed_dim * 2 ** stage, depth, self.num_heads[stage], self.window,
                         rates[stage], resample="up" if stage > 0 else None,
                         remat=self.remat, dtype=self.dtype,
                         name=f"layers_up_{j}")(x, deterministic)
    x = swin.layer_norm("norm_up", self.dtype)(x)
    pred = swin.dense(self.patch_size ** 2 * self.in_chans, "decoder_pred", self.dtype)(x)
    return swin.name_axes(pred.astype(jnp.float32))
