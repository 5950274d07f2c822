"""The one map between Flax paths and the published PyTorch names."""
import jax
import numpy as np

from helpers import random_params
from vismae_jax.convert import torch_names
from vismae_jax.models import mae


def test_names_follow_the_flax_paths_without_the_encoder_scope():
  assert torch_names.torch_name(("encoder", "layers_0", "blocks_1", "attn", "qkv", "kernel")) == (
      "layers.0.blocks.1.attn.qkv.weight")
  assert torch_names.torch_name(("layers_up_2", "upsample", "norm", "scale")) == (
      "layers_up.2.upsample.norm.weight")
  assert torch_names.torch_name(("mask_token",)) == "mask_token"


def test_round_trip_is_exact_and_buffers_are_written():
  params = random_params(mae.SwinMAE(embed_dim=16, num_heads=(1, 2, 2, 4), window=4), 64)
  state = torch_names.to_torch(params, image_size=64)
  assert state["layers.0.blocks.0.attn.qkv.weight"].shape == (48, 16)  # (out, in)
  assert state["patch_embed.proj.weight"].shape == (16, 3, 4, 4)  # (O, I, kh, kw)
  assert state["pos_embed"].shape == (1, 16 * 16, 16)
  back, report = torch_names.from_torch(state, params)
  assert not report["missing"] and not report["mismatched"]
  assert set(report["unused"]) == {k for k in state if k.endswith("relative_position_index")} | {
      "pos_embed"}
  jax.tree.map(np.testing.assert_array_equal, back, params)
