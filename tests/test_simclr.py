"""SimCLR pretraining (configs/simclr.py): NT-Xent by hand, the views, the global batch's
negatives across devices, and a short run on the bundled real images whose export fills the
fine-tuning models' encoders."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from helpers import (assert_encoder_export_transfers, assert_encoder_is_swinmaes, load_config,
                     pretraining_param_shapes, read_metrics, run_main)
from vismae_jax import augment, config_checks, config_lib, parallel
from vismae_jax.models import simclr
from vismae_jax.train import contrastive, pretrain


def test_nt_xent_is_the_mean_over_2n_anchors_of_the_positive_against_2n_minus_2_negatives():
  z1 = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 1.0]], np.float32)
  z2 = np.array([[3.0, 0.5, 0.0], [0.0, 1.0, -1.0], [-1.0, 1.0, 0.0]], np.float32)
  z = np.concatenate([z1, z2])
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  losses = []
  for i in range(6):
    positive = (i + 3) % 6
    terms = {j: np.exp(z[i] @ z[j] / 0.5) for j in range(6) if j != i}  # 1 positive, 4 negatives
    losses.append(-np.log(terms[positive] / sum(terms.values())))
  assert float(simclr.nt_xent(z1, z2, 0.5)) == pytest.approx(np.mean(losses), rel=1e-5)
  # Scale-free (embeddings are normalised), and matching views score better than swapped ones.
  assert float(simclr.nt_xent(3 * z1, z2, 0.5)) == pytest.approx(np.mean(losses), rel=1e-5)
  assert simclr.nt_xent(z1, z1, 0.1) < simclr.nt_xent(z1, z1[::-1], 0.1)


def test_the_encoder_is_swinmaes_and_a_projection_head_embeds_each_image():
  config = load_config("simclr.py", "tiny")
  model = pretrain.build_model(config)
  params = pretraining_param_shapes(config)
  assert_encoder_is_swinmaes(params)
  assert set(params) == {"patch_embed", "encoder", "norm", "projection"}
  assert params["projection"]["hidden"]["kernel"].shape == (128, 128)
  out = jax.eval_shape(lambda p: model.apply({"params": p}, jnp.zeros((3, 64, 64, 1))), params)
  assert out.shape == (3, 32)


def test_two_views_are_independent_draws_of_the_same_images():
  config = load_config("simclr.py", "tiny")
  images = np.random.default_rng(0).integers(0, 256, (4, 80, 80), np.uint8)
  views = np.asarray(contrastive.views(config, images, jax.random.PRNGKey(0)))
  assert views.shape == (4, 2, 64, 64, 1) and np.isfinite(views).all()
  assert all(np.abs(views[i, 0] - views[i, 1]).mean() > 1e-3 for i in range(4))
  np.testing.assert_array_equal(views, contrastive.views(config, images, jax.random.PRNGKey(0)))
  # Without intensity jitter the views stay in the minmax range: crops and blur average pixels.
  config.views.update(brightness=0.0, contrast=0.0)
  views = np.asarray(contrastive.views(config, images, jax.random.PRNGKey(1)))
  assert views.min() >= -1e-5 and views.max() <= 1 + 1e-5


def test_the_blur_keeps_flat_images_and_spreads_a_point():
  flat = jnp.full((2, 40, 40, 1), 0.3)
  np.testing.assert_allclose(augment.random_gaussian_blur(jax.random.PRNGKey(0), flat, 1.0),
                             flat, rtol=1e-6)
  point = jnp.zeros((2, 40, 40, 1)).at[:, 20, 20].set(1.0)
  blurred = np.asarray(augment.random_gaussian_blur(jax.random.PRNGKey(0), point, 1.0,
                                                    sigma=(1.0, 2.0)))
  assert blurred.sum((1, 2, 3)) == pytest.approx([1.0, 1.0], rel=1e-5)
  assert (blurred[:, 20, 20, 0] < 0.2).all() and (blurred[:, 21, 20, 0] > 0.02).all()
  around = blurred[:, 15:26, 15:26, 0]  # symmetric about the point, alike in both directions
  np.testing.assert_allclose(around, around[:, ::-1, ::-1], atol=1e-7)
  np.testing.assert_allclose(around, around.transpose(0, 2, 1), atol=1e-7)
  unblurred = augment.random_gaussian_blur(jax.random.PRNGKey(0), point, 0.0)
  np.testing.assert_array_equal(unblurred, point)


def test_nt_xent_on_embeddings_sharded_over_devices_takes_every_devices_negatives():
  """On (N, D) embeddings split over the 2 in-process devices, XLA gathers them and the loss
  equals one device's: each anchor's negatives are the whole global batch, not its device's
  share, whose loss would differ."""
  mesh = parallel.make_mesh(load_config("simclr.py", "tiny").mesh)
  assert mesh.devices.size == 2
  z1, z2 = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 16))
  split = NamedSharding(mesh, P("data"))
  sharded = [jax.device_put(z, split) for z in (z1, z2)]
  nt_xent = jax.jit(simclr.nt_xent, static_argnums=2)
  assert "all-gather" in nt_xent.lower(*sharded, 0.2).compile().as_text()
  np.testing.assert_allclose(nt_xent(*sharded, 0.2), nt_xent(z1, z2, 0.2), rtol=1e-6)
  on_each_device = np.mean([simclr.nt_xent(z1[i:i + 4], z2[i:i + 4], 0.2) for i in (0, 4)])
  assert abs(float(nt_xent(z1, z2, 0.2)) - on_each_device) > 0.1


@pytest.mark.slow
def test_the_step_loss_on_a_sharded_batch_equals_one_devices():
  """The whole loss (views, model, NT-Xent) on a batch split over the 2 in-process devices
  equals the loss on one device: the views of an image stay on its device and the negatives
  span both."""
  config = load_config("simclr.py", "tiny")
  model = pretrain.build_model(config)
  params = contrastive.init_params(model, config, jax.random.PRNGKey(0))
  images = np.random.default_rng(0).integers(0, 256, (4, 64, 64), np.uint8)
  loss_fn, rng = contrastive.make_loss_fn(model, config), jax.random.PRNGKey(1)
  mesh = parallel.make_mesh(config.mesh)
  with parallel.activation_sharding(mesh):
    sharded = jax.jit(loss_fn, in_shardings=(parallel.replicated(mesh),
                                             parallel.batch_sharding(mesh),
                                             parallel.replicated(mesh)))(params, images, rng)
  np.testing.assert_allclose(sharded, jax.jit(loss_fn)(params, images, rng), rtol=1e-5)


def test_a_short_run_on_real_images_learns_and_exports_an_encoder_that_transfers(tmp_path):
  """40 steps of :tiny on the bundled sample lower the NT-Xent loss (each step's batch alone is
  noisy at 8 images: the mean of the last 10 against the first 10); the export holds the encoder
  alone, which fills the fine-tuning models' encoders (helpers.assert_encoder_export_transfers).
  The figure shows the two views."""
  workdir = str(tmp_path / "simclr")
  proc = run_main(workdir, "--config.total_steps=40", "--config.log_every=1",
                  config="configs/simclr.py:tiny")
  assert f"Views: {workdir}/views.png" in proc.stdout
  losses = [m["loss"] for m in read_metrics(workdir)]
  assert len(losses) == 40 and np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.1, losses
  assert_encoder_export_transfers(workdir, "configs/simclr.py:tiny")


def test_the_config_rejects_impossible_simclr_settings():
  config = load_config("simclr.py", "tiny")
  config.simclr.update(temperature=0.0, projection_dims=(128,))
  config.views.blur_sigma = (2.0, 1.0)
  with pytest.raises(config_lib.ConfigError) as error:
    config_checks.validate(config, 1, 1)
  for field in ("simclr.temperature=0.0", "simclr.projection_dims=(128,)",
                "views.blur_sigma=(2.0, 1.0)"):
    assert f"config.{field}" in str(error.value)
