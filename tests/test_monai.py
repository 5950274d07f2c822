"""MONAI interchange (convert/monai.py) against MONAI itself, the real client: our SwinUNETR,
UNETR and ViT load into MONAI's classes with strict=True and give our outputs within 1e-4, and
MONAI's weights, in each layout users have, fill our models."""
import jax
import numpy as np
import pytest

from helpers import need
from vismae_jax.convert import monai as interchange
from vismae_jax.models import swin, swin_unetr, unetr, vit


def _monai_net(spec):
  nets = need("monai").networks.nets
  return getattr(nets, spec["class"])(**spec["kwargs"]).eval()


def _torch_output(net, x):
  torch = need("torch")
  with torch.no_grad():
    out = net(torch.from_numpy(np.moveaxis(np.asarray(x), -1, 1)))
  out = out[0] if isinstance(out, tuple) else out
  return np.moveaxis(out.numpy(), 1, -1)


def _load(net, state):
  torch = need("torch")
  net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)


def _random_params(model, x, seed=0):
  """Parameters with every tensor random, norms included (an identity norm would hide a
  misplaced scale)."""
  params = model.init(jax.random.PRNGKey(seed), x)["params"]
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  return jax.tree.unflatten(tree, [l + 0.1 * jax.random.normal(k, l.shape)
                                   for l, k in zip(leaves, keys)])


SWIN_CASES = {
    # 3D, MONAI's defaults but narrower: windows clamped on the deeper (4 x 8 x 4) maps.
    "3d": dict(shape=(1, 32, 64, 32, 1), merge_order="merging", conv_blocks=False),
    "3d_v2_mergingv2": dict(shape=(1, 32, 32, 64, 1), merge_order="mergingv2",
                            conv_blocks=True),
    "2d": dict(shape=(2, 64, 96, 1), merge_order="merging", conv_blocks=False),
}


def _swin_unetr(case):
  c = SWIN_CASES[case]
  model = swin_unetr.SwinUNETR(embed_dim=12, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
                               num_classes=3, merge_order=c["merge_order"],
                               conv_blocks=c["conv_blocks"])
  x = jax.random.normal(jax.random.PRNGKey(2), c["shape"])
  spec = {"class": "SwinUNETR", "kwargs": dict(
      in_channels=1, out_channels=3, patch_size=2, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4],
      window_size=7, feature_size=12, spatial_dims=len(c["shape"]) - 2,
      downsample=c["merge_order"], use_v2=c["conv_blocks"])}
  return model, x, spec


@pytest.mark.parametrize("case", list(SWIN_CASES))
def test_swin_unetr_loads_strictly_into_monai_with_equal_outputs(case):
  model, x, spec = _swin_unetr(case)
  params = _random_params(model, x)
  net = _monai_net(spec)
  _load(net, interchange.state_dict(params, interchange.SWIN_UNETR, spec))
  ours = np.asarray(model.apply({"params": params}, x))
  np.testing.assert_allclose(_torch_output(net, x), ours, atol=1e-4, rtol=1e-4)
  assert np.abs(ours).max() > 0.1  # not an all-zero output that would match anything
