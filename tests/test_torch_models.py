"""Our weights in the published PyTorch layout run in our PyTorch modules with the same outputs."""
import jax
import numpy as np
import pytest

from helpers import plausible_params
from vismae_jax.convert import torch_names
from vismae_jax.models import mae, unet

torch = pytest.importorskip("torch", reason="the [torch] extra is not installed")
from vismae_jax.convert import torch_models  # noqa: E402

SMALL = dict(embed_dim=24, num_heads=(1, 2, 3, 6), drop_path=0.0)


@pytest.mark.parametrize("image_size", [
    pytest.param(224, marks=pytest.mark.slow),  # the release's grid: no padding
    96])  # 24x24 tokens: every stage's windows padded
def test_swin_mae_outputs_match_in_pytorch(image_size):
  model = mae.SwinMAE(in_chans=3, **SMALL)
  grid, units = image_size // 4, image_size // 16
  images = jax.random.uniform(jax.random.PRNGKey(0), (2, image_size, image_size, 3))
  token_mask = mae.unit_mask_to_tokens(mae.window_mask(jax.random.PRNGKey(1), 2, units, 0.75), 4)
  params = plausible_params(model, image_size)
  expected = np.asarray(jax.jit(model.apply)({"params": params}, images, token_mask))

  reference = torch_models.SwinMAE(image_size=image_size, in_chans=3, **SMALL).eval()
  torch_models.load_numpy_state(reference, torch_names.to_torch(params, image_size))
  with torch.no_grad():
    got = reference(torch.from_numpy(np.array(images)),
                    torch.from_numpy(np.array(token_mask))).numpy()
  assert got.shape == expected.shape == (2, grid, grid, 48)
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("flax_cls, torch_cls, image_size, out_shape", [
    (unet.SwinUNet, torch_models.SwinUNet, 96, (2, 96, 96, 3)),  # 24 tokens: padded windows
    (unet.SwinClassifier, torch_models.SwinClassifier, 96, (2, 3))])
def test_finetune_models_match_in_pytorch(flax_cls, torch_cls, image_size, out_shape):
  model = flax_cls(num_classes=3, depths=(2, 2, 2, 2), **SMALL)
  params = plausible_params(model, image_size)
  images = jax.random.uniform(jax.random.PRNGKey(0), (2, image_size, image_size, 3))
  expected, state = jax.jit(lambda p, x: model.apply(
      {"params": p}, x, capture_intermediates=lambda m, _: m.name == "encoder"))(params, images)
  expected_features = state["intermediates"]["encoder"]["__call__"][0][0]
  reference = torch_cls(num_classes=3, depths=(2, 2, 2, 2), **SMALL).eval()
  torch_models.load_numpy_state(reference, torch_names.to_torch(params))
  with torch.no_grad():
    x = torch.from_numpy(np.array(images))
    got = reference(x).numpy()
    features = torch_models.SwinEncoder.forward(reference, x)[0].numpy()
  assert got.shape == expected.shape == out_shape
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
  np.testing.assert_allclose(features, expected_features, atol=1e-4, rtol=0)
