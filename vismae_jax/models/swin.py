"""Swin-Transformer building blocks shared by every Swin model: SwinMAE, Swin-UNet, the
classifier, the other pretraining methods' models and SwinUNETR.

Written from the published model's description so that every parameter maps one to one onto
the published PyTorch tensors (`vismae_jax.convert.torch_names`; the listings are in
tests/reference). Layout is channels-last, (B, H, W, C) in 2D and (B, D, H, W, C) in 3D: one
implementation serves both, windows, shift masks, relative-position bias and patch merging
running along every spatial axis. What differs between the release's 2D Swin and MONAI's
SwinUNETR (2D or 3D) is chosen by fields, never by copies: the LayerNorms (`NormStyle`),
whether windows shrink to feature maps smaller than them (`clamp_window`), the patch
embedding's norm, whether the last stage merges too, and the order of the neighbours that patch
merging concatenates (`MERGE_ORDERS`). Submodule names are chosen so that the PyTorch name is
the Flax path with `_<n>` turned into `.<n>` (`layers_0/blocks_1` <-> `layers.0.blocks.1`).

The models know no mesh: their activations carry logical axis names (`ACTIVATION_AXES`), which
`vismae_jax.parallel` alone maps onto mesh axes while a training step is traced.
"""
import dataclasses
import itertools
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vismae_jax.models import conv_blocks



@dataclasses.dataclass(frozen=True)
class NormStyle:
  """How the LayerNorms compute: epsilon, and whether the variance is E[x^2] - E[x]^2 (flax's
  fast default) or the mean squared deviation (PyTorch's, which MONAI's parity needs)."""
  eps: float
  fast_variance: bool


RELEASE_NORM = NormStyle(1e-6, True)  # the release's 2D Swin, bit for bit as it always ran
MONAI_NORM = NormStyle(1e-5, False)  # MONAI's SwinUNETR: PyTorch's LayerNorm
# Between-region entries of the shifted-window mask: the release uses -100, not -inf.
SHIFT_MASK_VALUE = -100.0

Dtype = Any

# The logical names of a (B, H, W, C) activation's axes; parallel.LOGICAL_RULES maps them.
ACTIVATION_AXES = ("batch", "height", "width", "embed")
# A 3D activation's: depth is left unsharded.
ACTIVATION_AXES_3D = ("batch", None, "height", "width", "embed")


def name_axes(x):
  """`x` (B, *spatial, C) constrained to the layout that the rules in context give these axes.

  Why: with FSDP the parameters are sharded along feature dimensions and XLA's sharding
  propagation would carry that layout into the activations, then undo it around reshapes by
  gathering whole tensors; pinning block outputs to the batch layout prevents it. Outside a
  rules context (evaluation, figures, one device) it does nothing.
  """
  return nn.with_logical_constraint(x, ACTIVATION_AXES if x.ndim == 4 else ACTIVATION_AXES_3D)


def per_axis(size, ndim: int) -> tuple[int, ...]:
  """A window, shift or patch given as one int (the same along every axis) or one per axis."""
  return (size,) * ndim if isinstance(size, int) else tuple(size)


