"""Plain Vision Transformer in 2D and 3D: SelfMedMAE's masked autoencoder and its classifier.

SelfMedMAE (Zhou et al.) pre-trains a ViT as a masked autoencoder (He et al.'s MAE) on medical
images, 2D or 3D, then fine-tunes its encoder as UNETR (models/unetr.py) or as a classifier.
One N-D implementation serves both: images are channels-last (B, *spatial, C) with two or three
spatial axes, the patch an int or one size per axis, and tokens are the patch grid flattened in
row-major order (B, tokens, dim).

Parameter names: the whole encoder is one subtree `encoder` in every model (`encoder/patch_embed/
proj`, `encoder/cls_token` when `cls_token`, `encoder/blocks_<i>/{norm1,attn/{qkv,proj},norm2,
mlp/{fc1,fc2}}`, `encoder/norm`), so a pretraining checkpoint transfers by name and shape
(convert/transfer.py `transfer_by_name`); the MAE's `decoder` and the fine-tuning heads are the
rest. Position embeddings are fixed sine-cosine tables, computed, not parameters.
"""
import dataclasses
import math
from typing import Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vismae_jax.models import swin

Patch = Union[int, Sequence[int]]

# The logical names of a (B, tokens, C) activation's axes (swin.ACTIVATION_AXES' counterpart).
TOKEN_AXES = ("batch", None, "embed")

# What a fine-tuning model can take of a pretraining model.
ENCODER_PARAMS = ("encoder",)


def name_tokens(x):
  """`x` (B, tokens, C) pinned to the batch layout, for the reason swin.name_axes gives."""
  return nn.with_logical_constraint(x, TOKEN_AXES)


def token_grid(spatial: Sequence[int], patch: Patch) -> tuple[int, ...]:
  """The patch grid of an image of shape `spatial`, which must be a multiple of the patch."""
  patch = swin.per_axis(patch, len(spatial))
  if any(s % p for s, p in zip(spatial, patch)):
    raise ValueError(f"image size {tuple(spatial)} is not a multiple of the patch {patch}")
  return tuple(s // p for s, p in zip(spatial, patch))


def sincos_position_embedding(grid: Sequence[int], dim: int) -> np.ndarray:
  """Fixed sine-cosine position embeddings (1, prod(grid), dim) of a 2D or 3D token grid.

  The channels are split into one even part per axis, the last axis first: in 2D the first half
  encodes the column and the second the row, MAE's table exactly. In 3D the parts are as equal
  as even sizes allow, the larger first (dim 32: 12 for the last axis, 10 and 10). A part of d
  channels holds sin(pos * omega) then cos(pos * omega), omega_i = 1 / 10000^(2i / d), i < d/2.
  """
  n = len(grid)
  if dim % 2 or dim < 2 * n:
    raise ValueError(f"sin-cos position embeddings of a {n}D grid need an even dim >= {2 * n}, "
                     f"got {dim}")
  pairs = dim // 2
  sizes = [2 * (pairs // n + (i < pairs % n)) for i in range(n)]
  coords = np.meshgrid(*[np.arange(g, dtype=np.float64) for g in grid], indexing="ij")
  parts = []
  for axis, d in zip(reversed(range(n)), sizes):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2))
    angles = coords[axis].reshape(-1, 1) * omega[None]
    parts += [np.sin(angles), np.cos(angles)]
  return np.concatenate(parts, axis=1)[None].astype(np.float32)


def patchify(images, patch: Patch):
  """(B, *spatial, C) -> (B, tokens, prod(patch) * C), each patch flattened as (offset along each
  axis in order, channel): in 2D (row, col, channel), mae.patchify's order."""
  b, *spatial, c = images.shape
  n, patch = len(spatial), swin.per_axis(patch, len(spatial))
  grid = token_grid(spatial, patch)
  x = images.reshape(b, *[v for g, p in zip(grid, patch) for v in (g, p)], c)
  x = x.transpose(0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2), 2 * n + 1)
  return x.reshape(b, math.prod(grid), math.prod(patch) * c)


