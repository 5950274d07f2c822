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

from vismae_jax.models import swin, vit

PATCH = 16  # MONAI's, and the default
NORM_EPS = 1e-5  # PyTorch's InstanceNorm default
# PyTorch's default convolution init, which MONAI's UNETR keeps: uniform with variance
# 1 / (3 fan-in).
KERNEL_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def doublings(patch) -> int:
  """k of a patch of 2^k (at least 4) along every axis; ValueError for any other patch."""
  sizes = set(vit.patch_shape(patch, 1) if isinstance(patch, int) else patch)
  size = sizes.pop()
  if sizes or size < 4 or size & (size - 1):
    raise ValueError(f"UNETR needs one patch size, a power of two >= 4, along every axis, got "
                     f"{patch}")
  return int(math.log2(size))


def tap_blocks(depth: int, taps: int = 4) -> tuple[int, ...]:
  """The blocks after which the encoder is tapped, counted from 1 (k: the output of block k):
  evenly spaced, the last the last block; (3, 6, 9, 12) of 12, UNETR's z3, z6, z9, z12."""
  if depth < taps:
    raise ValueError(f"{taps} taps need at least {taps} blocks, got depth {depth}")
  return tuple(depth * k // taps for k in range(1, taps + 1))


def _conv(features: int, kernel: int, ndim: int, name: str, dtype):
  """A stride-1 'same' convolution without bias: an instance norm follows each, which would
  subtract the bias again."""
  return nn.Conv(features, (kernel,) * ndim, use_bias=False, kernel_init=KERNEL_INIT,
                 dtype=dtype, name=name)


class Up(nn.Module):
  """2x upsampling: MONAI's transposed convolution with kernel = stride = 2 along every axis,
  the parameters (and values) of flax's nn.ConvTranspose(features, (2,) * n, strides=2,
  padding="VALID", use_bias=False).

  Computed as what it is when the kernel does not overlap itself: one matrix product per input
  voxel, whose 2^n outputs are laid side by side. XLA's CPU transposed convolution dilates the
  input with zeros first, which made it about ten times slower than a convolution of its size
  (benchmarks/results/README.md, "Volumes").
  """
  features: int
  dtype: swin.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    n = x.ndim - 2
    kernel = self.param("kernel", KERNEL_INIT, (2,) * n + (x.shape[-1], self.features))
    # flax's transposed convolution correlates the dilated input with the kernel unflipped:
    # output 2i + a takes kernel offset 1 - a.
    kernel = jnp.flip(kernel, tuple(range(n))).astype(self.dtype)
    y = jnp.tensordot(x.astype(self.dtype), kernel, axes=[[n + 1], [n]])  # (B, *grid, 2.., F)
    order = [0] + [a for i in range(n) for a in (1 + i, 1 + n + i)] + [2 * n + 1]
    b, *grid = x.shape[:-1]
    return y.transpose(order).reshape(b, *(2 * g for g in grid), self.features)


def _up(features: int, ndim: int, name: str, dtype):
  del ndim  # the input's
  return Up(features, dtype, name=name)


class ResBlock(nn.Module):
  """MONAI's UnetResBlock: conv3-IN-LeakyReLU-conv3-IN plus the input (through conv1-IN where
  the channel count changes), then LeakyReLU (slope 0.01)."""
  features: int
  dtype: swin.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    n = x.ndim - 2
    norm = lambda name: nn.InstanceNorm(NORM_EPS, dtype=self.dtype, name=name)
    y = nn.leaky_relu(norm("norm1")(_conv(self.features, 3, n, "conv1", self.dtype)(x)))
    y = norm("norm2")(_conv(self.features, 3, n, "conv2", self.dtype)(y))
    if x.shape[-1] != self.features:
      x = norm("norm3")(_conv(self.features, 1, n, "conv3", self.dtype)(x))
    return nn.leaky_relu(y + x)


class TapUp(nn.Module):
  """A tap's grid up `ups` doublings to its skip's resolution (MONAI's UnetrPrUpBlock): a
  transposed convolution, then `ups - 1` times a transposed convolution and a ResBlock."""
  features: int
  ups: int
  dtype: swin.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    n = x.ndim - 2
    x = _up(self.features, n, "transp_conv_init", self.dtype)(x)
    for i in range(self.ups - 1):
      x = _up(self.features, n, f"transp_conv_{i}", self.dtype)(x)
      x = ResBlock(self.features, self.dtype, name=f"res_{i}")(x)
    return x


class UpBlock(nn.Module):
  """A decoder stage (MONAI's UnetrUpBlock): 2x transposed convolution, the skip concatenated
  on channels, ResBlock."""
  features: int
  dtype: swin.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, skip):
    x = _up(self.features, x.ndim - 2, "transp_conv", self.dtype)(x)
    x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
    return ResBlock(self.features, self.dtype, name="res")(x)


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
    skips = [ResBlock(f, self.dtype, name="encoder1")(images)]
    for j, tokens in enumerate(hidden):  # from 1/2^k up k - 1 - j doublings, to 1/2^(j + 1)
      skips.append(TapUp(f * 2 ** (j + 1), k - 1 - j, self.dtype, name=f"encoder{j + 2}")(
          on_grid(tokens)))
    y = on_grid(x)
    for j, skip in enumerate(reversed(skips)):
      y = UpBlock(skip.shape[-1], self.dtype, name=f"decoder{k + 1 - j}")(y, skip)
    logits = nn.Conv(self.num_classes, (1,) * len(spatial), kernel_init=KERNEL_INIT,
                     dtype=self.dtype, name="out")(y)
    return logits.astype(jnp.float32)
