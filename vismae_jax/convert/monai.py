r"""MONAI interchange: our SwinUNETR, UNETR and ViT as MONAI state dicts, and MONAI weights in.

  python -m vismae_jax.main --config=configs/swin_unetr3d.py --workdir=RUN --config.task=export

writes `RUN/export/monai.pt` (a plain state dict), `RUN/export/monai.safetensors` and
`RUN/export/monai.json`, the MONAI class and the constructor arguments under which
`load_state_dict(state, strict=True)` succeeds and the outputs equal ours (docs/pytorch.md):

  import importlib, json, torch
  spec = json.load(open("RUN/export/monai.json"))
  net = getattr(importlib.import_module(spec["module"]), spec["class"])(**spec["kwargs"])
  net.load_state_dict(torch.load("RUN/export/monai.pt", weights_only=True), strict=True)

A SwinUNETR fine-tuning run exports as `SwinUNETR`; a SMIT pretraining (configs/smit3d.py) its
encoder as MONAI's `SwinTransformer` (SwinUNETR's `swinViT`, the names of MONAI's SSL
checkpoints); a UNETR run as `UNETR` where MONAI's class can hold it (12 blocks, patches of 16),
else, like a ViT-MAE pretraining, its encoder as MONAI's `ViT`. The patch-merging order of a
3D Swin is written into `downsample`: "merging" (MONAI's default, its legacy order) or
"mergingv2" (swin.MERGE_ORDERS); weights pretrained in another order are not interchangeable,
which is why the order is part of the config (and resume guard).

Import (`finetune.pretrained` naming a `.pt` / `.pth` / `.safetensors` file): a whole
SwinUNETR (or UNETR) state dict, or the self-supervised encoder layouts users have: `swinViT.*`
or bare (`patch_embed.*`, `layers1.0.*`: MONAI's own SSL checkpoint), with or without
`module.`, `fc1/fc2` or `linear1/linear2`, inside `state_dict` / `model` or not. Names are made
canonical (`canonical_name`), every tensor of ours whose namesake is there is copied, a shape
that differs fails in one line naming the first such tensor, and the transfer table is logged.
"""
import dataclasses
import json
import os
import re

import flax
import numpy as np

import jax

from vismae_jax import checkpoint, config_lib, tasks
from vismae_jax.convert import transfer
from vismae_jax.models import swin, swin_unetr, vit


