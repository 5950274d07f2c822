"""SimMIM pretraining (configs/simmim.py): the model beside SwinMAE, its masking and loss, and a
short run on the bundled real images whose export fills the fine-tuning models' encoders."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_encoder_export_transfers, load_config, read_metrics, run_main
from vismae_jax import config_checks, config_lib
from vismae_jax.models import mae
from vismae_jax.train import masked_image, pretrain


def param_shapes(config):
  model = pretrain.build_model(config)
  size, grid = config.input.image_size, config.input.image_size // config.model.patch_size
  images, token_mask = jnp.zeros((2, size, size, 1)), jnp.zeros((2, grid, grid), bool)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), images, token_mask)["params"]
  return params, jax.eval_shape(lambda p: model.apply({"params": p}, images, token_mask), params)


def test_the_encoder_is_swinmaes_and_one_linear_layer_predicts_every_pixel():
  simmim, simmim_out = param_shapes(load_config("simmim.py", "tiny"))
  swinmae, swinmae_out = param_shapes(load_config("generic.py", "tiny"))
  assert simmim_out.shape == swinmae_out.shape == (2, 16, 16, 4 * 4 * 1)
  names = lambda tree: set(flax.traverse_util.flatten_dict(tree, sep="/"))
  assert {k: names(simmim[k]) for k in ("patch_embed", "encoder")} == {
      k: names(swinmae[k]) for k in ("patch_embed", "encoder")}
  assert set(simmim) == {"patch_embed", "mask_token", "encoder", "norm", "simmim_head"}
  # A final-stage token (4 px patches merged 3 times: 32 px) predicts its 32 x 32 pixels.
  assert simmim["simmim_head"]["kernel"].shape == (128, 32 * 32 * 1)
  assert simmim["norm"]["scale"].shape == (128,)


def test_masking_hides_ceil_of_60_percent_of_the_units_whole():
  """window_mask keeps int(units * 0.4), so it hides ceil(units * 0.6), SimMIM's count: 30 of a
  224 px image's 49 units of 32 px, 10 of the :tiny variant's 16 units of 16 px."""
  assert (np.asarray(mae.window_mask(jax.random.PRNGKey(0), 4, 7, 0.6)).sum((1, 2)) == 30).all()
  config = load_config("simmim.py", "tiny")
  images = np.random.default_rng(0).integers(0, 256, (6, 64, 64), np.uint8)
  _, token_mask, kept = masked_image.model_inputs(config, images, jax.random.PRNGKey(1), train=True)
  assert kept is None
  units = np.asarray(token_mask).reshape(6, 4, 4, 4, 4)  # 4x4 units of 4x4 tokens
  assert (units.min(axis=(2, 4)) == units.max(axis=(2, 4))).all()  # units hidden whole
  assert (units[:, :, 0, :, 0].sum((1, 2)) == 10).all()
  assert len({units[i, :, 0, :, 0].tobytes() for i in range(6)}) == 6  # drawn per image


def test_masked_l1_is_the_mean_absolute_error_on_masked_pixels_only():
  images = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)  # 2x2 patches of 2x2 pixels
  token_mask = np.array([[[True, False], [False, True]]])
  pred = np.full((1, 2, 2, 4), 100.0, np.float32)  # unmasked tokens: any error is ignored
  pred[0, 0, 0] = [1.0, 1.0, 1.0, 1.0]  # the patch is 0, 1, 4, 5: errors 1, 0, 3, 4
  pred[0, 1, 1] = [10.0, 11.0, 14.0, 15.0]  # exact
  assert mae.masked_l1(pred, images, token_mask, 2) == pytest.approx(8 / 8)
  assert mae.masked_mse(pred, images, token_mask, 2) == pytest.approx(26 / 8)
  assert mae.masked_l1(pred, images, ~token_mask, 2) > 80


def test_the_sparse_masking_is_swinmaes_alone():
  config = load_config("simmim.py", "tiny")
  config.mae.masking = "uniform"
  with pytest.raises(config_lib.ConfigError, match="'uniform' is SwinMAE's sparse mode"):
    config_checks.validate(config, 1, 1)


def test_a_short_run_on_real_images_learns_and_exports_an_encoder_that_transfers(tmp_path):
  """40 steps of :tiny on the bundled sample lower the L1 loss; the export holds the encoder
  alone, which fills the fine-tuning models' encoders (helpers.assert_encoder_export_transfers)."""
  workdir = str(tmp_path / "simmim")
  run_main(workdir, "--config.total_steps=40", config="configs/simmim.py:tiny")
  losses = [m["loss"] for m in read_metrics(workdir)]
  assert len(losses) == 8 and np.mean(losses[-2:]) < 0.7 * losses[0], losses
  assert_encoder_export_transfers(workdir, "configs/simmim.py:tiny")
