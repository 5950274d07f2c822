"""PyTorch definitions of our models with the published VIS-MAE state-dict layout.

Written from the published model's description (not from the release's code) so that users
without JAX can run our weights, and so benchmarks can time the release's PyTorch step side by
side with ours. Module names reproduce the published tensor names exactly; `load_state_dict`
with strict=True accepts `vismae_jax.convert.torch_names.to_torch` output.
torch is an optional extra (`pip install vismae_jax[torch]`): import this module lazily.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vismae_jax.convert import torch_names
from vismae_jax.models import swin

LN_EPS = swin.RELEASE_NORM.eps


def window_partition(x, window):
  b, h, w, c = x.shape
  x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, window * window, c)


def window_reverse(windows, window, h, w):
  c = windows.shape[-1]
  x = windows.view(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, h, w, c)


class DropPath(nn.Module):
  """Stochastic depth, per sample (torchvision's StochasticDepth would add a dependency)."""

  def __init__(self, rate):
    super().__init__()
    self.rate = rate

  def forward(self, x):
    if not self.training or self.rate == 0.0:
      return x
    keep = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) >= self.rate
    return x * keep / (1.0 - self.rate)


class WindowAttention(nn.Module):
  def __init__(self, dim, num_heads, window):
    super().__init__()
    self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
    self.relative_position_bias_table = nn.Parameter(
        torch.zeros((2 * window - 1) ** 2, num_heads))
    self.register_buffer("relative_position_index",
                         torch.from_numpy(swin.relative_position_index(window)))
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x, mask=None):
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q * self.scale) @ k.transpose(-2, -1)
    bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
    attn = attn + bias.view(n, n, -1).permute(2, 0, 1)[None]
    if mask is not None:
      n_windows = mask.shape[0]
      attn = attn.view(-1, n_windows, self.num_heads, n, n) + mask[None, :, None]
      attn = attn.view(-1, self.num_heads, n, n)
    x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
    return self.proj(x)