class MonaiError(ValueError):
  """Weights that cannot go to or come from MONAI's layout, in one line."""


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one of our models' Flax paths become a MONAI class's state-dict names.

  rules: (Flax path prefix regex, MONAI prefix) pairs, the first match wins; `{0}`, `{1}` are
  the regex's groups and `{L}` the first group plus one (MONAI counts stages from 1).
  inner: (regex, replacement) pairs applied to the rest of the path (our submodule names ->
  MONAI's).
  """
  monai_class: str
  rules: tuple
  inner: tuple


_CONV = (r"(^|/)(conv\d)/", r"\1\2/conv/")  # a ResBlock's convolution: MONAI wraps it
_SWIN_RULES = (
    (r"^patch_embed/proj/", "{P}patch_embed.proj."),
    (r"^encoder/layers_(\d+)/blocks_(\d+)/", "{P}layers{L}.0.blocks.{1}."),
    (r"^encoder/layers_(\d+)/downsample/", "{P}layers{L}.0.downsample."),
    (r"^encoder/layers_(\d+)/conv_block/", "{P}layers{L}c.0.layer."),
)
_SWIN_INNER = ((r"^mlp/fc(\d)/", r"mlp/linear\1/"),)
# MONAI's Swin encoder alone (monai.networks.nets.swin_unetr.SwinTransformer, SwinUNETR's
# `swinViT`): what a Swin pretraining (SMIT) exports; its names are MONAI's SSL checkpoints'.
SWIN = Layout("SwinTransformer", tuple((p, r.replace("{P}", "")) for p, r in _SWIN_RULES),
              _SWIN_INNER)
SWIN_UNETR = Layout("SwinUNETR", tuple((p, r.replace("{P}", "swinViT.")) for p, r in _SWIN_RULES)
                    + (
    (r"^(encoder\d+)/", "{0}.layer."),
    (r"^(decoder\d+)/transp_conv/", "{0}.transp_conv.conv."),
    (r"^(decoder\d+)/res/", "{0}.conv_block."),
    (r"^out/", "out.conv.conv."),
), _SWIN_INNER + (_CONV,))
_VIT_RULES = (
    (r"^encoder/patch_embed/proj/", "{P}patch_embedding.patch_embeddings."),
    (r"^encoder/blocks_(\d+)/", "{P}blocks.{0}."),
    (r"^encoder/norm/", "{P}norm."),
)
_VIT_INNER = ((r"^mlp/fc(\d)/", r"mlp/linear\1/"), (r"^attn/proj/", "attn/out_proj/"))
UNETR = Layout("UNETR", tuple((p, r.replace("{P}", "vit.")) for p, r in _VIT_RULES) + (
    (r"^(encoder\d+)/transp_conv_init/", "{0}.transp_conv_init.conv."),
    (r"^(encoder\d+)/transp_conv_(\d+)/", "{0}.blocks.{1}.0.conv."),
    (r"^(encoder\d+)/res_(\d+)/", "{0}.blocks.{1}.1."),
    (r"^(encoder1)/", "{0}.layer."),
    (r"^(decoder\d+)/transp_conv/", "{0}.transp_conv.conv."),
    (r"^(decoder\d+)/res/", "{0}.conv_block."),
    (r"^out/", "out.conv.conv."),
), _VIT_INNER + (_CONV,))
VIT = Layout("ViT", tuple((p, r.replace("{P}", "")) for p, r in _VIT_RULES), _VIT_INNER)

NETS = "monai.networks.nets"  # where MONAI's SwinUNETR, UNETR and ViT classes are
SWIN_MODULE = "monai.networks.nets.swin_unetr"  # and its Swin encoder class

LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias",
          "relative_position_bias_table": "relative_position_bias_table"}


def monai_name(path: str, layout: Layout) -> str | None:
  """The MONAI name of our `/`-joined Flax path, or None where the layout has no place for it."""
  for pattern, prefix in layout.rules:
    m = re.match(pattern, path)
    if m:
      groups = m.groups()
      head = prefix.format(*groups, L=int(groups[0]) + 1 if groups and groups[0].isdigit()
                           else "")
      rest = path[m.end():]
      for old, new in layout.inner:
        rest = re.sub(old, new, rest)
      *inner, leaf = rest.split("/")
      return head + ".".join(inner + [LEAVES[leaf]])
  return None


def to_torch_tensor(path: str, value) -> np.ndarray:
  """Our array at `path` in PyTorch's layout: Dense kernels transposed, convolution kernels
  (k.., in, out) -> (out, in, k..), transposed-convolution kernels -> (in, out, k..) flipped
  along the spatial axes (flax correlates the dilated input with the kernel unflipped; PyTorch
  scatters it)."""
  value = np.asarray(value)
  if not path.endswith("/kernel"):
    return value
  if value.ndim == 2:
    return value.T
  n = value.ndim - 2
  if "transp_conv" in path:
    return np.moveaxis(np.flip(value, tuple(range(n))), (n, n + 1), (0, 1))
  return np.moveaxis(value, (n + 1, n), (0, 1))


def from_torch_tensor(path: str, value, shape) -> np.ndarray:
  """to_torch_tensor's inverse, for a tensor that must end up of `shape`."""
  value = np.asarray(value, np.float32)
  if not path.endswith("/kernel") or value.ndim != len(shape):
    return value
  if value.ndim == 2:
    return value.T
  n = value.ndim - 2
  if "transp_conv" in path:
    return np.flip(np.moveaxis(value, (0, 1), (n, n + 1)), tuple(range(n)))
  return np.moveaxis(value, (0, 1), (n + 1, n))


def layout_of(params) -> Layout:
  """The layout of a model's parameters: SwinUNETR (an encoder10), a Swin pretraining (Swin
  stages without a decoder: its encoder alone), UNETR (a decoder and a ViT `encoder`), or the
  ViT encoder alone."""
  if "encoder10" in params:
    return SWIN_UNETR
  if "layers_0" in params.get("encoder", {}):
    return SWIN
  return UNETR if "decoder2" in params else VIT


def _flat(params) -> dict:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")


def state_dict(params, layout: Layout, spec: dict) -> dict:
  """{MONAI name: array} of `params`, with the buffers and fixed tables MONAI keeps in its
  state dict (relative-position indices; the ViT's position embeddings and unused cross-attention
  norms), so that loading is strict."""
  state = {}
  for path, value in _flat(params).items():
    name = monai_name(path, layout)
    if name is None:
      raise MonaiError(f"{path}: has no place in MONAI's {layout.monai_class}")
    state[name] = to_torch_tensor(path, value)
  kwargs = spec["kwargs"]
  for name in list(state):
    if name.endswith("attn.relative_position_bias_table"):
      window = swin.per_axis(kwargs["window_size"], kwargs["spatial_dims"])
      state[name.replace("bias_table", "index")] = swin.relative_position_index(window)
    if re.search(r"blocks\.\d+\.norm1\.weight$", name) and layout in (UNETR, VIT):
      prefix = name[:-len("norm1.weight")]
      dim = state[name].shape[0]
      state[prefix + "norm_cross_attn.weight"] = np.ones(dim, np.float32)
      state[prefix + "norm_cross_attn.bias"] = np.zeros(dim, np.float32)
  if layout in (UNETR, VIT):
    grid = vit.token_grid(kwargs["img_size"], spec["patch_size"])
    prefix = "vit." if layout is UNETR else ""
    state[prefix + "patch_embedding.position_embeddings"] = vit.sincos_position_embedding(
        grid, kwargs["hidden_size"])
  return {k: np.ascontiguousarray(v) for k, v in state.items()}


def canonical_name(name: str, layout: Layout) -> str:
  """A MONAI-side name as our export writes it: `module.` dropped, the SwinUNETR encoder under
  `swinViT.` (`swin_vit.`, or no prefix at all as in MONAI's SSL checkpoints), MLP layers as
  `linear1/2` (the SSL checkpoints' `fc1/2`)."""
  while name.startswith("module."):
    name = name[len("module."):]
  name = re.sub(r"\.mlp\.fc(\d)\.", r".mlp.linear\1.", name)
  if layout is SWIN_UNETR:
    name = re.sub(r"^swin_vit\.", "swinViT.", name)
    if re.match(r"^(patch_embed|layers\d)", name):
      name = "swinViT." + name
  elif layout is UNETR and re.match(r"^(patch_embedding|blocks|norm)\.", name):
    name = "vit." + name  # MONAI's ViT alone, into UNETR's encoder
  return name


def import_weights(state: dict, params_like, source: str = "the checkpoint"):
  """-> (params shaped like `params_like` with every tensor whose MONAI namesake is in `state`,
  transfer.TransferReport). A namesake of another shape raises MonaiError naming it."""
  layout = layout_of(params_like)
  have = {canonical_name(k, layout): v for k, v in state.items()}
  target = _flat(params_like)
  loaded, new, out = [], [], {}
  for path, like in target.items():
    name = monai_name(path, layout)
    if name in have:
      value = from_torch_tensor(path, have[name], like.shape)
      if tuple(value.shape) != tuple(like.shape):
        raise MonaiError(f"{source}: {name} has shape {tuple(np.shape(have[name]))} where our "
                         f"{path} needs {tuple(like.shape)} (another window, patch, feature "
                         "size or depth?)")
      out[path] = value.astype(like.dtype)
      loaded.append(name)
    else:
      out[path] = like
      new.append(path)
  used = set(loaded)
  unused = [k for k in have if k not in used and not k.endswith(
      ("relative_position_index", "position_embeddings", "norm_cross_attn.weight",
       "norm_cross_attn.bias"))]
  return (flax.traverse_util.unflatten_dict(out, sep="/"),
          transfer.TransferReport(loaded=loaded, filled=[], new=new, unused=unused))


def spec_of(config, layout: Layout) -> dict:
  """The MONAI class and constructor arguments of `config`'s model in `layout`."""
  m = config.model
  spatial = list(config_lib.spatial_shape(config))
  nd = len(spatial)
  if layout is SWIN:
    kwargs = dict(in_chans=m.in_chans, embed_dim=m.embed_dim,
                  window_size=list(swin.per_axis(m.window, nd)),
                  patch_size=list(swin.per_axis(m.patch_size, nd)), depths=list(m.depths),
                  num_heads=list(m.num_heads), spatial_dims=nd, downsample=m.merge_order,
                  use_v2=bool(m.use_v2))
    return {"class": "SwinTransformer", "module": SWIN_MODULE, "kwargs": kwargs}
  if layout is SWIN_UNETR:
    kwargs = dict(in_channels=m.in_chans, out_channels=config.finetune.num_classes,
                  patch_size=m.patch_size, depths=list(m.depths), num_heads=list(m.num_heads),
                  window_size=m.window, feature_size=m.embed_dim, spatial_dims=nd,
                  downsample=m.merge_order, use_v2=bool(m.use_v2))
    return {"class": "SwinUNETR", "kwargs": kwargs}
  common = dict(in_channels=m.in_chans, img_size=spatial, hidden_size=m.embed_dim,
                mlp_dim=int(m.embed_dim * m.mlp_ratio), num_heads=m.num_heads,
                spatial_dims=nd, qkv_bias=True)
  if layout is UNETR:
    return {"class": "UNETR", "patch_size": m.patch_size, "kwargs": dict(
        common, out_channels=config.finetune.num_classes, feature_size=m.feature_size)}
  return {"class": "ViT", "patch_size": m.patch_size, "kwargs": dict(
      common, patch_size=m.patch_size, num_layers=m.depth)}


def export_layout(params, config) -> tuple[dict, Layout, str]:
  """(the parameters to write, their layout, why a UNETR exports its encoder alone or "")."""
  layout = layout_of(params)
  m = config.model
  if layout is UNETR and (m.depth != 12 or m.patch_size != 16):
    why = (f"MONAI's UNETR has 12 blocks and patches of 16, this one {m.depth} blocks and "
           f"patches of {m.patch_size}: its encoder exports as MONAI's ViT")
    return {"encoder": params["encoder"]}, VIT, why
  if layout is VIT:
    params = {"encoder": params["encoder"]}
  if layout is SWIN:  # a pretraining's heads and mask token have no place in MONAI's encoder
    params = {k: params[k] for k in ("patch_embed", "encoder")}
  return params, layout, ""


def export(params, config, out_dir: str):
  """Writes monai.pt, monai.safetensors and monai.json; returns ({what: path}, the spec, why a
  UNETR exported its encoder alone or "")."""
  import safetensors.numpy
  import torch

  params, layout, why = export_layout(params, config)
  spec = spec_of(config, layout)
  deepest = [s // swin_unetr.input_multiple(config.model.patch_size)
             for s in config_lib.spatial_shape(config)]
  if layout is SWIN_UNETR and max(deepest) == 1:
    why = ("this run's windows leave one voxel at 1/32, where MONAI's instance norm refuses to "
           "run: give MONAI's SwinUNETR windows of at least 64 voxels along one axis (the "
           "weights are the same)")
  state = state_dict(params, layout, spec)
  os.makedirs(out_dir, exist_ok=True)
  paths = {"pt": os.path.join(out_dir, "monai.pt"),
           "safetensors": os.path.join(out_dir, "monai.safetensors"),
           "spec": os.path.join(out_dir, "monai.json")}
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, paths["pt"])
  safetensors.numpy.save_file(state, paths["safetensors"],
                              metadata={"format": "pt", "monai_class": spec["class"]})
  with open(paths["spec"], "w") as f:
    json.dump({"module": spec.get("module", NETS), "class": spec["class"],
               "kwargs": spec["kwargs"], "note": why}, f, indent=1)
  return paths, spec, why


def main(config, workdir: str) -> dict:
  """Exports the run in `workdir` (a fine-tuning run's best checkpoint, else its newest) to
  `workdir/export`, and says what it wrote in one line."""
  best = tasks.of(config).best_metric if "finetune" in config else ""
  params = checkpoint.load_params(workdir, best)
  paths, spec, why = export(params, config, os.path.join(workdir, "export"))
  n = sum(np.size(x) for x in jax.tree.leaves(params))
  print(f"Exported MONAI {spec['class']} (downsample={spec['kwargs'].get('downsample', '-')}; "
        f"{n:,} parameters){': ' + why if why else ''}: "
        + " | ".join(f"{k}: {v}" for k, v in paths.items()), flush=True)
  return paths
