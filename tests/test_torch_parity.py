"""Our weights in the PyTorch layout run in PyTorch and give the same reconstruction."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vismae_jax.models import mae, torch_names

torch = pytest.importorskip("torch", reason="the [torch] extra is not installed")
from vismae_jax.convert import torch_models  # noqa: E402


@pytest.mark.parametrize("image_size", [224, 320])  # 320: 80x80 tokens, padded windows
def test_swin_mae_outputs_match_in_pytorch(image_size):
  kwargs = dict(in_chans=3, embed_dim=24, num_heads=(1, 2, 3, 6), drop_path=0.0)
  model = mae.SwinMAE(**kwargs)
  grid, units = image_size // 4, image_size // 16
  images = jax.random.uniform(jax.random.PRNGKey(0), (2, image_size, image_size, 3))
  token_mask = mae.unit_mask_to_tokens(mae.window_mask(jax.random.PRNGKey(1), 2, units, 0.75), 4)
  params = jax.jit(model.init)(jax.random.PRNGKey(2), images[:1], token_mask[:1])["params"]
  # Non-zero biases and tables so that every tensor's layout matters.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.02 * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])
  expected = np.asarray(jax.jit(model.apply)({"params": params}, images, token_mask))

  reference = torch_models.SwinMAE(image_size=image_size, **kwargs).eval()
  torch_models.load_numpy_state(reference, torch_names.to_torch(params, image_size))
  with torch.no_grad():
    got = reference(torch.from_numpy(np.array(images)),
                    torch.from_numpy(np.array(token_mask))).numpy()
  assert got.shape == expected.shape == (2, grid, grid, 48)
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
