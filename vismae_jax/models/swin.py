"""Swin-Transformer building blocks shared by SwinMAE, Swin-UNet and the classifier.

Written from the published model's description so that every parameter maps one to one onto
the published PyTorch tensors (`vismae_jax.convert.torch_names`; the listings are in
tests/reference). Layout is channels-last (B, H, W, C) throughout. Submodule names are chosen
so that the PyTorch name is the Flax path with `_<n>` turned into `.<n>` (`layers_0/blocks_1`
<-> `layers.0.blocks.1`).

The models know no mesh: their activations carry logical axis names (`ACTIVATION_AXES`), which
`vismae_jax.parallel` alone maps onto mesh axes while a training step is traced.
"""
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LN_EPS = 1e-6
# Between-region entries of the shifted-window mask: the release uses -100, not -inf.
SHIFT_MASK_VALUE = -100.0

Dtype = Any

# The logical names of a (B, H, W, C) activation's axes; parallel.LOGICAL_RULES maps them.
ACTIVATION_AXES = ("batch", "height", "width", "embed")


def name_axes(x):
  """`x` (B, H, W, C) constrained to the layout that the rules in context give these axes.

  Why: with FSDP the parameters are sharded along feature dimensions and XLA's sharding
  propagation would carry that layout into the activations, then undo it around reshapes by
  gathering whole tensors; pinning block outputs to the batch layout prevents it. Outside a
  rules context (evaluation, figures, one device) it does nothing.
  """
  return nn.with_logical_constraint(x, ACTIVATION_AXES)


def gelu(x):
  """Exact (erf) GELU written out: faster on XLA's CPU backend than jax.nn.gelu's erf form."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def layer_norm(name, dtype):
  return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, name=name)


class Dense(nn.Module):
  """nn.Dense applied to the input flattened to 2-D (same `kernel` and `bias` parameters).

  Why: XLA's CPU backend computes the kernel gradient of a matmul whose input has several
  leading axes (windows x tokens, or B x H x W) as a slow multi-axis contraction; on a 2-D
  input it is one GEMM (measured with benchmarks/train_throughput.py).
  """
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.xavier_uniform()

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
    y = x.reshape(-1, x.shape[-1]).astype(self.dtype) @ kernel.astype(self.dtype)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
    return y.reshape(x.shape[:-1] + (self.features,))


def dense(features, name, dtype, use_bias=True):
  return Dense(features, use_bias=use_bias, dtype=dtype, name=name)


def relative_position_index(window: int) -> np.ndarray:
  """(window^2, window^2) index into the (2w-1)^2 bias table: (dy + w-1) * (2w-1) + (dx + w-1)."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
  coords = coords.reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
  return (rel[0] * (2 * window - 1) + rel[1]).astype(np.int64)


