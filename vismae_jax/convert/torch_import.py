"""PyTorch checkpoints -> Flax parameters: the release's `.pth` (`{'model': ...}` or a bare
state dict), `.safetensors`, or a Microsoft / timm Swin-T ImageNet checkpoint with the same
names.

Loading never runs pickled code: `.pth` files go through `torch.load(weights_only=True)`, which
accepts tensors and plain containers only. A file that does not fit the model fails listing its
missing, unexpected and mis-shaped tensors; a corrupt file fails naming the file.
"""
import os

from vismae_jax.convert import torch_names

# Buffers and tables that a published checkpoint may carry but our parameters do not hold.
IGNORED = ("relative_position_index", "attn_mask", "pos_embed")
# The files read here (a path ending otherwise is an Orbax checkpoint).
SUFFIXES = (".pth", ".pt", ".safetensors")


class CheckpointError(ValueError):
  """A checkpoint file that cannot be read, or that does not fit the model."""


class CheckpointMismatch(CheckpointError):
  pass


def _why(e: Exception) -> str:
  """One line on what is wrong with a file torch or safetensors could not load. A pickle
  that would run code is named as such: PyTorch's own message opens with the advice to switch
  its safety check off, which is the one thing not to do with an untrusted file."""
  text = str(e)
  if "Weights only load failed" in text:
    found = next((line.strip() for line in text.splitlines() if "Unsupported global" in line),
                 "")
    found = found.split(" was not an allowed global")[0].replace("WeightsUnpickler error: ", "")
    return ("it holds pickled objects beyond tensors, which are never loaded because "
            f"unpickling can run code ({found or 'not a plain state dict'}); save the weights "
            "as a plain state dict or as .safetensors")
  return f"{type(e).__name__}: {(text.splitlines() or ['no detail'])[0][:200]}"


def load_state(path: str) -> dict:
  """{name: numpy array} from a .pth or .safetensors file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such checkpoint file")
  if os.path.getsize(path) == 0:
    raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: the file is empty")
  try:
    if path.endswith(".safetensors"):
      import safetensors.numpy
      return dict(safetensors.numpy.load_file(path))
    import torch
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # corrupt, truncated, or holding code: say which file and why
    raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {_why(e)}") from e
  for wrapper in ("model", "state_dict"):  # the release's (and Microsoft Swin's); MONAI SSL's
    if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
      state = state[wrapper]
  if not isinstance(state, dict):
    raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
  tensors = {k: v.float().numpy() if v.dtype.is_floating_point else v.numpy()
             for k, v in state.items() if hasattr(v, "numpy")}
  if not tensors:
    raise CheckpointError(f"{path}: holds no tensors")
  return tensors


def to_flax(state: dict, params_like, strict: bool = True):
  """Torch-named tensors -> params shaped like `params_like`.

  strict: every model tensor must be present with its shape and nothing else may be left over
  (buffers excepted); otherwise CheckpointMismatch lists the differences.
  """
  params, report = torch_names.from_torch(state, params_like)
  unexpected = [n for n in report["unused"] if not n.endswith(IGNORED)]
  if strict and (report["missing"] or unexpected or report["mismatched"]):
    lines = ([f"missing: {n}" for n in report["missing"]] +
             [f"unexpected: {n}" for n in unexpected] +
             [f"mis-shaped: {n}" for n in report["mismatched"]])
    raise CheckpointMismatch(f"the checkpoint does not fit the model ({len(lines)} problems):\n  "
                             + "\n  ".join(lines))
  return params, report


def load(path: str, params_like, strict: bool = True):
  """A checkpoint file as Flax parameters for the model that `params_like` describes."""
  params, _ = to_flax(load_state(path), params_like, strict)
  return params