def unpatchify(patches, grid: Sequence[int], patch: Patch):
  """Inverse of `patchify`, given the grid: (B, tokens, prod(patch) * C) -> (B, *spatial, C)."""
  n, patch = len(grid), swin.per_axis(patch, len(grid))
  b, c = patches.shape[0], patches.shape[-1] // math.prod(patch)
  x = patches.reshape(b, *grid, *patch, c)
  x = x.transpose(0, *[a for i in range(n) for a in (1 + i, 1 + n + i)], 2 * n + 1)
  return x.reshape(b, *[g * p for g, p in zip(grid, patch)], c)


def masked_patch_error(pred, target, mask, norm_pix_loss: bool, error=jnp.square):
  """The masked-image losses' core: error(pred - target) averaged over each patch's values,
  then over the masked patches only (the visible ones are copied, not predicted).

  pred and target (..., values per patch), mask (...) True where masked. With `norm_pix_loss`
  each target patch is standardised by its own mean and unbiased variance (eps 1e-6), which MAE
  found to give better representations than raw pixels.
  """
  target = target.astype(jnp.float32)
  if norm_pix_loss:
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, keepdims=True, ddof=1)
    target = (target - mean) / jnp.sqrt(var + 1e-6)
  per_patch = jnp.mean(error(pred.astype(jnp.float32) - target), axis=-1)
  mask = mask.astype(jnp.float32)
  return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_patch_loss(pred, images, mask, patch: Patch, norm_pix_loss: bool = True):
  """MAE's loss: pred (B, tokens, prod(patch) * C) against the patches of `images`, mask
  (B, tokens) True where masked; the squared error of `masked_patch_error`."""
  return masked_patch_error(pred, patchify(images, patch), mask, norm_pix_loss)


def random_masking(rng, batch: int, tokens: int, mask_ratio: float):
  """MAE's per-sample random masking: -> (keep_ids (B, n_keep), mask (B, tokens) bool, True =
  masked, restore_ids (B, tokens)).

  Each sample's tokens are shuffled by the argsort of uniform noise and the first n_keep =
  int(tokens * (1 - mask_ratio)) (at least one) kept; restore_ids is the inverse permutation,
  which puts the kept tokens followed by the mask tokens back in grid order.
  """
  n_keep = max(1, int(tokens * (1 - mask_ratio)))
  shuffle = jnp.argsort(jax.random.uniform(rng, (batch, tokens)), axis=1)
  restore = jnp.argsort(shuffle, axis=1)
  return shuffle[:, :n_keep], restore >= n_keep, restore


def take_tokens(x, ids):
  """x (B, tokens, C) at the token indices ids (B, n) -> (B, n, C)."""
  return jnp.take_along_axis(x, ids[..., None], axis=1)


class PatchEmbed(nn.Module):
  """Non-overlapping patches through a convolution with kernel = stride = patch, flattened to
  tokens: (B, *spatial, C) -> ((B, tokens, dim), grid).

  The kernel starts as MAE's: Xavier-uniform over the flattened (patch pixels, dim) matrix, the
  initialisation of the linear map it is, not of a convolution.
  """
  dim: int
  patch: Patch
  dtype: swin.Dtype = jnp.float32

  @nn.compact
  def __call__(self, images):
    n = images.ndim - 2
    patch = swin.per_axis(self.patch, n)
    grid = token_grid(images.shape[1:-1], patch)
    init = nn.initializers.xavier_uniform(in_axis=tuple(range(n + 1)), out_axis=-1)
    x = nn.Conv(self.dim, patch, strides=patch, padding="VALID", kernel_init=init,
                dtype=self.dtype, name="proj")(images)
    return name_tokens(x.reshape(x.shape[0], -1, self.dim)), grid