def window_partition(x, window: int):
  """(B, H, W, C) -> (B * nW, window^2, C); H and W must be multiples of `window`."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows, window: int, h: int, w: int):
  """Inverse of `window_partition`."""
  c = windows.shape[-1]
  x = windows.reshape(-1, h // window, w // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> np.ndarray:
  """(nW, window^2, window^2) additive mask separating the regions that a cyclic shift joins."""
  regions = np.zeros((h, w), np.int32)
  cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
  label = 0
  for rows in cuts:
    for cols in cuts:
      regions[rows, cols] = label
      label += 1
  windows = window_partition(regions[None, :, :, None], window)[..., 0]
  different = windows[:, :, None] != windows[:, None, :]
  return np.where(different, SHIFT_MASK_VALUE, 0.0).astype(np.float32)


class WindowAttention(nn.Module):
  """Multi-head self-attention inside windows, with the Swin relative position bias."""
  dim: int
  num_heads: int
  window: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask: Optional[np.ndarray] = None):
    n_windows, n, _ = x.shape
    head_dim = self.dim // self.num_heads
    table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                       ((2 * self.window - 1) ** 2, self.num_heads))
    bias = table[relative_position_index(self.window).reshape(-1)]
    bias = bias.reshape(n, n, self.num_heads).transpose(2, 0, 1)

    # Output channels of qkv are ordered (3, heads, head_dim), as in the release. Heads-major
    # (3, B, heads, n, d) makes both attention einsums plain batched matmuls; plain einsums
    # beat jax.nn.dot_product_attention for 49-token windows.
    qkv = dense(3 * self.dim, "qkv", self.dtype)(x)
    qkv = qkv.reshape(n_windows, n, 3, self.num_heads, head_dim).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = jnp.einsum("bhqd,bhkd->bhqk", q * head_dim ** -0.5, k).astype(jnp.float32)
    logits = logits + bias
    if mask is not None:  # (nW, n, n), broadcast over batch and heads
      logits = logits.reshape(-1, mask.shape[0], self.num_heads, n, n) + mask[None, :, None]
      logits = logits.reshape(n_windows, self.num_heads, n, n)
    attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bhkd->bhqd", attn, v).transpose(0, 2, 1, 3).reshape(n_windows, n,
                                                                             self.dim)
    return dense(self.dim, "proj", self.dtype)(out)


class Mlp(nn.Module):
  dim: int
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = gelu(dense(self.hidden, "fc1", self.dtype)(x))
    return dense(self.dim, "fc2", self.dtype)(x)


class SwinBlock(nn.Module):
  """Pre-norm (shifted-)window attention + MLP block.

  Feature maps that are not multiples of the window are zero-padded at bottom/right and
  cropped after (320 px inputs); the shift stays on even when the map is a single window, as in
  the release.
  """
  dim: int
  num_heads: int
  window: int
  shift: int
  drop_path: float = 0.0
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    _, h, w, _ = x.shape
    shortcut = x
    x = layer_norm("norm1", self.dtype)(x)
    hp, wp = -(-h // self.window) * self.window, -(-w // self.window) * self.window
    x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
    mask = None
    if self.shift:
      x = jnp.roll(x, (-self.shift, -self.shift), axis=(1, 2))
      mask = shifted_window_mask(hp, wp, self.window, self.shift)
    windows = window_partition(x, self.window)
    windows = WindowAttention(self.dim, self.num_heads, self.window, self.dtype,
                              name="attn")(windows, mask)
    x = window_reverse(windows, self.window, hp, wp)
    if self.shift:
      x = jnp.roll(x, (self.shift, self.shift), axis=(1, 2))
    x = x[:, :h, :w]
    # Stochastic depth: the whole residual branch dropped per sample (dropout broadcast over
    # every axis but the batch).
    drop_path = nn.Dropout(self.drop_path, broadcast_dims=(1, 2, 3), name="stochastic_depth")
    x = shortcut + drop_path(x, deterministic)
    y = Mlp(self.dim, int(self.dim * self.mlp_ratio), self.dtype,
            name="mlp")(layer_norm("norm2", self.dtype)(x))
    return name_axes(x + drop_path(y, deterministic))


def _torch_default_bias_init(fan_in):
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class PatchEmbed(nn.Module):
  """Non-overlapping `patch` x `patch` convolution, then LayerNorm.

  The convolution keeps PyTorch's default init, as the release does: with a zero bias, blank
  (all-black) patches would reach the LayerNorm as constant vectors and its 1/sqrt(eps) scale
  would blow their gradients up a thousandfold.
  """
  embed_dim: int
  patch: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    fan_in = self.patch * self.patch * x.shape[-1]
    x = nn.Conv(self.embed_dim, (self.patch, self.patch), strides=self.patch, padding="VALID",
                dtype=self.dtype, name="proj",
                kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                bias_init=_torch_default_bias_init(fan_in))(x)
    return name_axes(layer_norm("norm", self.dtype)(x))


class PatchMerging(nn.Module):
  """2x downsampling: the four sub-grids (row offset first) on channels, LayerNorm, Linear.

  An odd grid (only SwinMAE's compacted one: 7x7 units at 224 px) is zero-padded at the bottom
  and right first, as Swin's detection code does.
  """
  dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    _, h, w, _ = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                        axis=-1)
    x = layer_norm("norm", self.dtype)(x)
    x = dense(2 * self.dim, "reduction", self.dtype, use_bias=False)(x)
    return name_axes(x)


class PatchExpand(nn.Module):
  """`scale`x upsampling: Linear to scale^2 * out_dim, then (p1, p2, c) unfolded onto the grid."""
  out_dim: int
  scale: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, _ = x.shape
    s = self.scale
    x = dense(s * s * self.out_dim, "expand", self.dtype, use_bias=False)(x)
    x = x.reshape(b, h, w, s, s, self.out_dim).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, h * s, w * s, self.out_dim)
    return name_axes(layer_norm("norm", self.dtype)(x))


class SwinStage(nn.Module):
  """`depth` blocks alternating plain and shifted windows, then an optional resampling.

  `resample` is "down" (PatchMerging, named `downsample`) in the encoder, "up" (PatchExpand,
  named `upsample`) in the decoder, or None.
  """
  dim: int
  depth: int
  num_heads: int
  window: int
  drop_paths: Sequence[float]
  resample: Optional[str] = None
  remat: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    block_cls = nn.remat(SwinBlock, static_argnums=(2,)) if self.remat else SwinBlock
    for i in range(self.depth):
      x = block_cls(self.dim, self.num_heads, self.window,
                    shift=0 if i % 2 == 0 else self.window // 2, drop_path=self.drop_paths[i],
                    dtype=self.dtype, name=f"blocks_{i}")(x, deterministic)
    if self.resample == "down":
      x = PatchMerging(self.dim, self.dtype, name="downsample")(x)
    elif self.resample == "up":
      x = PatchExpand(self.dim // 2, 2, self.dtype, name="upsample")(x)
    return x


def drop_path_rates(depths: Sequence[int], max_rate: float) -> list[list[float]]:
  """linspace(0, max_rate, sum(depths)) split into per-stage lists, as the release assigns them."""
  rates = np.linspace(0.0, max_rate, sum(depths)).tolist()
  splits = np.cumsum([0] + list(depths))
  return [rates[a:b] for a, b in zip(splits[:-1], splits[1:])]


class SwinEncoder(nn.Module):
  """Stages `layers_0..n-1` with PatchMerging after all but the last; returns each stage's input.

  Returns (features, skips) where skips[i] is the input of stage i (what the UNet concatenates).
  """
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 2, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window: int = 7
  drop_path: float = 0.1
  remat: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    rates = drop_path_rates(self.depths, self.drop_path)
    skips = []
    for i, depth in enumerate(self.depths):
      skips.append(x)
      last = i == len(self.depths) - 1
      x = SwinStage(self.embed_dim * 2 ** i, depth, self.num_heads[i], self.window, rates[i],
                    resample=None if last else "down", remat=self.remat,
                    dtype=self.dtype, name=f"layers_{i}")(x, deterministic)
    return x, skips


class SwinBackbone(nn.Module):
  """The encoder hyper-parameters and stem that SwinMAE, Swin-UNet and the classifier share.

  One definition keeps the three models' `patch_embed` / `encoder` names and shapes identical,
  which is what lets a pretraining checkpoint transfer by name. Subclasses add their heads and
  call `encode` from their compact `__call__`.
  """
  in_chans: int = 3
  patch_size: int = 4
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 2, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window: int = 7
  drop_path: float = 0.1
  remat: bool = False
  dtype: Dtype = jnp.float32

  def encode(self, images, deterministic: bool, token_mask=None):
    """Patch embedding (masked tokens replaced by a learned `mask_token`), then the encoder.

    Returns the encoder's (features, skips).
    """
    x = PatchEmbed(self.embed_dim, self.patch_size, self.dtype, name="patch_embed")(images)
    if token_mask is not None:
      mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, self.embed_dim))
      x = jnp.where(token_mask[..., None], mask_token.astype(x.dtype), x)
    return SwinEncoder(self.embed_dim, self.depths, self.num_heads, self.window, self.drop_path,
                       remat=self.remat, dtype=self.dtype, name="encoder")(
                           x, deterministic)
