"""The convolutional blocks of MONAI's UNETR and SwinUNETR decoders, in 2D and 3D.

Written from MONAI's description (UnetResBlock, UnetrUpBlock, the transposed convolution of
kernel = stride = 2) under names that map one to one onto MONAI's state dicts
(convert/monai.py): kernels have as many axes as the image, instance norms have no affine
parameters (MONAI's "instance" norm), convolutions no bias (an instance norm follows each).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
NORM_EPS = 1e-5  # PyTorch's InstanceNorm default
# PyTorch's default convolution init, which MONAI keeps: uniform with variance 1 / (3 fan-in).
KERNEL_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _depth_stacked(x, k: int):
  """(B, D, H, W, C) -> (B, D, H, W, k * C): each depth slice beside its k - 1 neighbours
  (zero beyond the volume), the neighbour's offset major."""
  d, r = x.shape[1], k // 2
  padded = jnp.pad(x, ((0, 0), (r, r), (0, 0), (0, 0), (0, 0)))
  return jnp.concatenate([padded[:, i:i + d] for i in range(k)], axis=-1)


def _conv3d_by_slices(x, kernel):
  """A 'same' 3D convolution as one 2D convolution over the depth slices of the depth-stacked
  input, the kernel's depth offsets on its input channels."""
  b, d, h, w, c = x.shape
  k, f = kernel.shape[0], kernel.shape[-1]
  planar = kernel.transpose(1, 2, 0, 3, 4).reshape(k, k, k * c, f)
  y = jax.lax.conv_general_dilated(_depth_stacked(x, k).reshape(b * d, h, w, k * c), planar,
                                   (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y.reshape(b, d, h, w, f)


@jax.custom_vjp
def conv3d(x, kernel):
  """`_conv3d_by_slices`, whose kernel gradient is one matrix product (`_kernel_gradient`):
  XLA's CPU backend computes a convolution's kernel gradient several times slower than the
  convolution itself, and matrix products over twice as fast as convolutions
  (benchmarks/results/README.md, "3D training step against MONAI")."""
  return _conv3d_by_slices(x, kernel)


def _conv3d_forward(x, kernel):
  return _conv3d_by_slices(x, kernel), (x, kernel)


def _kernel_gradient(x, dy, k: int):
  """d loss / d kernel of `_conv3d_by_slices` from the output gradient dy (B, D, H, W, F):
  kernel[i, j] meets the depth-stacked input shifted by (i - r, j - r) in the plane, so its
  gradient is that input against dy shifted back, for all k * k offsets in one product."""
  b, d, h, w, c = x.shape
  f, r = dy.shape[-1], k // 2
  padded = jnp.pad(dy, ((0, 0), (0, 0), (r, r), (r, r), (0, 0)))
  shifted = jnp.concatenate([padded[:, :, 2 * r - i:2 * r - i + h, 2 * r - j:2 * r - j + w]
                             for i in range(k) for j in range(k)], axis=-1)
  grad = _depth_stacked(x, k).reshape(-1, k * c).T @ shifted.reshape(-1, k * k * f)
  return grad.reshape(k, c, k, k, f).transpose(0, 2, 3, 1, 4)


def _conv3d_backward(residuals, dy):
  x, kernel = residuals
  (dx,) = jax.linear_transpose(lambda x: _conv3d_by_slices(x, kernel), x)(dy)
  return dx, _kernel_gradient(x, dy, kernel.shape[0]).astype(kernel.dtype)


conv3d.defvjp(_conv3d_forward, _conv3d_backward)


class Conv(nn.Module):
  """A stride-1 'same' convolution with an odd kernel along every axis: the parameters (and
  values) of flax's nn.Conv(features, (kernel,) * n, use_bias=use_bias).

  Computed the way XLA's CPU backend is fast at. Its 3D convolutions run a generic loop (about
  10 GFLOP/s on 2 cores, against 35 for its 2D ones: benchmarks/volume_step.py), so a 3D one is
  computed as one 2D convolution over every depth slice, with the kernel's depth offsets moved
  onto the input channels (the slices above and below stacked beside each one), and its kernel
  gradient as one matrix product (`conv3d`); a 1x1(x1) kernel is one matrix product.
  """
  features: int
  kernel_size: int = 3
  use_bias: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    n, c, k = x.ndim - 2, x.shape[-1], self.kernel_size
    kernel = self.param("kernel", KERNEL_INIT, (k,) * n + (c, self.features)).astype(self.dtype)
    x = x.astype(self.dtype)
    if k == 1:
      y = (x.reshape(-1, c) @ kernel.reshape(c, self.features)).reshape(
          x.shape[:-1] + (self.features,))
    elif n == 2:
      y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    else:
      y = conv3d(x, kernel)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
    return y


def instance_norm(name: str, dtype):
  return nn.InstanceNorm(NORM_EPS, use_scale=False, use_bias=False, use_fast_variance=False,
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
  dtype: Dtype = jnp.float32

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


class ResBlock(nn.Module):
  """MONAI's UnetResBlock: conv3-IN-LeakyReLU-conv3-IN plus the input (through conv1-IN where
  the channel count changes), then LeakyReLU (slope 0.01)."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = nn.leaky_relu(instance_norm("norm1", self.dtype)(
        Conv(self.features, 3, dtype=self.dtype, name="conv1")(x)))
    y = instance_norm("norm2", self.dtype)(Conv(self.features, 3, dtype=self.dtype,
                                                name="conv2")(y))
    if x.shape[-1] != self.features:
      x = instance_norm("norm3", self.dtype)(Conv(self.features, 1, dtype=self.dtype,
                                                  name="conv3")(x))
    return nn.leaky_relu(y + x)


class UpBlock(nn.Module):
  """A decoder stage (MONAI's UnetrUpBlock): 2x transposed convolution, the skip concatenated
  on channels, ResBlock."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, skip):
    x = Up(self.features, self.dtype, name="transp_conv")(x)
    x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
    return ResBlock(self.features, self.dtype, name="res")(x)


def out_conv(num_classes: int, dtype):
  """The 1x1(x1) output convolution with bias (MONAI's UnetOutBlock), named `out`."""
  return Conv(num_classes, 1, use_bias=True, dtype=dtype, name="out")
