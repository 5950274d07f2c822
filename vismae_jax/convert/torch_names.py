"""The one map between our Flax parameter trees and the published PyTorch state-dict layout.

A Flax path becomes a PyTorch name by dropping the `encoder` scope and turning `_<n>` suffixes
into `.<n>` (`encoder/layers_0/blocks_1/attn/qkv/kernel` -> `layers.0.blocks.1.attn.qkv.weight`).
Linear kernels are transposed to (out, in), convolutions to (O, I, kh, kw). The release also
stores buffers that are not parameters here: every attention's `relative_position_index` and the
SwinMAE's unused sin-cos `pos_embed`; `to_torch` writes them so strict loading works.
"""
import re
from typing import Mapping

import flax
import numpy as np

from vismae_jax.models import swin, vit

_SCOPES_WITHOUT_TORCH_NAME = ("encoder",)


def torch_name(path: tuple[str, ...]) -> str:
  """Flax parameter path -> PyTorch tensor name."""
  *scopes, leaf = path
  parts = [re.sub(r"_(\d+)$", r".\1", s) for s in scopes if s not in _SCOPES_WITHOUT_TORCH_NAME]
  leaf = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
  return ".".join(parts + [leaf])


def _to_torch_layout(path, value):
  value = np.asarray(value)
  if path[-1] == "kernel" and value.ndim == 2:
    return value.T
  if path[-1] == "kernel" and value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  return value


def sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
  """The fixed 2-D sin-cos table the release keeps as `pos_embed` (1, grid^2, dim)."""
  return vit.sincos_position_embedding((grid_size, grid_size), embed_dim)


def to_torch(params: Mapping, image_size: int | None = None) -> dict[str, np.ndarray]:
  """Flax params -> {torch name: array in torch layout}, buffers included.

  `image_size` is needed for the SwinMAE's `pos_embed` buffer (grid = image_size / patch).
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  state = {}
  for path, value in flat.items():
    state[torch_name(path)] = _to_torch_layout(path, value)
    if path[-1] == "relative_position_bias_table":
      window = int(round((np.sqrt(value.shape[0]) + 1) / 2))
      state[torch_name(path[:-1] + ("relative_position_index",))] = (
          swin.relative_position_index(window))
  if "mask_token" in params:
    patch = state["patch_embed.proj.weight"].shape[-1]
    if image_size is None:
      raise ValueError("to_torch: image_size is required to write the SwinMAE pos_embed buffer")
    embed_dim = state["mask_token"].shape[-1]
    state = {"pos_embed": sincos_pos_embed(embed_dim, image_size // patch), **state}
  return state


def from_torch(state: Mapping[str, np.ndarray], params_like: Mapping) -> tuple[dict, dict]:
  """Torch-layout tensors -> a Flax tree shaped like `params_like`, by name and shape.

  Returns (params, report) where report lists `loaded`, `missing` (kept from params_like),
  `unused` (in state, no Flax counterpart; buffers included) and `mismatched` (name matches,
  shape does not) names. The caller decides which of these are errors.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params_like))
  out, report = {}, {"loaded": [], "missing": [], "unused": [], "mismatched": []}
  seen = set()
  for path, like in flat.items():
    name = torch_name(path)
    if name not in state:
      out[path] = like
      report["missing"].append(name)
      continue
    seen.add(name)
    value = np.asarray(state[name])
    if path[-1] == "kernel" and value.ndim == 2:
      value = value.T
    elif path[-1] == "kernel" and value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)
    if value.shape != tuple(like.shape):
      out[path] = like
      model_shape = _to_torch_layout(path, np.empty(like.shape, np.uint8)).shape
      report["mismatched"].append(
          f"{name}: file {tuple(np.shape(state[name]))} vs model {tuple(model_shape)}")
      continue
    out[path] = value.astype(like.dtype)
    report["loaded"].append(name)
  report["unused"] = [k for k in state if k not in seen]
  return flax.traverse_util.unflatten_dict(out), report
