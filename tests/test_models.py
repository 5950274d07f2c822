"""SwinMAE, Swin-UNet and classifier against the published listings, and their pieces."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from helpers import random_params, read_listing
from vismae_jax import parallel
from vismae_jax.convert import torch_names
from vismae_jax.models import mae, swin, unet


def zero_params(model, image_size):
  return jax.tree.map(np.zeros_like, random_params(model, image_size))


def test_release_preset_matches_published_tensors_one_for_one():
  state = torch_names.to_torch(zero_params(mae.SwinMAE(), 224), image_size=224)
  listing = read_listing("keys_pretrain.txt")
  assert set(state) == set(listing)
  for name, (shape, dtype) in listing.items():
    assert state[name].shape == shape, name
    assert str(state[name].dtype) == dtype, name
  n_float = sum(v.size for v in state.values() if v.dtype == np.float32)
  assert n_float == 26_936_916


@pytest.mark.parametrize("model, listing, n_params", [
    (unet.SwinUNet(), "keys_seg.txt", 41_378_628),
    (unet.SwinClassifier(), "keys_cls.txt", 20_414_924)])
def test_finetune_models_match_published_tensors(model, listing, n_params):
  params = zero_params(model, 224)
  state = torch_names.to_torch(params)
  expected = read_listing(listing)
  assert set(state) == set(expected)
  for name, (shape, dtype) in expected.items():
    assert state[name].shape == shape and str(state[name].dtype) == dtype, name
  assert sum(x.size for x in jax.tree.leaves(params)) == n_params


def test_options_grey_input_and_unet_depth_encoder():
  params = zero_params(mae.SwinMAE(in_chans=1, depths=(2, 2, 6, 2)), 224)
  state = torch_names.to_torch(params, image_size=224)
  assert state["patch_embed.proj.weight"].shape == (96, 1, 4, 4)
  assert state["decoder_pred.weight"].shape == (16, 96)
  assert "layers.2.blocks.5.attn.qkv.weight" in state
  # The deeper encoder's names and shapes are exactly the Swin-UNet's (keys_seg.txt).
  seg = read_listing("keys_seg.txt")
  encoder = {k for k in state if k.startswith("layers.")}
  assert all(k in seg and seg[k][0] == state[k].shape for k in encoder)


def test_relative_position_index_follows_the_swin_formula():
  index = swin.relative_position_index(7)
  assert index.shape == (49, 49) and index.dtype == np.int64
  for q, k in [(0, 0), (0, 48), (48, 0), (10, 23)]:
    dy, dx = q // 7 - k // 7, q % 7 - k % 7
    assert index[q, k] == (dy + 6) * 13 + (dx + 6)


def test_window_partition_order_and_shift_mask():
  x = np.arange(2 * 14 * 14 * 3, dtype=np.float32).reshape(2, 14, 14, 3)
  windows = swin.window_partition(x, 7)
  assert windows.shape == (8, 49, 3)
  # Window-major, row-major within: image 1's second window starts at row 0, column 7.
  np.testing.assert_array_equal(windows[5, :8], x[1, 0, 7:14].tolist() + [x[1, 1, 7]])
  mask = swin.shifted_window_mask((14, 14), 7, 3)
  assert mask.shape == (4, 49, 49)
  assert set(np.unique(mask)) == {0.0, -100.0}
  assert not mask[0].any()  # the top-left window holds a single region
  np.testing.assert_array_equal(mask, mask.transpose(0, 2, 1))
  assert not np.diagonal(mask, axis1=1, axis2=2).any()


def test_relative_position_index_in_3d_by_hand():
  """Window (2, 3, 2): the table has 3 x 5 x 3 entries, offsets read with depth most
  significant."""
  index = swin.relative_position_index((2, 3, 2))
  assert index.shape == (12, 12) and index.max() == 3 * 5 * 3 - 1
  assert index[0, 0] == (1 * 5 + 2) * 3 + 1  # no offset: the table's centre
  # token 11 is (1, 2, 1), token 0 is (0, 0, 0): offsets (+1, +2, +1) and the reverse.
  assert index[11, 0] == (2 * 5 + 4) * 3 + 2
  assert index[0, 11] == 0
  assert index[1, 2] == (1 * 5 + 1) * 3 + 2  # (0, 0, 1) vs (0, 1, 0): (0, -1, +1)


def test_window_partition_and_shift_mask_in_3d_by_hand():
  x = np.arange(4 * 4 * 4, dtype=np.float32).reshape(1, 4, 4, 4, 1)
  windows = swin.window_partition(x, 2)[..., 0]
  assert windows.shape == (8, 8)
  # The second window: depth 0-1, rows 0-1, columns 2-3, row-major inside.
  np.testing.assert_array_equal(windows[1], [2, 3, 6, 7, 18, 19, 22, 23])
  mask = swin.shifted_window_mask((4, 4, 4), (2, 2, 2), (1, 1, 1))
  regions = lambda w: (mask[w] == 0).sum(axis=1)  # tokens each token may attend to
  np.testing.assert_array_equal(regions(0), 8)  # the first window is one region
  np.testing.assert_array_equal(regions(1), 4)  # split along the columns only
  np.testing.assert_array_equal(regions(7), 1)  # the last: every token its own region
  # An axis that does not shift is not split.
  unshifted_rows = swin.shifted_window_mask((4, 4, 4), (2, 2, 2), (1, 0, 1))
  np.testing.assert_array_equal((unshifted_rows[7] == 0).sum(axis=1), 2)


def test_monai_window_geometry_clamps_windows_to_small_maps():
  assert swin.window_geometry((4, 8, 16), 7, 3, clamp=True) == ((4, 7, 7), (0, 3, 3))
  assert swin.window_geometry((4, 8, 16), 7, 3, clamp=False) == ((7, 7, 7), (3, 3, 3))


@pytest.mark.parametrize("order", ["merging", "mergingv2"])
def test_patch_merging_concatenates_the_eight_neighbours_in_the_named_order(order):
  """Each voxel of a 2x2x2 grid holds its offset code 4d + 2h + w; the merged channels list
  the codes in the order swin.MERGE_ORDERS names (MONAI's legacy and v2 orders differ)."""
  x = jnp.asarray([4 * d + 2 * h + w for d in (0, 1) for h in (0, 1) for w in (0, 1)],
                  jnp.float32).reshape(1, 2, 2, 2, 1)
  module = swin.PatchMerging(1, merge_order=order)
  params = module.init(jax.random.PRNGKey(0), x)
  captured = module.apply(params, x, capture_intermediates=True, mutable=["intermediates"])
  merged = captured[1]["intermediates"]["norm"]["__call__"][0]  # after the LayerNorm
  codes = np.argsort(np.argsort(np.asarray(merged).reshape(-1)))  # the LayerNorm keeps ranks
  expected = {"merging": [0, 4, 2, 1, 6, 5, 3, 7], "mergingv2": list(range(8))}[order]
  np.testing.assert_array_equal(codes, expected)


def test_window_mask_fraction_units_and_determinism():
  unit = mae.window_mask(jax.random.PRNGKey(3), 16, 14, 0.75)
  assert unit.shape == (16, 14, 14)
  np.testing.assert_array_equal(unit.sum(axis=(1, 2)), 147)  # 196 - int(196 * 0.25)
  tokens = mae.unit_mask_to_tokens(unit, 4)
  assert tokens.shape == (16, 56, 56)
  assert float(tokens.mean()) == 0.75
  blocks = np.asarray(tokens).reshape(16, 14, 4, 14, 4)
  assert (blocks.min(axis=(2, 4)) == blocks.max(axis=(2, 4))).all()  # whole 4x4-token units
  np.testing.assert_array_equal(unit, mae.window_mask(jax.random.PRNGKey(3), 16, 14, 0.75))
  assert (unit != mae.window_mask(jax.random.PRNGKey(4), 16, 14, 0.75)).any()
  assert (unit[0] != unit[1]).any()  # each image draws its own mask


def test_masked_mse_counts_masked_tokens_only():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((2, 16, 16, 1), np.float32))
  token_mask = jnp.asarray(rng.random((2, 4, 4)) < 0.5)
  target = mae.patchify(images, 4)
  pred = jnp.asarray(rng.random(target.shape, np.float32))
  expected = (((pred - target) ** 2).mean(-1) * token_mask).sum() / token_mask.sum()
  loss = mae.masked_mse(pred, images, token_mask, 4)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  changed_visible = jnp.where(token_mask[..., None], pred, pred + 5.0)
  np.testing.assert_allclose(mae.masked_mse(changed_visible, images, token_mask, 4), loss)
  np.testing.assert_array_equal(mae.unpatchify(target, 4, 1), images)


