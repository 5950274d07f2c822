"""UNETR (Hatamizadeh et al.) in 2D and 3D: SelfMedMAE's segmentation model.

A plain ViT encoder (models/vit.py, the MAE's `encoder` subtree under the same names, so a
pretraining checkpoint transfers by name) tapped after evenly spaced blocks; each tap's tokens
are put back on the patch grid and upsampled by transposed convolutions to one resolution of a
convolutional decoder, which also takes the image itself at full resolution. The decoder is
MONAI's (and its names: `encoder1` for the image, `encoder2..4` for the taps, `decoder5..2`,
`out`): residual blocks of 3x3(x3) convolutions with instance normalisation and LeakyReLU.
One implementation serves 2D and 3D: kernels have as many axes as the image.

The patch is a power of two, the same along every axis: with MONAI's 16 the four taps sit at
1/16 (the last), 1/8, 1/4 and 1/2 of the image, one transposed-convolution doubling apart, and
the parameters are MONAI's. A patch of 2^k has k taps (8: 1/8, 1/4, 1/2; names encoder1..3,
decoder4..2), for small images whose 16-voxel patches would leave a handful of tokens (the
Decathlon hippocampus: 2 x 3 x 2 of a 32 x 48 x 32 crop; 8: 4 x 6 x 4).
"""
import math


import flax.linen as nn
import jax.numpy as jnp

from vismae_jax.models import conv_blocks, swin, vit

PATCH = 16  # MONAI's, and the default


def doublings(patch) -> int:
  """k of a patch of 2^k (at least 4) along every axis; ValueError for any other patch."""
  sizes = set(swin.per_axis(patch, 1))
  size = sizes.pop()
  if sizes or size < 4 or size & (size - 1):
    raise ValueError(f"UNETR needs one patch size, a power of two >= 4, along every axis, got "
                     f"{patch}")
  return int(math.log2(size))


def tap_blocks(depth: int, taps: int = 4) -> tuple[int, ...]:
  """The blocks after which the encoder is tapped, counted from 1 (k: the output of block k):
  MONAI's, so that its UNETR loads our weights and gives our outputs. Of 12 blocks it taps its
  `hidden_states_out[3], [6], [9]`, the outputs of blocks 4, 7 and 10 (the paper's z3, z6, z9
  counted from 0), and the last; of `depth` blocks, block depth * j // taps + 1 for j < taps,
  then the last."""
  if depth < taps:
    raise ValueError(f"{taps} taps need at least {taps} blocks, got depth {depth}")
  return tuple(depth * j // taps + 1 for j in range(1, taps)) + (depth,)


class TapUp(nn.Module):
  """A tap's grid up `ups` doublings to its skip's resolution (MONAI's UnetrPrUpBlock): a
  transposed convolution, then `ups - 1` times a transposed convolution and a ResBlock."""
  features: int
  ups: int
  dtype: swin.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = conv_blocks.Up(self.features, self.dtype, name="transp_conv_init")(x)
    for i in range(self.ups - 1):
      x = conv_blocks.Up(self.features, self.dtype, name=f"transp_conv_{i}")(x)
      x = conv_blocks.ResBlock(self.features, self.dtype, name=f"res_{i}")(x)
    return x


class UNETR(vit.ViTBackbone):
  """ViT encoder tapped at `tap_blocks(depth, k)` for a patch of 2^k, convolutional decoder,
  1x1(x1) head.

  Skips and their channels (F = feature_size), with MONAI's patch of 16: the image through a
  ResBlock (F, full size); the first three taps (2F at 1/2, 4F at 1/4, 8F at 1/8); the last
  tap, the encoder's LayerNorm-ed output (as in MONAI's UNETR), starts the decoder at 1/16.
  """
  feature_size: int = 16
  num_classes: int = 2

  @nn.compact
  def __call__(self, images, deterministic: bool = True):
    """images (B, *spatial, C), spatial multiples of the patch -> logits (B, *spatial,
    num_classes) float32."""
    b, *spatial, _ = images.shape
    k = doublings(self.patch_size)
    grid = vit.token_grid(spatial, self.patch_size)
    x, hidden = self.encode(images, deterministic, taps=tap_blocks(self.depth, k)[:-1])

    def on_grid(tokens):
      """(B, [1 +] n, dim) -> (B, *grid, dim): the class token has no place on the grid."""
      return tokens[:, int(self.cls_token):].reshape(b, *grid, self.embed_dim)

    f = self.feature_size
    skips = [conv_blocks.ResBlock(f, self.dtype, name="encoder1")(images)]
    for j, tokens in enumerate(hidden):  # from 1/2^k up k - 1 - j doublings, to 1/2^(j + 1)
      skips.append(TapUp(f * 2 ** (j + 1), k - 1 - j, self.dtype, name=f"encoder{j + 2}")(
          on_grid(tokens)))
    y = on_grid(x)
    for j, skip in enumerate(reversed(skips)):
      y = conv_blocks.UpBlock(skip.shape[-1], self.dtype, name=f"decoder{k + 1 - j}")(y, skip)
    logits = conv_blocks.out_conv(self.num_classes, self.dtype)(y)
    return logits.astype(jnp.float32)
