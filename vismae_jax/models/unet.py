"""Swin-UNet for segmentation and the Swin classifier: the VIS-MAE fine-tuning models.

Both reuse the SwinMAE's building blocks under the same names, so a pretraining checkpoint
transfers by name and shape (convert/transfer.py) and exports to the published layout with the
same name map (convert/torch_names.py).
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from vismae_jax.models import swin


def _conv1x1(features: int, name: str, dtype, use_bias: bool):
  return nn.Conv(features, (1, 1), use_bias=use_bias, dtype=dtype, name=name)


class SwinUNet(swin.SwinBackbone):
  """Swin encoder, mirrored Swin decoder with 1x1-fused skips, 4x expansion, 1x1 head.

  Decoder stage j mirrors encoder stage n-2-j: concatenate that stage's input on channels, fuse
  2C -> C with `skip_connection_layers_j`, run as many blocks as the encoder stage, upsample.
  """
  depths: Sequence[int] = (2, 2, 6, 2)
  num_classes: int = 2

  @nn.compact
  def __call__(self, images, deterministic: bool = True):
    """images (B, H, W, in_chans) -> logits (B, H, W, num_classes) float32."""
    x, skips = self.encode(images, deterministic)
    rates = swin.drop_path_rates(self.depths, self.drop_path)
    x = swin.PatchExpand(x.shape[-1] // 2, 2, self.dtype, name="first_patch_expanding")(x)
    n = len(self.depths)
    for j in range(n - 1):
      stage = n - 2 - j
      dim = self.embed_dim * 2 ** stage
      x = jnp.concatenate([x, skips[stage].astype(x.dtype)], axis=-1)
      x = _conv1x1(dim, f"skip_connection_layers_{j}", self.dtype, use_bias=True)(x)
      x = swin.SwinStage(dim, self.depths[stage], self.num_heads[stage], self.window,
                         rates[stage], resample="up" if stage > 0 else None,
                         remat=self.remat, attention=self.attention, dtype=self.dtype,
                         name=f"layers_up_{j}")(
                             x, deterministic)
    x = swin.layer_norm("norm_up", self.dtype)(x)
    x = swin.PatchExpand(self.embed_dim, self.patch_size, self.dtype,
                         name="final_patch_expanding")(x)
    logits = _conv1x1(self.num_classes, "head", self.dtype, use_bias=False)(x)
    return logits.astype(jnp.float32)


class SwinClassifier(swin.SwinBackbone):
  """Swin encoder, LayerNorm, global average pool, linear head.

  The release's classifier has no window padding; at 224 px every grid (56, 28, 14, 7) is a
  multiple of the window, so padding never happens there and the outputs are the same. Other
  sizes (the CPU variants) are padded like the UNet instead of failing.
  """
  num_classes: int = 2

  @nn.compact
  def __call__(self, images, deterministic: bool = True):
    """images (B, H, W, in_chans) -> logits (B, num_classes) float32."""
    x, _ = self.encode(images, deterministic)
    x = swin.layer_norm("norm", self.dtype)(x).mean(axis=(1, 2))
    return swin.dense(self.num_classes, "head", self.dtype)(x).astype(jnp.float32)
