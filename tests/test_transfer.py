"""Swin-UNet and classifier against the published listings; weight transfer from SwinMAE."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vismae_jax import transfer
from vismae_jax.models import mae, torch_names, unet
from test_models import REFERENCE, read_listing


@functools.cache
def random_params(model, image_size, seed=0):
  """Random values in the model's parameter shapes (no compiled init: full-size models)."""
  inputs = (jnp.zeros((1, image_size, image_size, model.in_chans)),)
  if isinstance(model, mae.SwinMAE):
    inputs += (jnp.zeros((1, image_size // 4, image_size // 4), bool),)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *inputs)["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)


def mae_params():
  return random_params(mae.SwinMAE(), 224, seed=1)


def read_transfer_listing(name):
  sections, current = {}, None
  with open(os.path.join(REFERENCE, name)) as f:
    for line in f:
      line = line.strip()
      if line.startswith("## "):
        current = sections.setdefault(line[3:], [])
      elif line and not line.startswith("#"):
        current.append(line)
  return sections


@pytest.mark.parametrize("model, listing, n_params", [
    (unet.SwinUNet(), "keys_seg.txt", 41_378_628),
    (unet.SwinClassifier(), "keys_cls.txt", 20_414_924)])
def test_finetune_models_match_published_tensors(model, listing, n_params):
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes["params"])
  state = torch_names.to_torch(params)
  expected = read_listing(listing)
  assert set(state) == set(expected)
  for name, (shape, dtype) in expected.items():
    assert state[name].shape == shape and str(state[name].dtype) == dtype, name
  assert sum(x.size for x in jax.tree.leaves(params)) == n_params


def test_unet_runs_at_320_with_window_padding_and_one_channel():
  model = unet.SwinUNet(num_classes=3, in_chans=1, embed_dim=12, depths=(2, 1, 1, 1),
                        num_heads=(1, 1, 2, 2))
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 320, 320, 1)))["params"]
  logits = jax.jit(model.apply)({"params": params}, jnp.ones((2, 320, 320, 1)))
  assert logits.shape == (2, 320, 320, 3) and bool(jnp.isfinite(logits).all())


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
  np.testing.assert_array_equal(state["layers.2.blocks.5.attn.qkv.weight"],
                                torch_names.to_torch(source, 224)["layers.2.blocks.1.attn.qkv.weight"])
  _, enc = transfer.transfer(source, target, encoder_only=True)
  assert all(n.startswith(("patch_embed.", "layers.")) for n in enc.loaded)
  assert "layers_up.0.blocks.0.attn.qkv.weight" in enc.unused


def test_checkpoint_that_does_not_fit_fails_with_the_mismatches():
  source = mae_params()
  target = random_params(unet.SwinUNet(embed_dim=48, num_heads=(3, 6, 12, 24)), 224)
  with pytest.raises(transfer.TransferError, match=r"patch_embed.proj.weight: checkpoint "
                     r"\(96, 3, 4, 4\) vs model \(48, 3, 4, 4\)"):
    transfer.transfer(source, target)


def test_update_scales_follow_depth_and_a_frozen_encoder_is_held_all_run():
  from vismae_jax import config_lib
  from vismae_jax.train import optim
  params = random_params(unet.SwinUNet(), 224)
  scales = optim.update_scales(params, 0.5)
  top = 2 + 2 + 6 + 2 + 1
  assert scales["head"]["kernel"] == 1.0 and scales["patch_embed"]["proj"]["kernel"] == 0.5 ** top
  assert scales["encoder"]["layers_0"]["blocks_0"]["attn"]["qkv"]["kernel"] == 0.5 ** (top - 1)
  assert scales["encoder"]["layers_1"]["downsample"]["reduction"]["kernel"] == 0.5 ** (top - 4)
  assert scales["encoder"]["layers_3"]["blocks_1"]["mlp"]["fc1"]["kernel"] == 0.5
  assert scales["layers_up_0"]["blocks_0"]["norm1"]["scale"] == 1.0
  config = config_lib.finetune("segmentation", "tiny")
  config.finetune.freeze_encoder = True
  assert optim.schedule(config, steps_per_epoch=3.0, total_steps=40)["probe_steps"] == 40
  config.finetune.freeze_encoder, config.finetune.probe_first = False, 0.25
  assert optim.schedule(config, steps_per_epoch=3.0, total_steps=40)["probe_steps"] == 10
  assert optim.schedule(config_lib.pretrain(variant="tiny"), 3.0, 40)["probe_steps"] == 0


def test_a_frozen_encoder_gets_no_gradient_and_no_backward_pass():
  from vismae_jax import config_lib
  from vismae_jax.train import finetune
  batch = {"image": np.random.default_rng(0).integers(0, 255, (8, 64, 64), np.uint8),
           "label": np.arange(8) % 2}
  flops = {}
  for frozen in (False, True):
    config = config_lib.finetune("classification", "tiny")
    config.finetune.freeze_encoder = frozen
    fns = finetune.functions(config)
    params = fns.init_params(jax.random.PRNGKey(0))
    grad = jax.jit(jax.grad(fns.loss_fn)).lower(params, batch, jax.random.PRNGKey(1)).compile()
    flops[frozen] = grad.cost_analysis()["flops"]
    grads = grad(params, batch, jax.random.PRNGKey(1))
    encoder = [np.abs(g).max() for k in ("patch_embed", "encoder")
               for g in jax.tree.leaves(grads[k])]
    assert (max(encoder) == 0) == frozen
    assert np.abs(grads["head"]["kernel"]).max() > 0
  # Without the encoder's backward pass a step is little more than the forward pass (0.34x).
  assert flops[True] < 0.5 * flops[False], flops


def test_probe_first_holds_the_encoder_while_the_head_trains_then_releases_it():
  from vismae_jax import config_lib
  from vismae_jax.train import finetune, loop, optim
  config = config_lib.finetune("classification", "tiny")
  config.finetune.probe_first = 0.2
  fns = finetune.functions(config)
  tx = optim.make_optimizer(config)
  state = loop.make_state_initializer(tx, 0)(fns.init_params(jax.random.PRNGKey(0)))
  schedule = optim.schedule(config, steps_per_epoch=2.0, total_steps=10)
  assert schedule["probe_steps"] == 2
  step = jax.jit(loop.make_train_step(fns.loss_fn, tx))
  batch = {"image": np.random.default_rng(0).integers(0, 255, (8, 64, 64), np.uint8),
           "label": np.arange(8) % 2}

  def moved(a, b, part):
    return max(np.abs(x - y).max() for x, y in zip(jax.tree.leaves(a["params"][part]),
                                                   jax.tree.leaves(b["params"][part])))
  start = jax.tree.map(np.asarray, state)
  for _ in range(2):
    state, _ = step(state, batch, schedule)
  assert moved(state, start, "encoder") == moved(state, start, "patch_embed") == 0
  assert moved(state, start, "head") > 0
  held = jax.tree.map(np.asarray, state)
  state, _ = step(state, batch, schedule)
  assert moved(state, held, "encoder") > 0 and moved(state, held, "patch_embed") > 0


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
