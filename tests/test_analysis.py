"""Linear CKA's invariances, and the stage features of both fine-tuning models."""
import numpy as np
import pytest

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