def test_norm_pix_loss_standardises_each_target_patch():
  rng = np.random.default_rng(1)
  images = jnp.asarray(rng.random((1, 8, 8, 1), np.float32))
  token_mask = jnp.ones((1, 2, 2), bool)
  target = np.asarray(mae.patchify(images, 4))
  normed = (target - target.mean(-1, keepdims=True)) / np.sqrt(
      target.var(-1, ddof=1, keepdims=True) + 1e-6)
  assert float(mae.masked_mse(jnp.asarray(normed), images, token_mask, 4, True)) < 1e-10
  assert float(mae.masked_mse(jnp.asarray(normed), images, token_mask, 4, False)) > 0.1


def test_padding_handles_maps_that_windows_do_not_divide():
  """320 px gives an 80x80 token grid: padded to 84 before windowing, cropped after."""
  block = swin.SwinBlock(dim=8, num_heads=2, window=7, shift=3)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 80, 80, 8))
  params = block.init(jax.random.PRNGKey(1), x)
  y = block.apply(params, x)
  assert y.shape == x.shape and bool(jnp.isfinite(y).all())


@pytest.mark.parametrize("token_multiple", [1, 2, 64])
def test_dot_product_attention_path_computes_the_einsum_path(token_multiple):
  """What a GPU hands cuDNN's fused kernel (jax.nn.dot_product_attention, windows zero-padded
  to even or 64 tokens, padded keys out through the key lengths) computes the einsum path's
  function, values and gradients (bias included); XLA's implementation stands in on CPU."""
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  q, k, v = (jax.random.normal(key, (2, 6, 49, 8)) for key in keys[:3])
  bias = jax.random.normal(keys[3], (6, 49, 49)) + jnp.where(
      jax.random.bernoulli(keys[4], 0.3, (6, 49, 49)), swin.SHIFT_MASK_VALUE, 0.0)
  weights = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 49, 8))

  def loss(implementation, multiple):
    return jax.value_and_grad(
        lambda *a: (swin.attend(*a, implementation, multiple) * weights).sum(),
        argnums=(0, 1, 2, 3))

  want, want_grads = loss("einsum", 1)(q, k, v, bias)
  got, got_grads = loss("xla", token_multiple)(q, k, v, bias)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_shifted_block_is_the_same_function_under_every_attention():
  """The model's attention option changes how, never what: same parameters, same outputs and
  relative-position-bias gradients on a padded, shifted map."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 18, 18, 8))
  einsum = swin.SwinBlock(dim=8, num_heads=2, window=7, shift=3)
  params = einsum.init(jax.random.PRNGKey(1), x)
  fused = swin.SwinBlock(dim=8, num_heads=2, window=7, shift=3, attention="xla")
  assert jax.tree.map(np.shape, fused.init(jax.random.PRNGKey(1), x)) == jax.tree.map(
      np.shape, params)

  def table_grad(model):
    return jax.jit(jax.grad(lambda p: (model.apply(p, x) ** 2).sum()))(params)["params"][
        "attn"]["relative_position_bias_table"]

  np.testing.assert_allclose(jax.jit(fused.apply)(params, x), jax.jit(einsum.apply)(params, x),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(table_grad(fused), table_grad(einsum), rtol=1e-4, atol=1e-5)


def test_a_remat_policy_recomputes_the_same_gradients():
  """The policy that keeps the Dense layers' outputs (whole-block remat, the default policy,
  runs in test_sparse_mae's command-line test)."""
  policy = "dots_with_no_batch_dims_saveable"
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 8))
  stages = [swin.SwinStage(8, 2, 2, 4, (0.0, 0.0), remat=remat) for remat in (None, policy)]
  params = stages[0].init(jax.random.PRNGKey(1), x)
  plain, recomputed = (jax.jit(jax.grad(lambda p, m=m: (m.apply(p, x) ** 2).sum()))(params)
                       for m in stages)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), plain,
               recomputed)
  jaxprs = [str(jax.make_jaxpr(lambda p, m=m: m.apply(p, x))(params)) for m in stages]
  assert "remat" not in jaxprs[0] and "remat" in jaxprs[1]


