"""Export to and import from PyTorch checkpoints: layouts, round trips, refusals, the CLI."""
import jax
import numpy as np
import pytest

from helpers import assert_export_loads_and_fills_the_unet, random_params, read_listing, run_main
from vismae_jax.models import unet

torch = pytest.importorskip("torch", reason="the [torch] extra is not installed")
from vismae_jax.convert import torch_export, torch_import, torch_models  # noqa: E402


@pytest.fixture(scope="module")
def release_unet_params():
  return random_params(unet.SwinUNet(), 224)


@pytest.fixture(scope="module")
def exported(release_unet_params, tmp_path_factory):
  return torch_export.export(release_unet_params, str(tmp_path_factory.mktemp("export")))


def test_export_writes_the_published_layout_and_round_trips_bit_exact(exported,
                                                                      release_unet_params):
  listing = read_listing("keys_seg.txt")
  for fmt in ("pth", "safetensors"):
    state = torch_import.load_state(exported[fmt])
    assert set(state) == set(listing)
    for name, (shape, dtype) in listing.items():
      assert state[name].shape == shape and str(state[name].dtype) == dtype, name
    back = torch_import.load(exported[fmt], release_unet_params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(release_unet_params)):
      np.testing.assert_array_equal(a, b)
  wrapped = torch.load(exported["pth"], weights_only=True)
  assert list(wrapped) == ["model"]
  model = torch_models.SwinUNet()
  model.load_state_dict(wrapped["model"], strict=True)  # the release's own loading


def test_import_errors_list_the_differences_and_name_corrupt_files(tmp_path, exported,
                                                                  release_unet_params):
  state = torch_import.load_state(exported["safetensors"])
  del state["head.weight"]
  state["layers.0.blocks.0.attn.qkv.weight"] = state["layers.0.blocks.0.attn.qkv.weight"][:10]
  state["extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(torch_import.CheckpointMismatch) as info:
    torch_import.to_flax(state, release_unet_params)
  message = str(info.value)
  assert "missing: head.weight" in message and "unexpected: extra.weight" in message
  assert "mis-shaped: layers.0.blocks.0.attn.qkv.weight: file (10, 96) vs model (288, 96)" in (
      message)
  bad = tmp_path / "corrupt.pth"
  bad.write_bytes(open(exported["pth"], "rb").read()[:1000])
  with pytest.raises(ValueError, match="corrupt.pth: not a readable PyTorch checkpoint"):
    torch_import.load_state(str(bad))


def test_weights_only_loading_refuses_pickled_code(tmp_path):
  class Payload:
    def __reduce__(self):
      return (print, ("this must never run",))
  path = tmp_path / "evil.pth"
  torch.save({"model": {"x": torch.zeros(1)}, "code": Payload()}, str(path))
  with pytest.raises(ValueError, match="evil.pth: not a readable PyTorch checkpoint"):
    torch_import.load_state(str(path))


@pytest.mark.slow
def test_export_cli_then_fine_tune_from_the_exported_file(tmp_path):
  workdir = str(tmp_path / "pretrain")
  # A tiny SwinMAE trained with parameters sharded over 8 devices, exported by 1 process.
  run_main(workdir, "--config.mesh.data=1", "--config.mesh.fsdp=8", "--config.mesh.fsdp_min_mb=0",
           devices=8)
  proc = run_main(workdir, "--config.task=export")
  assert "Exported swin_mae" in proc.stdout
  assert_export_loads_and_fills_the_unet(tmp_path / "pretrain" / "export")
