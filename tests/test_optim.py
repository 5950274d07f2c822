"""AdamW, the schedule as data, layer-wise decay groups and the encoder hold."""
import jax
import numpy as np
import optax

from helpers import load_config, random_params
from vismae_jax import config_lib
from vismae_jax.models import unet
from vismae_jax.train import finetune, methods, optim


def test_schedule_as_data_matches_optax_adamw_with_its_schedule():
  """The step's unit-rate AdamW times optim.learning_rate is optax.adamw with the schedule."""
  config = load_config("generic.py", "tiny")
  config.optim.update(lr=3e-3, warmup_epochs=2.0)
  schedule = optim.schedule(config, steps_per_epoch=5.0, total_steps=40)
  reference = optax.warmup_cosine_decay_schedule(0.0, 3e-3, 10, 40, end_value=0.0)
  steps = np.arange(45)
  np.testing.assert_allclose(jax.vmap(lambda s: optim.learning_rate(s, schedule))(steps),
                             jax.vmap(reference)(steps), rtol=1e-5, atol=1e-9)

  params = {"w": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)}
  tx, ref_tx = optim.make_optimizer(config), optax.adamw(reference, b1=0.9, b2=0.95,
                                                         weight_decay=0.05)
  state, ref_state = tx.init(params), ref_tx.init(params)
  for step in range(12):
    grads = {"w": np.cos(params["w"] * (step + 1))}
    updates, state = tx.update(grads, state, params)
    ref_updates, ref_state = ref_tx.update(grads, ref_state, params)
    np.testing.assert_allclose(optax.tree.scale(optim.learning_rate(step, schedule), updates)["w"],
                               ref_updates["w"], rtol=1e-5, atol=1e-9)


def test_layer_decay_scales_each_depth_group_of_the_adamw_update():
  params = random_params(unet.SwinUNet(), 224)
  ids = optim.layer_ids(params)
  top = 2 + 2 + 6 + 2 + 1
  assert ids["head"]["kernel"] == top and ids["patch_embed"]["proj"]["kernel"] == 0
  assert ids["encoder"]["layers_0"]["blocks_0"]["attn"]["qkv"]["kernel"] == 1
  assert ids["encoder"]["layers_1"]["downsample"]["reduction"]["kernel"] == 4  # its last block
  assert ids["encoder"]["layers_3"]["blocks_1"]["mlp"]["fc1"]["kernel"] == top - 1
  assert ids["layers_up_0"]["blocks_0"]["norm1"]["scale"] == top

  config = config_lib.finetune("segmentation", "cpu")  # depths 2,1,1,1: top 6
  params = random_params(finetune.build_model(config), 64)
  ids, top = optim.layer_ids(params), 6
  grads = jax.tree.map(lambda p: np.full(p.shape, 0.1, p.dtype), params)

  def first_update(tx):
    return jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(grads, params)
  plain = first_update(optim.make_optimizer(config))
  config.optim.layer_decay = 0.5
  decayed = first_update(optim.make_optimizer(config))
  ratios = jax.tree.map(lambda d, p: float(np.median(d / p)), decayed, plain)
  jax.tree.map(lambda r, i: np.testing.assert_allclose(r, 0.5 ** (top - i), rtol=1e-5),
               ratios, ids)


def test_a_frozen_encoder_is_held_all_run_and_lp_ft_for_its_share():
  config = config_lib.finetune("segmentation", "tiny")
  config.finetune.freeze_encoder = True
  assert optim.schedule(config, steps_per_epoch=3.0, total_steps=40)["probe_steps"] == 40
  config.finetune.freeze_encoder, config.finetune.probe_first = False, 0.25
  assert optim.schedule(config, steps_per_epoch=3.0, total_steps=40)["probe_steps"] == 10
  assert optim.schedule(methods.pretrain_config("mae", variant="tiny"), 3.0, 40)["probe_steps"] == 0
  updates = {"encoder": {"w": np.ones(3)}, "patch_embed": {"w": np.ones(2)}, "head": np.ones(2)}
  held = optim.hold_encoder(updates, True)
  assert not np.any(held["encoder"]["w"]) and not np.any(held["patch_embed"]["w"])
  np.testing.assert_array_equal(held["head"], 1.0)
  jax.tree.map(np.testing.assert_array_equal, optim.hold_encoder(updates, False), updates)