class Attention(nn.Module):
  """Multi-head self-attention over all tokens, qkv with bias (output channels ordered (3,
  heads, head_dim), as in timm's ViT), through swin.attend with a zero bias."""
  dim: int
  num_heads: int
  attention: str = "einsum"
  dtype: swin.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, n, _ = x.shape
    heads = self.num_heads
    qkv = swin.dense(3 * self.dim, "qkv", self.dtype)(x)
    q, k, v = qkv.reshape(b, n, 3, heads, self.dim // heads).transpose(2, 0, 3, 1, 4)
    out = swin.attend(q, k, v, np.zeros((1, n, n), np.float32), self.attention)
    return swin.dense(self.dim, "proj", self.dtype)(out.transpose(0, 2, 1, 3).reshape(x.shape))


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) (GELU, hidden
  mlp_ratio * dim), each residual branch dropped per sample at rate `drop_path`."""
  dim: int
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  attention: str = "einsum"
  dtype: swin.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    drop_path = nn.Dropout(self.drop_path, broadcast_dims=(1, 2), name="stochastic_depth")
    y = Attention(self.dim, self.num_heads, self.attention, self.dtype,
                  name="attn")(swin.layer_norm("norm1", self.dtype)(x))
    x = x + drop_path(y, deterministic)
    y = swin.Mlp(self.dim, int(self.dim * self.mlp_ratio), self.dtype,
                 name="mlp")(swin.layer_norm("norm2", self.dtype)(x))
    return name_tokens(x + drop_path(y, deterministic))


class ViTBackbone(nn.Module):
  """The encoder hyper-parameters that the ViT MAE, UNETR and the classifier share.

  One definition keeps the models' `encoder` subtrees identical, which is what lets a
  checkpoint transfer by name. `cls_token` prepends a learned class token (MAE's; UNETR's ViT
  has none), which takes no position embedding. Subclasses call `encode` from their compact
  `__call__`.
  """
  patch_size: Patch = 16
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  cls_token: bool = False
  drop_path: float = 0.0
  attention: str = "einsum"
  dtype: swin.Dtype = jnp.float32

  def encode(self, images, deterministic: bool, keep_ids=None, taps: Sequence[int] = ()):
    """The encoder (`ViTEncoder`, named `encoder`) on these hyper-parameters."""
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(ViTBackbone)
              if f.name not in ("parent", "name")}
    return ViTEncoder(**fields, name="encoder")(images, deterministic, keep_ids, taps)


class ViTEncoder(ViTBackbone):
  """Patch embedding + fixed sin-cos position embedding, optional class token, `depth` blocks
  (drop-path rates rising linearly to `drop_path`), final LayerNorm.

  A ViTBackbone for its hyper-parameters only: `encode` builds this module from a model's."""

  @nn.compact
  def __call__(self, images, deterministic: bool = True, keep_ids=None,
               taps: Sequence[int] = ()):
    """images (B, *spatial, C) -> (tokens (B, [1 +] n, embed_dim) after the final LayerNorm,
    class token first; [the hidden state after k blocks, not normalised, for k in taps]).

    keep_ids (B, n_keep): run on those tokens alone (the MAE's visible ones), the others
    dropped after the position embedding, so n = n_keep; None: n = every token.
    """
    x, grid = PatchEmbed(self.embed_dim, self.patch_size, self.dtype, name="patch_embed")(images)
    x = x + sincos_position_embedding(grid, self.embed_dim).astype(x.dtype)
    if keep_ids is not None:
      x = take_tokens(x, keep_ids)
    if self.cls_token:
      cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, self.embed_dim))
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, x.shape[2])),
                           x], axis=1)
    hidden = []
    for i, rate in enumerate(swin.drop_path_rates([self.depth], self.drop_path)[0]):
      x = Block(self.embed_dim, self.num_heads, self.mlp_ratio, rate, self.attention,
                self.dtype, name=f"blocks_{i}")(x, deterministic)
      if i + 1 in taps:
        hidden.append(x)
    return swin.layer_norm("norm", self.dtype)(x), hidden


