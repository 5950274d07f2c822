r"""Checkpoints -> PyTorch state dicts in the published VIS-MAE layout.

  python -m vismae_jax.main --config=configs/generic.py --workdir=RUN --config.task=export

writes `RUN/export/model.safetensors` and `RUN/export/model.pth` (`{'model': state_dict}`, the
release's checkpoint format) from the run's best parameters if it kept any, else its newest
checkpoint. Names, shapes and dtypes are the published ones (tests/reference/keys_*.txt), buffers
included, so the release's loading code (and vismae_jax.convert.torch_models) accepts them with
strict=True. A SimMIM, SimCLR or DINO run (configs/simmim.py, simclr.py, dino.py) has no
published layout: its export holds the encoder alone (DINO's: its teacher's) (`patch_embed`,
`layers.*` and the final `norm`; model "swin_encoder" in the safetensors metadata), what the
Swin-UNet and the classifier take from it.
Only the parameters are read (not the optimizer state), into host memory, from checkpoints of any
topology (FSDP over many hosts included: see checkpoint.restore_on_host).
"""
import os

import jax
import numpy as np

from vismae_jax import checkpoint, tasks
from vismae_jax.convert import torch_names
from vismae_jax.models import dino, simclr, simmim, swin

# The heads of the pretraining methods without a published layout.
ENCODER_ONLY_HEADS = (simmim.HEAD, simclr.HEAD, dino.HEAD)


def exported_params(params):
  """What the export writes: everything, but of a SimMIM, SimCLR or DINO model only its encoder
  (the heads and the mask token have no place in a fine-tuning model)."""
  if any(head in params for head in ENCODER_ONLY_HEADS):
    return swin.encoder_params(params)
  return params


def model_kind(params) -> str:
  if "mask_token" in params:
    return "swin_mae"
  if "skip_connection_layers_0" in params:
    return "swin_unet"
  return "swin_classifier" if "head" in params else "swin_encoder"


def export(params, out_dir: str, image_size: int = 224) -> dict:
  """Writes model.safetensors and model.pth of `exported_params`; returns {format: path}."""
  import safetensors.numpy
  import torch

  params = exported_params(params)
  os.makedirs(out_dir, exist_ok=True)
  state = {k: np.ascontiguousarray(v) for k, v in
           torch_names.to_torch(params, image_size=image_size).items()}
  paths = {"safetensors": os.path.join(out_dir, "model.safetensors"),
           "pth": os.path.join(out_dir, "model.pth")}
  safetensors.numpy.save_file(state, paths["safetensors"], metadata={
      "format": "pt", "model": model_kind(params)})
  torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}}, paths["pth"])
  return paths


def main(config, workdir: str) -> dict:
  """Exports the run in `workdir`: a fine-tuning run's best checkpoint, else the newest."""
  params = exported_params(checkpoint.load_params(
      workdir, tasks.of(config).best_metric if "finetune" in config else ""))
  paths = export(params, os.path.join(workdir, "export"), config.input.image_size)
  n = sum(np.size(x) for x in jax.tree.leaves(params))
  kind = model_kind(params)
  what = " (the encoder alone: patch_embed, layers.*, norm)" if kind == "swin_encoder" else ""
  print(f"Exported {kind}{what} ({n:,} parameters): " +
        " | ".join(f"{k}: {v}" for k, v in paths.items()), flush=True)
  return paths