class Mlp(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
  def __init__(self, dim, num_heads, window, shift, drop_path=0.0):
    super().__init__()
    self.window, self.shift = window, shift
    self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
    self.attn = WindowAttention(dim, num_heads, window)
    self.drop_path = DropPath(drop_path)
    self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
    self.mlp = Mlp(dim, 4 * dim)

  def forward(self, x):
    _, h, w, _ = x.shape
    shortcut, x = x, self.norm1(x)
    hp, wp = -(-h // self.window) * self.window, -(-w // self.window) * self.window
    x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
    mask = None
    if self.shift:
      x = torch.roll(x, (-self.shift, -self.shift), dims=(1, 2))
      mask = torch.from_numpy(swin.shifted_window_mask((hp, wp), self.window, self.shift)).to(x)
    x = window_reverse(self.attn(window_partition(x, self.window), mask), self.window, hp, wp)
    if self.shift:
      x = torch.roll(x, (self.shift, self.shift), dims=(1, 2))
    x = shortcut + self.drop_path(x[:, :h, :w])
    return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
  def __init__(self, dim):
    super().__init__()
    self.norm = nn.LayerNorm(4 * dim, eps=LN_EPS)
    self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

  def forward(self, x):
    x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    return self.reduction(self.norm(x))


class PatchExpand(nn.Module):
  def __init__(self, dim, out_dim, scale=2):
    super().__init__()
    self.scale, self.out_dim = scale, out_dim
    self.expand = nn.Linear(dim, scale * scale * out_dim, bias=False)
    self.norm = nn.LayerNorm(out_dim, eps=LN_EPS)

  def forward(self, x):
    b, h, w, _ = x.shape
    s = self.scale
    x = self.expand(x).view(b, h, w, s, s, self.out_dim).permute(0, 1, 3, 2, 4, 5)
    return self.norm(x.reshape(b, h * s, w * s, self.out_dim))


class SwinStage(nn.Module):
  def __init__(self, dim, depth, num_heads, window, drop_paths, resample=None):
    super().__init__()
    self.blocks = nn.ModuleList([
        SwinBlock(dim, num_heads, window, 0 if i % 2 == 0 else window // 2, drop_paths[i])
        for i in range(depth)])
    if resample == "down":
      self.downsample = PatchMerging(dim)
    elif resample == "up":
      self.upsample = PatchExpand(dim, dim // 2)

  def forward(self, x):
    for block in self.blocks:
      x = block(x)
    if hasattr(self, "downsample"):
      x = self.downsample(x)
    if hasattr(self, "upsample"):
      x = self.upsample(x)
    return x


class PatchEmbed(nn.Module):
  def __init__(self, in_chans, embed_dim, patch):
    super().__init__()
    self.proj = nn.Conv2d(in_chans, embed_dim, patch, stride=patch)
    self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)

  def forward(self, images):  # (B, H, W, C) -> (B, H/p, W/p, D)
    return self.norm(self.proj(images.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class SwinMAE(nn.Module):
  """Same arguments and call as vismae_jax.models.mae.SwinMAE (channels-last images)."""

  def __init__(self, image_size=224, in_chans=3, patch_size=4, embed_dim=96,
               depths=(2, 2, 2, 2), decoder_depths=(2, 2, 2), num_heads=(3, 6, 12, 24),
               window=7, drop_path=0.1):
    super().__init__()
    grid = image_size // patch_size
    self.pos_embed = nn.Parameter(torch.from_numpy(
        torch_names.sincos_pos_embed(embed_dim, grid)), requires_grad=False)
    self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
    self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
    n = len(depths)
    rates = swin.drop_path_rates(depths, drop_path)
    self.layers = nn.ModuleList([
        SwinStage(embed_dim * 2 ** i, depths[i], num_heads[i], window, rates[i],
                  None if i == n - 1 else "down") for i in range(n)])
    top = embed_dim * 2 ** (n - 1)
    self.first_patch_expanding = PatchExpand(top, top // 2)
    dec_rates = swin.drop_path_rates(list(reversed(decoder_depths)) + [depths[-1]], drop_path)
    self.layers_up = nn.ModuleList([
        SwinStage(embed_dim * 2 ** (n - 2 - j), d, num_heads[n - 2 - j], window,
                  dec_rates[n - 2 - j], "up" if n - 2 - j > 0 else None)
        for j, d in enumerate(decoder_depths)])
    self.norm_up = nn.LayerNorm(embed_dim, eps=LN_EPS)
    self.decoder_pred = nn.Linear(embed_dim, patch_size ** 2 * in_chans)

  def forward(self, images, token_mask):
    x = self.patch_embed(images)
    x = torch.where(token_mask[..., None], self.mask_token, x)
    for layer in self.layers:
      x = layer(x)
    x = self.first_patch_expanding(x)
    for layer in self.layers_up:
      x = layer(x)
    return self.decoder_pred(self.norm_up(x))


class SwinEncoder(nn.Module):
  """Patch embedding and stages `layers.i`; returns the last features and each stage's input."""

  def __init__(self, in_chans, patch_size, embed_dim, depths, num_heads, window, drop_path):
    super().__init__()
    n = len(depths)
    rates = swin.drop_path_rates(depths, drop_path)
    self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
    self.layers = nn.ModuleList([
        SwinStage(embed_dim * 2 ** i, depths[i], num_heads[i], window, rates[i],
                  None if i == n - 1 else "down") for i in range(n)])

  def forward(self, images):
    x, skips = self.patch_embed(images), []
    for layer in self.layers:
      skips.append(x)
      x = layer(x)
    return x, skips


class SwinUNet(SwinEncoder):
  """Same arguments and call as vismae_jax.models.unet.SwinUNet: logits (B, H, W, classes)."""

  def __init__(self, num_classes=2, in_chans=3, patch_size=4, embed_dim=96, depths=(2, 2, 6, 2),
               num_heads=(3, 6, 12, 24), window=7, drop_path=0.1):
    super().__init__(in_chans, patch_size, embed_dim, depths, num_heads, window, drop_path)
    n = len(depths)
    rates = swin.drop_path_rates(depths, drop_path)
    top = embed_dim * 2 ** (n - 1)
    self.first_patch_expanding = PatchExpand(top, top // 2)
    stages = [n - 2 - j for j in range(n - 1)]
    self.skip_connection_layers = nn.ModuleList([
        nn.Conv2d(2 * embed_dim * 2 ** s, embed_dim * 2 ** s, 1) for s in stages])
    self.layers_up = nn.ModuleList([
        SwinStage(embed_dim * 2 ** s, depths[s], num_heads[s], window, rates[s],
                  "up" if s > 0 else None) for s in stages])
    self.norm_up = nn.LayerNorm(embed_dim, eps=LN_EPS)
    self.final_patch_expanding = PatchExpand(embed_dim, embed_dim, scale=patch_size)
    self.head = nn.Conv2d(embed_dim, num_classes, 1, bias=False)

  def forward(self, images):
    x, skips = super().forward(images)
    x = self.first_patch_expanding(x)
    for j, (fuse, layer) in enumerate(zip(self.skip_connection_layers, self.layers_up)):
      x = torch.cat([x, skips[len(skips) - 2 - j]], -1)
      x = layer(fuse(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
    x = self.final_patch_expanding(self.norm_up(x))
    return self.head(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class SwinClassifier(SwinEncoder):
  """Same arguments and call as vismae_jax.models.unet.SwinClassifier: logits (B, classes)."""

  def __init__(self, num_classes=2, in_chans=3, patch_size=4, embed_dim=96, depths=(2, 2, 2, 2),
               num_heads=(3, 6, 12, 24), window=7, drop_path=0.1):
    super().__init__(in_chans, patch_size, embed_dim, depths, num_heads, window, drop_path)
    top = embed_dim * 2 ** (len(depths) - 1)
    self.norm = nn.LayerNorm(top, eps=LN_EPS)
    self.head = nn.Linear(top, num_classes)

  def forward(self, images):
    x, _ = super().forward(images)
    return self.head(self.norm(x).mean(dim=(1, 2)))


def load_numpy_state(model: nn.Module, state: dict) -> nn.Module:
  """Loads {name: numpy array} (torch_names.to_torch output) with strict=True."""
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
                        strict=True)
  return model
