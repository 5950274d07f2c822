"""The one weights loader: Orbax runs (a workdir or one step folder), PyTorch `.pth` / `.pt`
files and `.safetensors`, for fine-tuning's starting weights, prediction and evaluation.

Two uses, two strictnesses:
- `load_into`: pretrained weights into a fine-tuning model, tensor by tensor where name and
  shape agree (convert/transfer.py; files of the ViT and SwinUNETR families in MONAI's layout,
  convert/monai.py), the rest left at its initialisation, with a table of what moved;
- `load_exact`: a fine-tuned model to apply; every tensor must be there with its shape, or the
  load fails listing what differs.
Nothing pickled is ever run (torch_import reads with weights_only; Orbax reads arrays).
"""
import flax

from vismae_jax import checkpoint
from vismae_jax.convert import monai, torch_import, transfer

# The encoder family whose files carry the release's PyTorch names; the others' are MONAI's.
RELEASE_ARCH = "swin"


def is_file(path: str) -> bool:
  """Whether `path` names a PyTorch or safetensors file (else an Orbax run or step folder)."""
  return path.endswith(torch_import.SUFFIXES)


def read(path: str, best_metric: str = ""):
  """The weights at `path`: a file's PyTorch-named state dict, or an Orbax run's parameters
  (its best checkpoint by `best_metric` where it kept one, else its newest)."""
  return torch_import.load_state(path) if is_file(path) else checkpoint.load_params(
      path, best_metric)


def load_into(path: str, target_params, *, arch: str = RELEASE_ARCH, encoder_only: bool = False,
              fill_deeper: bool = False):
  """-> (target_params with the weights of `path` transferred in, transfer.TransferReport).

  The release's Swin (`arch` "swin") matches PyTorch names, as the release does (encoder_only
  and fill_deeper: transfer.transfer); the other families match Flax paths in an Orbax run and
  MONAI's names in a file.
  """
  source = read(path)
  if arch != RELEASE_ARCH:
    if is_file(path):
      return monai.import_weights(source, target_params, path)
    return transfer.transfer_by_name(source, target_params)
  return transfer.transfer(source, target_params, encoder_only=encoder_only,
                           fill_deeper=fill_deeper)


def load_exact(path: str, params_like, best_metric: str = ""):
  """The weights at `path` as parameters of the model `params_like` describes (arrays or
  shapes); torch_import.CheckpointMismatch lists every missing, unexpected or mis-shaped tensor."""
  if is_file(path):
    params, _ = torch_import.to_flax(torch_import.load_state(path), params_like, strict=True)
    return params
  params = checkpoint.load_params(path, best_metric)
  have = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
  want = flax.traverse_util.flatten_dict(flax.core.unfreeze(params_like), sep="/")
  problems = ([f"missing: {n}" for n in want if n not in have] +
              [f"unexpected: {n}" for n in have if n not in want] +
              [f"mis-shaped: {n}: checkpoint {tuple(have[n].shape)} vs model "
               f"{tuple(want[n].shape)}" for n in want
               if n in have and tuple(have[n].shape) != tuple(want[n].shape)])
  if problems:
    raise torch_import.CheckpointMismatch(
        f"{path}: the checkpoint does not fit the model ({len(problems)} problems):\n  "
        + "\n  ".join(problems))
  return params