def gelu(x):
  """Exact (erf) GELU written out: faster on XLA's CPU backend than jax.nn.gelu's erf form."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def layer_norm(name, dtype, style: NormStyle = RELEASE_NORM):
  return nn.LayerNorm(epsilon=style.eps, use_fast_variance=style.fast_variance, dtype=dtype,
                      name=name)


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


def relative_position_index(window) -> np.ndarray:
  """(n, n) index into the prod(2w-1) bias table of a window of n = prod(w) tokens: the
  relative offset along each axis, shifted to be non-negative, read as a mixed-radix number
  with the first axis most significant ((dy + w-1) * (2w-1) + (dx + w-1) in 2D). An int window
  is square (2D)."""
  window = per_axis(window, 2)
  coords = np.stack(np.meshgrid(*[np.arange(w) for w in window], indexing="ij"))
  coords = coords.reshape(len(window), -1)
  rel = coords[:, :, None] - coords[:, None, :]
  index = np.zeros(rel.shape[1:], np.int64)
  for offsets, w in zip(rel, window):
    index = index * (2 * w - 1) + offsets + (w - 1)
  return index


def window_partition(x, window):
  """(B, *spatial, C) -> (B * nW, prod(window), C), windows in row-major order; the spatial
  sizes must be multiples of `window` (one size per axis, or an int for all)."""
  b, *spatial, c = x.shape
  window = per_axis(window, len(spatial))
  x = x.reshape(b, *[a for g, w in zip(spatial, window) for a in (g // w, w)], c)
  n = len(spatial)
  x = x.transpose(0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2), 2 * n + 1)
  return x.reshape(-1, math.prod(window), c)


def window_geometry(spatial, window, shift, clamp: bool):
  """The (window, shift) per axis that a block uses on a map of size `spatial`.

  clamp=False (the release's 2D Swin): as configured; maps are padded up to whole windows.
  clamp=True (MONAI's): along an axis no longer than the window, the window is the map and
  nothing shifts.
  """
  window, shift = per_axis(window, len(spatial)), per_axis(shift, len(spatial))
  if not clamp:
    return window, shift
  small = [s <= w for s, w in zip(spatial, window)]
  return (tuple(s if c else w for s, w, c in zip(spatial, window, small)),
          tuple(0 if c else t for t, c in zip(shift, small)))


def shifted_window_mask(spatial, window, shift) -> np.ndarray:
  """(nW, n, n) additive mask separating the regions that a cyclic shift joins, for a padded
  map of size `spatial` (one size per axis). Along each shifted axis the map has three regions
  (before the last window, the last window less the shift, the shift); an axis that does not
  shift is one region."""
  window, shift = per_axis(window, len(spatial)), per_axis(shift, len(spatial))
  labels = []
  for size, w, t in zip(spatial, window, shift):
    axis = np.zeros(size, np.int32)
    if t:
      axis[size - w:size - t], axis[size - t:] = 1, 2
    labels.append(axis)
  regions = np.zeros(spatial, np.int32)
  for axis, label in enumerate(labels):
    shape = [1] * len(spatial)
    shape[axis] = -1
    regions = regions * 3 + label.reshape(shape)
  windows = window_partition(regions[None, ..., None], window)[..., 0]
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
  """Multi-head self-attention inside the windows of a (B, *spatial, C) map, with the Swin
  relative position bias and an optional (nW, n, n) shift mask; the map's sizes are multiples
  of `window` (the one in use, per axis).

  The bias table is sized for `table_window`, the configured window; a window clamped smaller
  than it (MONAI's, on small maps) reads the first n x n entries of the configured window's
  index, as MONAI does, so that the same parameters give the same outputs.

  Windows are folded into the head axis, not the batch: one transpose takes qkv from the map to
  (B, windows x heads, tokens, head_dim) and one takes the output back, where window
  partition, head split, head merge and window reverse were four; and the bias and shift mask,
  which differ per window and head but not per image, broadcast over the batch.
  """
  dim: int
  num_heads: int
  window: Sequence[int]
  table_window: Sequence[int]
  attention: str = "einsum"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask: Optional[np.ndarray] = None):
    b, *spatial, _ = x.shape
    nd, window, heads = len(spatial), tuple(self.window), self.num_heads
    grid = tuple(s // w for s, w in zip(spatial, window))
    n, d, n_windows = math.prod(window), self.dim // heads, math.prod(grid)
    table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                       (math.prod(2 * w - 1 for w in self.table_window), heads))
    index = relative_position_index(tuple(self.table_window))[:n, :n]
    bias = table[index.reshape(-1)].reshape(n, n, heads).transpose(2, 0, 1)
    bias = bias[None] if mask is None else bias[None] + mask[:, None]
    bias = jnp.broadcast_to(bias, (n_windows, heads, n, n)).reshape(n_windows * heads, n, n)

    # Output channels of qkv are ordered (3, heads, head_dim), as in the release and MONAI.
    # Axes of the split map: batch, (grid_i, window_i) per axis, 3, heads, head_dim.
    qkv = dense(3 * self.dim, "qkv", self.dtype)(x)
    qkv = qkv.reshape(b, *[a for g, w in zip(grid, window) for a in (g, w)], 3, heads, d)
    grids, windows = range(1, 2 * nd, 2), range(2, 2 * nd + 1, 2)
    qkv = qkv.transpose(2 * nd + 1, 0, *grids, 2 * nd + 2, *windows, 2 * nd + 3)
    q, k, v = qkv.reshape(3, b, n_windows * heads, n, d)
    out = attend(q, k, v, bias, self.attention, 2 if self.attention == "cudnn" else 1)
    # (batch, grid..., heads, window..., head_dim) back to (batch, (grid_i, window_i)..., heads,
    # head_dim).
    out = out.reshape(b, *grid, heads, *window, d)
    order = [a for i in range(nd) for a in (1 + i, 2 + nd + i)]
    out = out.transpose(0, *order, 1 + nd, 2 * nd + 2)
    return dense(self.dim, "proj", self.dtype)(out.reshape(b, *spatial, self.dim))


class Mlp(nn.Module):
  dim: int
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = gelu(dense(self.hidden, "fc1", self.dtype)(x))
    return dense(self.dim, "fc2", self.dtype)(x)


class SwinBlock(nn.Module):
  """Pre-norm (shifted-)window attention + MLP block on a (B, *spatial, C) map.

  Maps that are not multiples of the window are zero-padded at the end of each axis and
  cropped after (320 px inputs). Without `clamp_window` (the release) the shift stays on even
  when the map is a single window; with it (MONAI) `window_geometry` shrinks the window to a
  smaller map and turns that axis's shift off.
  """
  dim: int
  num_heads: int
  window: Any  # an int, or one size per axis
  shift: Any = 0
  drop_path: float = 0.0
  mlp_ratio: float = 4.0
  clamp_window: bool = False
  norm_style: NormStyle = RELEASE_NORM
  attention: str = "einsum"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    _, *spatial, _ = x.shape
    nd = len(spatial)
    window, shift = window_geometry(spatial, self.window, self.shift, self.clamp_window)
    shortcut = x
    x = layer_norm("norm1", self.dtype, self.norm_style)(x)
    padded = [-(-s // w) * w for s, w in zip(spatial, window)]
    x = jnp.pad(x, [(0, 0)] + [(0, p - s) for p, s in zip(padded, spatial)] + [(0, 0)])
    axes = tuple(range(1, nd + 1))
    mask = None
    if any(shift):
      x = jnp.roll(x, tuple(-t for t in shift), axis=axes)
      mask = shifted_window_mask(padded, window, shift)
    x = WindowAttention(self.dim, self.num_heads, window, per_axis(self.window, nd),
                        self.attention, self.dtype, name="attn")(x, mask)
    if any(shift):
      x = jnp.roll(x, shift, axis=axes)
    x = x[(slice(None),) + tuple(slice(0, s) for s in spatial)]
    # Stochastic depth: the whole residual branch dropped per sample (dropout broadcast over
    # every axis but the batch).
    drop_path = nn.Dropout(self.drop_path, broadcast_dims=tuple(range(1, nd + 2)),
                           name="stochastic_depth")
    x = shortcut + drop_path(x, deterministic)
    y = Mlp(self.dim, int(self.dim * self.mlp_ratio), self.dtype,
            name="mlp")(layer_norm("norm2", self.dtype, self.norm_style)(x))
    return name_axes(x + drop_path(y, deterministic))


def _torch_default_bias_init(fan_in):
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class PatchEmbed(nn.Module):
  """Non-overlapping `patch`-sized convolution (along every spatial axis), then LayerNorm (none
  with `norm=False`, MONAI's SwinUNETR default).

  The convolution keeps PyTorch's default init, as the release does: with a zero bias, blank
  (all-black) patches would reach the LayerNorm as constant vectors and its 1/sqrt(eps) scale
  would blow their gradients up a thousandfold.
  """
  embed_dim: int
  patch: int
  normalize: bool = True
  norm_style: NormStyle = RELEASE_NORM
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    nd = x.ndim - 2
    fan_in = self.patch ** nd * x.shape[-1]
    x = nn.Conv(self.embed_dim, (self.patch,) * nd, strides=self.patch, padding="VALID",
                dtype=self.dtype, name="proj",
                kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                bias_init=_torch_default_bias_init(fan_in))(x)
    if self.normalize:
      x = layer_norm("norm", self.dtype, self.norm_style)(x)
    return name_axes(x)


# The order in which patch merging concatenates the 2^n neighbours of a 2x2(x2) cell: offsets
# per axis (depth, height, width in 3D). In 2D every layout agrees (row offset first: (0,0),
# (1,0), (0,1), (1,1)); in 3D MONAI has two. "merging" is MONAI's default (its legacy
# PatchMerging of v0.9), "mergingv2" its PatchMergingV2 (offsets in row-major order).
MERGE_ORDERS = {
    "merging": ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1),
                (1, 1, 1)),
    "mergingv2": tuple(itertools.product((0, 1), repeat=3)),
}
MERGE_ORDER_2D = ((0, 0), (1, 0), (0, 1), (1, 1))


class PatchMerging(nn.Module):
  """2x downsampling along every axis: the 2^n sub-grids on channels (in `merge_order`, see
  MERGE_ORDERS), LayerNorm, Linear.

  An odd grid (SwinMAE's compacted one, 7x7 units at 224 px; MONAI's odd maps) is zero-padded
  at the end first, as Swin's detection code does.
  """
  dim: int
  merge_order: str = "merging"
  norm_style: NormStyle = RELEASE_NORM
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    _, *spatial, _ = x.shape
    x = jnp.pad(x, [(0, 0)] + [(0, s % 2) for s in spatial] + [(0, 0)])
    offsets = MERGE_ORDER_2D if len(spatial) == 2 else MERGE_ORDERS[self.merge_order]
    x = jnp.concatenate([x[(slice(None),) + tuple(slice(o, None, 2) for o in offset)]
                         for offset in offsets], axis=-1)
    x = layer_norm("norm", self.dtype, self.norm_style)(x)
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
  named `upsample`) in the decoder, or None. `conv_block` (SwinUNETR-v2) puts a residual
  convolution block (`conv_blocks.ResBlock`, named `conv_block`) before the blocks. `remat`
  recomputes each block in the backward pass but what the `jax.checkpoint_policies` policy of
  that name saves (None: no recomputation; "nothing_saveable": the whole block).
  """
  dim: int
  depth: int
  num_heads: int
  window: Any
  drop_paths: Sequence[float]
  resample: Optional[str] = None
  clamp_window: bool = False
  norm_style: NormStyle = RELEASE_NORM
  merge_order: str = "merging"
  conv_block: bool = False
  remat: Optional[str] = None
  attention: str = "einsum"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    if self.conv_block:
      x = conv_blocks.ResBlock(self.dim, self.dtype, name="conv_block")(x)
    block_cls = SwinBlock
    if self.remat is not None:
      block_cls = nn.remat(SwinBlock, static_argnums=(2,),
                           policy=getattr(jax.checkpoint_policies, self.remat))
    half = tuple(w // 2 for w in per_axis(self.window, x.ndim - 2))
    for i in range(self.depth):
      x = block_cls(self.dim, self.num_heads, self.window, shift=0 if i % 2 == 0 else half,
                    drop_path=self.drop_paths[i], clamp_window=self.clamp_window,
                    norm_style=self.norm_style, attention=self.attention, dtype=self.dtype,
                    name=f"blocks_{i}")(x, deterministic)
    if self.resample == "down":
      x = PatchMerging(self.dim, self.merge_order, self.norm_style, self.dtype,
                       name="downsample")(x)
    elif self.resample == "up":
      x = PatchExpand(self.dim // 2, 2, self.dtype, name="upsample")(x)
    return x


def drop_path_rates(depths: Sequence[int], max_rate: float) -> list[list[float]]:
  """linspace(0, max_rate, sum(depths)) split into per-stage lists, as the release assigns them."""
  rates = np.linspace(0.0, max_rate, sum(depths)).tolist()
  splits = np.cumsum([0] + list(depths))
  return [rates[a:b] for a, b in zip(splits[:-1], splits[1:])]


class SwinEncoder(nn.Module):
  """Stages `layers_0..n-1` with PatchMerging after all but the last (after every one with
  `downsample_last`, MONAI's); returns each stage's input.

  Returns (features, skips) where skips[i] is the input of stage i (what the UNets take).
  """
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 2, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window: Any = 7
  drop_path: float = 0.1
  downsample_last: bool = False
  clamp_window: bool = False
  norm_style: NormStyle = RELEASE_NORM
  merge_order: str = "merging"
  conv_blocks: bool = False
  remat: Optional[str] = None
  attention: str = "einsum"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    rates = drop_path_rates(self.depths, self.drop_path)
    skips = []
    for i, depth in enumerate(self.depths):
      skips.append(x)
      down = self.downsample_last or i < len(self.depths) - 1
      x = SwinStage(self.embed_dim * 2 ** i, depth, self.num_heads[i], self.window, rates[i],
                    resample="down" if down else None, clamp_window=self.clamp_window,
                    norm_style=self.norm_style, merge_order=self.merge_order,
                    conv_block=self.conv_blocks, remat=self.remat, attention=self.attention,
                    dtype=self.dtype, name=f"layers_{i}")(x, deterministic)
    return x, skips


# What a fine-tuning model can take of a pretraining model: the patch embedding, the encoder
# stages and the final LayerNorm (the classifier's `norm`).
ENCODER_PARAMS = ("patch_embed", "encoder", "norm")


def encoder_params(params) -> dict:
  """A pretraining model's encoder alone: what the export of a method without a published layout
  writes (SimMIM, SimCLR), since its head and mask token have no place in a fine-tuning model."""
  return {k: params[k] for k in ENCODER_PARAMS}


class SwinBackbone(nn.Module):
  """The encoder hyper-parameters and stem that every Swin model shares: SwinMAE, Swin-UNet,
  the classifier, the other pretraining methods' models and SwinUNETR.

  One definition keeps the models' `patch_embed` / `encoder` names and shapes identical, which
  is what lets a pretraining checkpoint transfer by name. Subclasses add their heads and call
  `encode` from their compact `__call__`. The defaults are the release's 2D Swin; SwinUNETR
  overrides the fields in which MONAI's differs.
  """
  in_chans: int = 3
  patch_size: int = 4
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 2, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window: Any = 7
  drop_path: float = 0.1
  downsample_last: bool = False
  clamp_window: bool = False
  patch_norm: bool = True
  norm_style: NormStyle = RELEASE_NORM
  merge_order: str = "merging"
  conv_blocks: bool = False
  remat: Optional[str] = None
  attention: str = "einsum"
  dtype: Dtype = jnp.float32

  def embed(self, images, token_mask=None):
    """Patch embedding, masked tokens (True in `token_mask`) replaced by a learned
    `mask_token`."""
    x = PatchEmbed(self.embed_dim, self.patch_size, self.patch_norm, self.norm_style, self.dtype,
                   name="patch_embed")(images)
    if token_mask is not None:
      mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, self.embed_dim))
      x = jnp.where(token_mask[..., None], mask_token.astype(x.dtype), x)
    return x

  def encode(self, images, deterministic: bool, token_mask=None):
    """Patch embedding (masked tokens replaced by a learned `mask_token`), then the encoder.

    Returns the encoder's (features, skips).
    """
    x = self.embed(images, token_mask)
    return SwinEncoder(self.embed_dim, self.depths, self.num_heads, self.window, self.drop_path,
                       downsample_last=self.downsample_last, clamp_window=self.clamp_window,
                       norm_style=self.norm_style, merge_order=self.merge_order,
                       conv_blocks=self.conv_blocks, remat=self.remat,
                       attention=self.attention, dtype=self.dtype, name="encoder")(
                           x, deterministic)
