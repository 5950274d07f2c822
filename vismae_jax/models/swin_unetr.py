"""SwinUNETR (Hatamizadeh et al.) in 2D and 3D: MONAI's architecture on our Swin encoder.

MONAI's `monai.networks.nets.SwinUNETR`, written from its description: a Swin encoder of four
stages that each end in patch merging (so the deepest features sit at 1/32 with patches of 2),
whose LayerNorm-ed (parameter-free) stage outputs feed a residual convolutional decoder
(conv_blocks: UnetResBlock with instance norm and LeakyReLU, 2x transposed convolutions) with
the image itself as the full-resolution skip, and a 1x1(x1) output convolution.

The encoder is `swin.SwinBackbone` in MONAI's flavour (`MonaiSwin`: windows clamped to small
maps, no norm after the patch embedding, PyTorch's LayerNorm, MONAI's merge order), under
the names every Swin model here uses (`patch_embed`, `encoder/layers_<i>/...`), so a Swin
pretraining (SMIT) transfers by name; convert/monai.py maps every parameter one to one onto
MONAI's state dict. `use_v2` (SwinUNETR-v2) adds a residual convolution block before each stage.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from vismae_jax.models import conv_blocks, swin

STAGES = 4  # MONAI's SwinUNETR has four, each ending in patch merging


class MonaiSwin(swin.SwinBackbone):
  """The Swin backbone with MONAI's SwinTransformer defaults (the release's Swin is the
  SwinBackbone's): feature size 48, patches of 2, window 7, no stochastic depth."""
  in_chans: int = 1
  patch_size: int = 2
  embed_dim: int = 48
  drop_path: float = 0.0
  downsample_last: bool = True
  clamp_window: bool = True
  patch_norm: bool = False
  norm_style: swin.NormStyle = swin.MONAI_NORM


def normalize(x):
  """MONAI's `proj_out`: LayerNorm over channels without parameters."""
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + swin.MONAI_NORM.eps)


def input_multiple(patch_size: int) -> int:
  """What every spatial size of the input must be a multiple of: the patch, then four 2x
  mergings (32 with patches of 2)."""
  return patch_size * 2 ** STAGES


class SwinUNETR(MonaiSwin):
  """images (B, *spatial, C) -> logits (B, *spatial, num_classes) float32; spatial sizes are
  multiples of `input_multiple(patch_size)`. `embed_dim` is MONAI's `feature_size` (F).

  Hidden states h0..h4: the embedding (F at 1/p) and each stage's merged output (2F at 1/2p ...
  16F at 1/16p), normalised. Skips: the image (encoder1, F), h0 (encoder2, F), h1 (encoder3,
  2F), h2 (encoder4, 4F), h3 as it is; the decoder starts from h4 (encoder10, 16F) and goes up
  through decoder5..decoder1 to full resolution.
  """
  num_classes: int = 2

  @nn.compact
  def __call__(self, images, deterministic: bool = True):
    if len(self.depths) != STAGES:
      raise ValueError(f"SwinUNETR has {STAGES} stages, got depths {tuple(self.depths)}")
    x, skips = self.encode(images, deterministic)
    hidden = [normalize(h) for h in skips + [x]]
    f, d = self.embed_dim, self.dtype
    res = lambda features, name: conv_blocks.ResBlock(features, d, name=name)
    encoded = [res(f, "encoder1")(images), res(f, "encoder2")(hidden[0]),
               res(2 * f, "encoder3")(hidden[1]), res(4 * f, "encoder4")(hidden[2]),
               hidden[3]]
    y = res(16 * f, "encoder10")(hidden[4])
    for j, skip in enumerate(reversed(encoded)):  # decoder5 (8F) .. decoder1 (F)
      features = f * 2 ** max(STAGES - 1 - j, 0)
      y = conv_blocks.UpBlock(features, d, name=f"decoder{STAGES + 1 - j}")(y, skip)
    logits = conv_blocks.out_conv(self.num_classes, d)(y)
    return logits.astype(jnp.float32)
