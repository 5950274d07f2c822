"""Weight transfer from SwinMAE into the Swin-UNet and classifier, as the release does it."""
import numpy as np
import pytest

from helpers import random_params, read_transfer_listing
from vismae_jax.convert import torch_names, transfer
from vismae_jax.models import mae, unet


def mae_params():
  return random_params(mae.SwinMAE(), 224, seed=1)


@pytest.mark.parametrize("model, listing, n_loaded", [
    (unet.SwinUNet(), "transfer_seg.txt", 220), (unet.SwinClassifier(), "transfer_cls.txt", 125)])
def test_transfer_from_swinmae_loads_what_the_release_loads(model, listing, n_loaded):
  source, target = mae_params(), random_params(model, 224)
  params, report = transfer.transfer(source, target)
  expected = read_transfer_listing(listing)
  assert len(report.loaded) == n_loaded
  assert sorted(report.unused) == sorted(expected["unused pretrain keys"])
  assert sorted(report.new) == sorted(expected["target keys not from pretrain"])
  loaded = torch_names.to_torch(params)
  source_state = torch_names.to_torch(source, image_size=224)
  for name in report.loaded:
    np.testing.assert_array_equal(loaded[name], source_state[name])
  fresh = torch_names.to_torch(target)
  for name in report.new:
    np.testing.assert_array_equal(loaded[name], fresh[name])
  assert f"{'loaded':<30}{n_loaded:>7}" in report.table()


def test_fill_deeper_and_encoder_only():
  source, target = mae_params(), random_params(unet.SwinUNet(), 224)
  params, report = transfer.transfer(source, target, fill_deeper=True)
  # Blocks 2-5 of layers.2 and layers_up.0, 14 tensors each (the position index included).
  assert len(report.filled) == 4 * 2 * 14
  state = torch_names.to_torch(params)
  source_state = torch_names.to_torch(source, 224)
  np.testing.assert_array_equal(state["layers.2.blocks.5.attn.qkv.weight"],
                                source_state["layers.2.blocks.1.attn.qkv.weight"])
  _, enc = transfer.transfer(source, target, encoder_only=True)
  assert all(n.startswith(("patch_embed.", "layers.")) for n in enc.loaded)
  assert "layers_up.0.blocks.0.attn.qkv.weight" in enc.unused


def test_checkpoint_that_does_not_fit_fails_with_the_mismatches():
  source = mae_params()
  target = random_params(unet.SwinUNet(embed_dim=48, num_heads=(3, 6, 12, 24)), 224)
  with pytest.raises(transfer.TransferError, match=r"patch_embed.proj.weight: checkpoint "
                     r"\(96, 3, 4, 4\) vs model \(48, 3, 4, 4\)"):
    transfer.transfer(source, target)


def test_microsoft_swin_t_checkpoint_fills_the_unet_encoder():
  # A Microsoft Swin-T ImageNet state dict: the same encoder names with depths 2,2,6,2, plus its
  # own `norm`, `head` and `attn_mask` buffers.
  cls = unet.SwinClassifier(num_classes=1000, depths=(2, 2, 6, 2))
  state = torch_names.to_torch(random_params(cls, 224, seed=4))
  state["layers.0.blocks.1.attn_mask"] = np.zeros((64, 49, 49), np.float32)
  params, report = transfer.transfer(state, random_params(unet.SwinUNet(), 224),
                                     encoder_only=True)
  encoder = [n for n in report.loaded if n.startswith(("patch_embed.", "layers."))]
  assert len(encoder) == len(report.loaded) == 4 + 3 * 3 + 12 * 14  # stem, mergings, blocks
  assert {"head.weight", "norm.weight", "layers.0.blocks.1.attn_mask"} <= set(report.unused)
  np.testing.assert_array_equal(torch_names.to_torch(params)["layers.2.blocks.5.mlp.fc2.weight"],
                                state["layers.2.blocks.5.mlp.fc2.weight"])