def test_stochastic_depth_drops_whole_residual_branches_per_sample():
  block = swin.SwinBlock(dim=8, num_heads=2, window=4, shift=0, drop_path=0.5)
  x = jax.random.normal(jax.random.PRNGKey(0), (64, 4, 4, 8))
  params = block.init(jax.random.PRNGKey(1), x)
  kept = block.apply(params, x)  # deterministic: nothing dropped
  dropped = block.apply(params, x, deterministic=False,
                        rngs={"dropout": jax.random.PRNGKey(2)})
  # Both branches dropped: the sample passes unchanged; the rest differ from `kept`.
  unchanged = np.all(np.isclose(dropped, x, atol=1e-6), axis=(1, 2, 3))
  assert 0.1 < unchanged.mean() < 0.45  # (1/2)^2 of the samples
  as_kept = np.all(np.isclose(dropped, kept, atol=1e-5), axis=(1, 2, 3))
  assert not as_kept.any()  # a kept branch is scaled by 1 / (1 - rate)


def test_models_name_their_activation_axes_and_parallel_maps_them():
  """No mesh inside a model: outside the rules its constraint is no constraint at all, under
  parallel.activation_sharding it pins activations to the batch layout of the run's mesh."""
  x = jnp.ones((8, 8, 8, 4))
  assert swin.name_axes(x) is x
  mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": -1}))
  model = swin.SwinBlock(dim=4, num_heads=1, window=4, shift=2)
  params = model.init(jax.random.PRNGKey(0), x)
  apply = jax.jit(model.apply)
  assert "sharding_constraint" not in apply.lower(params, x).as_text()
  with parallel.activation_sharding(mesh):
    text = apply.lower(params, x).as_text()
  assert "sharding_constraint" in text and "fsdp" in text
  assert nn.get_logical_axis_rules() == ()  # the rules end with the context


def test_gelu_is_the_exact_erf_form():
  x = jnp.linspace(-6, 6, 101)
  np.testing.assert_allclose(swin.gelu(x), jax.nn.gelu(x, approximate=False), atol=1e-6)
  assert math.isclose(float(swin.gelu(jnp.float32(1.0))), 0.8413447, rel_tol=1e-6)
