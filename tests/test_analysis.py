"""Linear CKA's invariances, and the stage features of both fine-tuning models."""
import numpy as np
import pytest

from data_pipelines import volume_crops
from helpers import plausible_params
from vismae_jax import analysis, config_lib
from vismae_jax.train import finetune


def features(n=64, d=16, seed=0):
  return np.random.default_rng(seed).normal(size=(n, d))


def test_cka_of_a_representation_with_itself_is_one():
  x = features()
  assert analysis.linear_cka(x, x) == pytest.approx(1.0)
  assert analysis.linear_cka(x.astype(np.float32), x) == pytest.approx(1.0)


def test_cka_ignores_orthogonal_transforms_isotropic_scaling_and_offsets():
  x = features()
  q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(16, 16)))
  y = features(seed=2)
  base = analysis.linear_cka(x, y)
  assert analysis.linear_cka(x @ q, x) == pytest.approx(1.0)
  assert analysis.linear_cka(x @ q, y) == pytest.approx(base)
  assert analysis.linear_cka(1e-3 * x, y * 250.0) == pytest.approx(base)
  assert analysis.linear_cka(x + 7.0, y) == pytest.approx(base)  # centred


def test_cka_of_independent_features_is_small_and_of_constant_ones_zero():
  x, y = features(n=2000, d=8), features(n=2000, d=8, seed=3)
  assert analysis.linear_cka(x, y) < 0.05
  assert analysis.linear_cka(np.ones((10, 4)), features(n=10)) == 0.0
  with pytest.raises(ValueError, match="same examples"):
    analysis.linear_cka(x, y[:10])


@pytest.mark.parametrize("kind", ["segmentation", "classification"])
def test_stage_features_are_pooled_per_image_for_both_models(kind):
  config = config_lib.finetune(kind, "tiny")
  model = finetune.build_model(config)
  size = config.input.image_size
  params = plausible_params(model, size)
  images = np.random.default_rng(0).integers(0, 256, (3, size, size), np.uint8)
  x, _ = finetune.model_inputs(config, {"image": images}, None, train=False)
  stages = analysis.stage_features(model, params, x)
  m = config.model
  assert list(stages) == ["patch_embed", *(f"layers_{i}" for i in range(len(m.depths)))]
  widths = [m.embed_dim, *(m.embed_dim * 2 ** min(i + 1, len(m.depths) - 1)
                           for i in range(len(m.depths)))]
  assert [s.shape for s in stages.values()] == [(3, w) for w in widths]
  reuse = analysis.feature_reuse(config, params, params, images)
  assert reuse == pytest.approx(dict.fromkeys(stages, 1.0))


def test_swin_unetr_stages_are_compared_on_the_central_crop_of_each_volume():
  """SwinUNETR on volumes: each stage's output pooled over the crop's voxels; the same weights
  give CKA 1 at every stage, other weights less; volumes of any shape give their central ROI."""
  from helpers import plausible_values, param_shapes
  config = config_lib.swin_unetr_finetune(3, "tiny")
  model = finetune.build_model(config)
  shapes = param_shapes(model, np.zeros((1, 32, 32, 32, 1), np.float32))
  params, other = plausible_values(shapes, seed=2), plausible_values(shapes, seed=3)
  rng = np.random.default_rng(0)
  volumes = [rng.normal(size=shape).astype(np.float32)
             for shape in ((36, 50, 35), (30, 44, 40), (33, 33, 33), (40, 32, 29))]
  reuse = analysis.feature_reuse(config, params, params, volumes)
  assert list(reuse) == ["patch_embed", "layers_0", "layers_1", "layers_2", "layers_3"]
  assert reuse == pytest.approx(dict.fromkeys(reuse, 1.0))
  assert all(v < 0.999 for v in analysis.feature_reuse(config, params, other, volumes).values())
  crop = volume_crops.central_crop(volumes[0], (32, 32, 32))
  np.testing.assert_array_equal(crop, volumes[0][2:34, 9:41, 1:33])
