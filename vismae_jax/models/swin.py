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


def attend(q, k, v, bias, implementation: str = "einsum", token_multiple: int = 1):
  """Softmax attention of q, k, v (B, N, n, d) with an additive (N, n, n) bias.

  `implementation` (config.model.attention): "einsum", two batched matmuls and an fp32
  softmax (fastest on CPU); "xla" or "cudnn", jax.nn.dot_product_attention with that
  implementation ("cudnn": the fused flash-attention kernel of a GPU). For the latter the n
  tokens are zero-padded to a multiple of `token_multiple` and the padded keys left out
  through the key lengths: cuDNN's fused kernel needs even lengths when the bias is trained,
  and windows hold 49.
  """
  if implementation == "einsum":
    logits = jnp.einsum("bhqd,bhkd->bhqk", q * q.shape[-1] ** -0.5, k).astype(jnp.float32)
    attn = jax.nn.softmax(logits + bias, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bhkd->bhqd", attn, v)
  b, _, n, _ = q.shape
  pad = -n % token_multiple
  q, k, v = (jnp.pad(t, ((0, 0), (0, 0), (0, pad), (0, 0))).transpose(0, 2, 1, 3)
             for t in (q, k, v))
  bias = jnp.pad(bias, ((0, 0), (0, pad), (0, pad)))[None].astype(q.dtype)
  lengths = jnp.full((b,), n, jnp.int32) if pad else None
  out = jax.nn.dot_product_attention(q, k, v, bias, key_value_seq_lengths=lengths,
                                     implementation=implementation)
  return out.transpose(0, 2, 1, 3)[:, :, :n]


class WindowAttention(nn.Module):
  """Multi-head self-attention inside the windows of a (B, H, W, C) map, with the Swin relative
  position bias and an optional (nW, n, n) shift mask; H and W are multiples of `window`.

  Windows are folded into the head axis, not the batch: one transpose takes qkv from the map to
  (B, windows x heads, tokens, head_dim) and one takes the output back, where window
  partition, head split, head merge and window reverse were four; and the bias and shift mask,
  which differ per window and head but not per image, broadcast over the batch.
  """
  dim: int
  num_heads: int
  window: int
  attention: str = "einsum"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask: Optional[np.ndarray] = None):
    b, h, w, _ = x.shape
    s, heads = self.window, self.num_heads
    n, d, n_windows = s * s, self.dim // heads, (h // s) * (w // s)
    table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                       ((2 * s - 1) ** 2, heads))
    bias = table[relative_position_index(s).reshape(-1)].reshape(n, n, heads).transpose(2, 0, 1)
    bias = bias[None] if mask is None else bias[None] + mask[:, None]
    bias = jnp.broadcast_to(bias, (n_windows, heads, n, n)).reshape(n_windows * heads, n, n)

    # Output channels of qkv are ordered (3, heads, head_dim), as in the release.
    qkv = dense(3 * self.dim, "qkv", self.dtype)(x)
    qkv = qkv.reshape(b, h // s, s, w // s, s, 3, heads, d).transpose(5, 0, 1, 3, 6, 2, 4, 7)
    q, k, v = qkv.reshape(3, b, n_windows * heads, n, d)
    out = attend(q, k, v, bias, self.attention, 2 if self.attention == "cudnn" else 1)
    out = out.reshape(b, h // s, w // s, heads, s, s, d).transpose(0, 1, 4, 2, 5, 3, 6)
    return dense(self.dim, "proj", self.dtype)(out.reshape(b, h, w, self.dim))


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
  attention: str = "einsum"
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
    x = WindowAttention(self.dim, self.num_heads, self.window, self.attention, self.dtype,
                        name="attn")(x, mask)
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
  named `upsample`) in the decoder, or None. `remat` recomputes each block in the backward pass
  but what the `jax.checkpoint_policies` policy of that name saves (None: no recomputation;
  "nothing_saveable": the whole block).
  """
  dim: int
  depth: int
  num_heads: int
  window: int
  drop_paths: Sequence[float]
  resample: Optional[str] = None
  remat: Optional[str] = None
  attention: str = "einsum"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    block_cls = SwinBlock
    if self.remat is not None:
      block_cls = nn.remat(SwinBlock, static_argnums=(2,),
                           policy=getattr(jax.checkpoint_policies, self.remat))
    for i in range(self.depth):
      x = block_cls(self.dim, self.num_heads, self.window,
                    shift=0 if i % 2 == 0 else self.window // 2, drop_path=self.drop_paths[i],
                    attention=self.attention, dtype=self.dtype, name=f"blocks_{i}")(
                        x, deterministic)
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
  remat: Optional[str] = None
  attention: str = "einsum"
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
                    attention=self.attention, dtype=self.dtype, name=f"layers_{i}")(
                        x, deterministic)
    return x, skips


# What a fine-tuning model can take of a pretraining model: the patch embedding, the encoder
# stages and the final LayerNorm (the classifier's `norm`).
ENCODER_PARAMS = ("patch_embed", "encoder", "norm")


def encoder_params(params) -> dict:
  """A pretraining model's encoder alone: what the export of a method without a published layout
  writes (SimMIM, SimCLR), since its head and mask token have no place in a fine-tuning model."""
  return {k: params[k] for k in ENCODER_PARAMS}


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
  remat: Optional[str] = None
  attention: str = "einsum"
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
                       remat=self.remat, attention=self.attention, dtype=self.dtype,
                       name="encoder")(
                           x, deterministic)
