"""Weight transfer from a pretraining checkpoint into a fine-tuning model, by name and shape.

As the release does: every tensor of the target whose PyTorch name and shape match a source
tensor is copied (buffers counted, so the SwinMAE -> Swin-UNet transfer loads 220 tensors and
SwinMAE -> classifier 125); the rest keeps its fresh initialisation. Options:
- encoder_only: copy only the encoder (patch embedding and `layers.*`), e.g. from an ImageNet
  Swin-T classifier (its 1000-class head is not ours) or a decoder trained for another task;
- fill_deeper: a target stage deeper than the source's (UNet 2,2,6,2 from MAE 2,2,2,2) takes
  block k from source block k mod (source depth), keeping shifted and plain windows paired, so
  no block starts random.
The source may also be a published PyTorch checkpoint (the release's `.pth`, a `.safetensors`, a
Microsoft Swin-T ImageNet checkpoint: same names), read without unpickling code.
A name present in both with different shapes means the checkpoint does not fit the model: the
transfer fails listing every mismatch instead of silently training from scratch.

Models without a published PyTorch layout (the ViT MAE, UNETR and classifier of models/vit.py
and models/unetr.py) transfer by their Flax paths instead (`transfer_by_name`).
"""
import dataclasses
import re

import flax

from vismae_jax.convert import torch_names

_BLOCK = re.compile(r"^(layers(?:_up)?\.\d+)\.blocks\.(\d+)\.(.*)$")


class TransferError(ValueError):
  pass


@dataclasses.dataclass
class TransferReport:
  loaded: list
  filled: list    # loaded from a shallower source block (fill_deeper)
  new: list       # target tensors left at their initialisation
  unused: list    # source tensors with no place in the target

  def table(self) -> str:
    rows = [("loaded", self.loaded), ("filled from shallower blocks", self.filled),
            ("new (initialised here)", self.new), ("unused from the checkpoint", self.unused)]
    lines = [f"{'tensors':<30}{'count':>7}  examples"]
    lines += [f"{label:<30}{len(names):>7}  {', '.join(names[:3])}" for label, names in rows]
    return "\n".join(lines)


def _check_shapes(source, target, wanted=lambda name: True):
  """Raises TransferError listing every wanted target tensor whose source namesake differs in
  shape."""
  mismatched = [f"{n}: checkpoint {tuple(source[n].shape)} vs model {tuple(v.shape)}"
                for n, v in target.items()
                if wanted(n) and n in source and source[n].shape != v.shape]
  if mismatched:
    raise TransferError("the checkpoint does not fit the model; mismatched tensors:\n  " +
                        "\n  ".join(mismatched))


def _source_depths(state) -> dict:
  depths = {}
  for name in state:
    m = _BLOCK.match(name)
    if m:
      depths[m.group(1)] = max(depths.get(m.group(1), 0), int(m.group(2)) + 1)
  return depths


def transfer(source_params, target_params, *, encoder_only: bool = False,
             fill_deeper: bool = False, source_image_size: int = 224):
  """-> (target params with the transferred tensors, TransferReport).

  source_params: Flax parameters, or a PyTorch-named state dict (a published checkpoint read
  by convert.torch_import.load_state). source_image_size only sizes the SwinMAE's unused
  `pos_embed` buffer (it shows as unused).
  """
  if all(isinstance(k, str) and "." in k for k in source_params):  # already torch-named
    source = dict(source_params)
  else:
    source = torch_names.to_torch(source_params, image_size=source_image_size)
  target = torch_names.to_torch(target_params)
  wanted = lambda n: not encoder_only or n.startswith(("patch_embed.", "layers."))
  _check_shapes(source, target, wanted)
  depths = _source_depths(source)
  state, loaded, filled = dict(target), [], []
  for name in target:
    if not wanted(name):
      continue
    if name in source:
      state[name] = source[name]
      loaded.append(name)
    elif fill_deeper and (m := _BLOCK.match(name)) and m.group(1) in depths:
      donor = f"{m.group(1)}.blocks.{int(m.group(2)) % depths[m.group(1)]}.{m.group(3)}"
      if donor in source and source[donor].shape == target[name].shape:
        state[name] = source[donor]
        filled.append(name)
  params, _ = torch_names.from_torch(state, target_params)
  used = set(loaded) | {n for n in source if n in target}
  report = TransferReport(
      loaded=loaded, filled=filled,
      new=[n for n in target if n not in loaded and n not in filled],
      unused=[n for n in source if n not in used or (encoder_only and n not in loaded)])
  return params, report


def transfer_by_name(source_params, target_params):
  """-> (target params with every tensor whose Flax path, `/`-joined, the source shares,
  TransferReport). The rest of the target keeps its initialisation (`new`), the rest of the
  source is `unused`; a shared path with different shapes fails (TransferError)."""
  source = flax.traverse_util.flatten_dict(flax.core.unfreeze(source_params), sep="/")
  target = flax.traverse_util.flatten_dict(flax.core.unfreeze(target_params), sep="/")
  _check_shapes(source, target)
  loaded = [n for n in target if n in source]
  params = flax.traverse_util.unflatten_dict(
      {n: source[n] if n in source else v for n, v in target.items()}, sep="/")
  report = TransferReport(loaded=loaded, filled=[],
                          new=[n for n in target if n not in source],
                          unused=[n for n in source if n not in target])
  return params, report