class MAEDecoder(nn.Module):
  """MAE's narrow decoder: the latent embedded to `dim`, a learned mask token in place of each
  dropped token, the tokens put back in grid order, fixed sin-cos position embedding, `depth`
  blocks, LayerNorm, and a linear prediction of every patch's `patch_pixels` values."""
  dim: int
  depth: int
  num_heads: int
  patch_pixels: int
  mlp_ratio: float = 4.0
  attention: str = "einsum"
  dtype: swin.Dtype = jnp.float32

  @nn.compact
  def __call__(self, latent, restore_ids, grid: Sequence[int], cls_token: bool):
    """latent (B, [1 +] n_keep, embed_dim), restore_ids (B, tokens) from `random_masking` ->
    (B, tokens, patch_pixels) float32 (a class token passes through the blocks, then is
    dropped)."""
    x = swin.dense(self.dim, "embed", self.dtype)(latent)
    cls, x = x[:, :int(cls_token)], x[:, int(cls_token):]
    b, n_keep, _ = x.shape
    mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, self.dim))
    masked = jnp.broadcast_to(mask_token.astype(x.dtype), (b, restore_ids.shape[1] - n_keep,
                                                           self.dim))
    x = take_tokens(jnp.concatenate([x, masked], axis=1), restore_ids)
    x = x + sincos_position_embedding(grid, self.dim).astype(x.dtype)
    x = jnp.concatenate([cls, x], axis=1)
    for i in range(self.depth):
      x = Block(self.dim, self.num_heads, self.mlp_ratio, 0.0, self.attention, self.dtype,
                name=f"blocks_{i}")(x)
    x = swin.layer_norm("norm", self.dtype)(x[:, int(cls_token):])
    return swin.dense(self.patch_pixels, "pred", self.dtype)(x).astype(jnp.float32)


class ViTMAE(ViTBackbone):
  """The masked autoencoder: the encoder on the visible tokens alone (the masked ones dropped,
  not replaced), the narrow `decoder` predicting every patch's pixels."""
  decoder_dim: int = 512
  decoder_depth: int = 8
  decoder_heads: int = 16
  mask_ratio: float = 0.75

  @nn.compact
  def __call__(self, images, masking, deterministic: bool = True):
    """images (B, *spatial, C); masking: a PRNG key (`random_masking` at `mask_ratio`) or a
    precomputed (keep_ids, mask, restore_ids) -> (pred (B, tokens, prod(patch) * C) float32,
    mask (B, tokens) bool, True = masked, what `masked_patch_loss` scores)."""
    grid = token_grid(images.shape[1:-1], self.patch_size)
    if not isinstance(masking, tuple):
      masking = random_masking(masking, images.shape[0], math.prod(grid), self.mask_ratio)
    keep_ids, mask, restore_ids = masking
    latent, _ = self.encode(images, deterministic, keep_ids)
    patch_pixels = math.prod(swin.per_axis(self.patch_size, len(grid))) * images.shape[-1]
    pred = MAEDecoder(self.decoder_dim, self.decoder_depth, self.decoder_heads, patch_pixels,
                      self.mlp_ratio, self.attention, self.dtype, name="decoder")(
                          latent, restore_ids, grid, self.cls_token)
    return pred, mask


class ViTClassifier(ViTBackbone):
  """The encoder, its tokens pooled (the class token when there is one, else the mean of the
  patch tokens), LayerNorm `fc_norm`, linear `head`."""
  num_classes: int = 2

  @nn.compact
  def __call__(self, images, deterministic: bool = True):
    """images (B, *spatial, C) -> logits (B, num_classes) float32."""
    x, _ = self.encode(images, deterministic)
    x = x[:, 0] if self.cls_token else x.mean(axis=1)
    x = swin.layer_norm("fc_norm", self.dtype)(x)
    return swin.dense(self.num_classes, "head", self.dtype)(x).astype(jnp.float32)
