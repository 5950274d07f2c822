"""SelfMedMAE's models: the 2D/3D ViT MAE, UNETR and the ViT classifier, and the transfer of
the MAE's encoder into the fine-tuning models by name. Tiny widths throughout."""
import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import param_shapes, plausible_values, random_values
from vismae_jax.convert import transfer
from vismae_jax.models import conv_blocks, mae, unetr, vit

TINY = dict(embed_dim=32, depth=4, num_heads=2)
TINY_MAE = dict(TINY, decoder_dim=16, decoder_depth=1, decoder_heads=2)


def flat(params):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")


# Compiling dominates these tests (tiny inputs, a few runs): without XLA's backend
# optimisations it takes half the time on CPU.
quick_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def plausible_params(model, *inputs):
  """Parameters of an initialised model's scale: a compiled init would take longer than the
  tests (seconds per random draw on CPU)."""
  return plausible_values(param_shapes(model, *inputs))


def test_sincos_2d_is_maes_table():
  """MAE's formula position by position: the first half of the channels encodes the column,
  the second the row, each as sin(pos * omega) then cos(pos * omega)."""
  rows, cols, dim = 3, 5, 16
  omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4))
  expected = [np.concatenate([np.sin(c * omega), np.cos(c * omega),
                              np.sin(r * omega), np.cos(r * omega)])
              for r in range(rows) for c in range(cols)]
  table = vit.sincos_position_embedding((rows, cols), dim)
  assert table.shape == (1, rows * cols, dim)
  np.testing.assert_allclose(table[0], np.array(expected), atol=1e-6)


def test_sincos_3d_rows_distinct_and_bounded():
  table = vit.sincos_position_embedding((2, 3, 4), 32)
  assert table.shape == (1, 24, 32)
  assert len(np.unique(table[0], axis=0)) == 24
  assert np.abs(table).max() <= 1.0
  # Parts of 12 (last axis), 10, 10 channels: the first axis' part is cos(0) = 1 at depth 0.
  np.testing.assert_allclose(table[0, :12, 27:], 1.0)
  for grid, dim in [((2, 3, 4), 31), ((2, 3, 4), 4)]:
    with pytest.raises(ValueError, match="even dim >= 6"):
      vit.sincos_position_embedding(grid, dim)


def test_random_masking_keeps_exact_counts_and_inverts():
  keep, mask, restore = vit.random_masking(jax.random.key(0), 4, 20, 0.75)
  keep, mask, restore = map(np.asarray, (keep, mask, restore))
  assert keep.shape == (4, 5) and mask.shape == restore.shape == (4, 20)
  assert (mask.sum(1) == 15).all()
  assert len({tuple(k) for k in keep}) == 4  # a different draw per sample
  for k, m, r in zip(keep, mask, restore):
    assert not m[k].any()
    shuffle = np.argsort(r)
    np.testing.assert_array_equal(shuffle[:5], k)
    np.testing.assert_array_equal(r[shuffle], np.arange(20))
  keep, mask, _ = vit.random_masking(jax.random.key(1), 2, 20, 0.99)
  assert keep.shape == (2, 1) and (np.asarray(mask).sum(1) == 19).all()


def test_patchify_round_trips_in_2d_and_3d():
  rng = np.random.default_rng(0)
  images = rng.standard_normal((2, 8, 12, 3)).astype(np.float32)
  patches = vit.patchify(images, 4)
  np.testing.assert_array_equal(patches, np.asarray(mae.patchify(images, 4)).reshape(2, 6, 48))
  np.testing.assert_array_equal(vit.unpatchify(patches, (2, 3), 4), images)
  volumes = rng.standard_normal((2, 8, 4, 12, 2)).astype(np.float32)
  patches = vit.patchify(volumes, (4, 2, 3))
  assert patches.shape == (2, 2 * 2 * 4, 4 * 2 * 3 * 2)
  # Token 1 is grid cell (0, 0, 1), flattened as (depth, row, col, channel).
  np.testing.assert_array_equal(patches[:, 1], volumes[:, :4, :2, 3:6].reshape(2, -1))
  np.testing.assert_array_equal(vit.unpatchify(patches, (2, 2, 4), (4, 2, 3)), volumes)


def test_masked_patch_loss_by_hand():
  """Four 2x2 patches, two masked: only those count; with norm_pix a zero prediction costs
  (p - 1) / p of a standardised patch (unbiased variance) whatever the pixels."""
  images = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1) ** 2
  mask = np.array([[True, False, False, True]])
  pred = np.zeros((1, 4, 4), np.float32)
  pred[0, 1:3] = 100.0  # the visible patches' predictions are ignored
  raw = vit.patchify(images, 2)[0]
  expected = (np.mean(raw[0] ** 2) + np.mean(raw[3] ** 2)) / 2
  np.testing.assert_allclose(vit.masked_patch_loss(pred, images, mask, 2, False), expected,
                             rtol=1e-6)
  np.testing.assert_allclose(vit.masked_patch_loss(pred, images, mask, 2), 0.75, rtol=1e-5)


def test_block_attention_and_drop_path():
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  block = vit.Block(8, 2, drop_path=1.0)
  params = {"params": plausible_params(block, x)}
  out = quick_jit(block.apply)(params, x)
  xla = quick_jit(vit.Block(8, 2, attention="xla").apply)(params, x)
  np.testing.assert_allclose(xla, out, atol=1e-5)
  # Training, a branch dropped at rate 1 leaves the input as it is.
  dropped = quick_jit(block.apply, static_argnums=2)(params, x, False,
                                                    rngs={"dropout": jax.random.key(2)})
  np.testing.assert_array_equal(dropped, x)


def test_mae_encoder_runs_on_visible_tokens_only():
  """The encoder's blocks see the class token and the kept tokens, nothing else, so what the
  masked patches hold changes no prediction."""
  model = vit.ViTMAE(patch_size=8, cls_token=True, **TINY_MAE)
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 1))
  masking = vit.random_masking(jax.random.key(1), 2, 16, 0.75)
  params = {"params": plausible_params(model, images, masking)}
  assert not any("pos" in name for name in flat(params))
  apply = quick_jit(functools.partial(model.apply, capture_intermediates=True))
  (pred, mask), state = apply(params, images, masking)
  assert pred.shape == (2, 16, 64) and pred.dtype == jnp.float32
  np.testing.assert_array_equal(mask, masking[1])
  assert state["intermediates"]["encoder"]["blocks_0"]["__call__"][0].shape == (2, 1 + 4, 32)
  noise = jax.random.normal(jax.random.key(3), (2, 16, 64))
  patches = jnp.where(mask[..., None], noise, vit.patchify(images, 8))
  (changed, _), _ = apply(params, vit.unpatchify(patches, (4, 4), 8), masking)
  np.testing.assert_allclose(changed, pred, atol=1e-6)


def test_mae_3d_shapes_with_anisotropic_patch():
  model = vit.ViTMAE(patch_size=(8, 4, 4), **TINY_MAE)
  volumes = jnp.zeros((2, 16, 16, 16, 2))
  (pred, mask), params = jax.eval_shape(model.init_with_output, jax.random.key(0), volumes,
                                        jax.random.key(1))
  assert pred.shape == (2, 2 * 4 * 4, 8 * 4 * 4 * 2) and mask.shape == (2, 32)
  assert params["params"]["encoder"]["patch_embed"]["proj"]["kernel"].shape == (8, 4, 4, 2, 32)


def test_classifier_pools_to_logits():
  images = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
  for cls_token in (False, True):
    model = vit.ViTClassifier(patch_size=8, cls_token=cls_token, num_classes=3, **TINY)
    logits = quick_jit(model.apply)({"params": plausible_params(model, images)}, images)
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    assert np.isfinite(logits).all()


def test_tap_blocks_are_monais_and_end_at_the_last_block():
  """MONAI's UNETR taps hidden_states_out[3], [6], [9] of 12 blocks (1-based: 4, 7, 10)."""
  assert unetr.tap_blocks(12) == (4, 7, 10, 12)
  assert unetr.tap_blocks(24) == (7, 13, 19, 24)
  assert unetr.tap_blocks(8) == (3, 5, 7, 8)
  assert unetr.tap_blocks(4) == (2, 3, 4, 4)
  with pytest.raises(ValueError, match="4 taps need at least 4 blocks"):
    unetr.tap_blocks(3)


def test_unetr_output_shapes():
  model = unetr.UNETR(feature_size=4, num_classes=3, **TINY)
  images = jnp.zeros((2, 64, 64, 1))
  logits, _ = jax.eval_shape(model.init_with_output, jax.random.key(0), images)
  assert logits.shape == (2, 64, 64, 3) and logits.dtype == jnp.float32
  volumes = jax.random.normal(jax.random.key(0), (1, 32, 32, 32, 2))
  logits = quick_jit(model.apply)({"params": plausible_params(model, volumes)}, volumes)
  assert logits.shape == (1, 32, 32, 32, 3) and logits.dtype == jnp.float32
  assert np.isfinite(logits).all()


@pytest.mark.parametrize("patch", [12, (8, 16), 2])
def test_unetr_rejects_patches_that_are_not_one_power_of_two(patch):
  with pytest.raises(ValueError, match="a power of two >= 4"):
    jax.eval_shape(unetr.UNETR(**{**TINY, "patch_size": patch}).init, jax.random.key(0),
                   jnp.ones((1, 48, 48, 1)))


def test_unetr_with_a_patch_of_8_taps_three_blocks_and_decodes_from_an_eighth():
  """A patch of 2^k: k - 1 taps besides the last, decoders named from k + 1 down to 2."""
  model = unetr.UNETR(feature_size=4, num_classes=3, **{**TINY, "patch_size": 8})
  volumes = jnp.zeros((1, 16, 24, 16, 1))
  logits, variables = jax.eval_shape(model.init_with_output, jax.random.key(0), volumes)
  assert logits.shape == (1, 16, 24, 16, 3)
  heads = {k for k in variables["params"] if k != "encoder"}
  assert heads == {"encoder1", "encoder2", "encoder3", "decoder4", "decoder3", "decoder2", "out"}
  # encoder2 starts at the token grid (1/8) and doubles twice to 1/2, with 2F channels.
  assert variables["params"]["encoder2"]["transp_conv_0"]["kernel"].shape[-1] == 8
  assert "transp_conv_1" not in variables["params"]["encoder2"]


def test_unetr_gradient_reaches_every_parameter():
  model = unetr.UNETR(feature_size=4, cls_token=True, **TINY)
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 1))
  params = plausible_params(model, images)
  weights = jax.random.normal(jax.random.key(2), (2, 32, 32, 2))
  grads = quick_jit(jax.grad(lambda p: (model.apply({"params": p}, images) * weights).sum()))(
      params)
  dead = [name for name, g in flat(grads).items() if not np.abs(g).max() > 0]
  assert not dead


def mae_and_target(target_cls, **target_kw):
  source_model = vit.ViTMAE(patch_size=16, cls_token=target_kw.get("cls_token", False),
                            **TINY_MAE)
  images = jnp.zeros((1, 32, 32, 1))
  source = random_values(param_shapes(source_model, images, jax.random.key(0)), seed=1)
  target = random_values(param_shapes(target_cls(patch_size=16, **TINY, **target_kw), images),
                         seed=2)
  return source, target


@pytest.mark.parametrize("target_cls, target_kw", [
    (unetr.UNETR, dict(feature_size=4)), (vit.ViTClassifier, dict(cls_token=True))],
    ids=["unetr", "classifier"])
def test_transfer_by_name_loads_the_whole_encoder(target_cls, target_kw):
  source, target = mae_and_target(target_cls, **target_kw)
  params, report = transfer.transfer_by_name(source, target)
  src, tgt, out = flat(source), flat(target), flat(params)
  encoder = sorted(n for n in tgt if n.startswith("encoder/"))
  assert sorted(report.loaded) == encoder == sorted(n for n in src if n.startswith("encoder/"))
  assert ("encoder/cls_token" in encoder) == target_kw.get("cls_token", False)
  assert sorted(report.new) == sorted(n for n in tgt if not n.startswith("encoder/"))
  assert sorted(report.unused) == sorted(n for n in src if n.startswith("decoder/"))
  assert report.filled == []
  for name in encoder:
    np.testing.assert_array_equal(out[name], src[name])
  for name in report.new:
    np.testing.assert_array_equal(out[name], tgt[name])
  assert f"{'loaded':<30}{len(encoder):>7}" in report.table()


def test_transfer_by_name_fails_naming_mismatched_tensors():
  source, _ = mae_and_target(unetr.UNETR)
  target = param_shapes(unetr.UNETR(patch_size=16, embed_dim=48, depth=4, num_heads=2),
                        jnp.zeros((1, 32, 32, 1)))
  with pytest.raises(transfer.TransferError,
                     match=r"encoder/patch_embed/proj/kernel: checkpoint \(16, 16, 1, 32\) vs "
                     r"model \(16, 16, 1, 48\)"):
    transfer.transfer_by_name(source, target)


def test_adamw_steps_lower_the_3d_mae_loss():
  model = vit.ViTMAE(patch_size=8, mask_ratio=0.5, **dict(TINY_MAE, depth=2))
  volumes = jax.random.uniform(jax.random.key(0), (2, 16, 16, 16, 1))
  params = plausible_params(model, volumes, jax.random.key(2))
  tx = optax.adamw(3e-3, weight_decay=0.05)

  def loss_fn(p, rng):
    pred, mask = model.apply({"params": p}, volumes, rng)
    return vit.masked_patch_loss(pred, volumes, mask, 8, norm_pix_loss=False)

  @quick_jit
  def step(p, opt_state, rng):
    loss, grads = jax.value_and_grad(loss_fn)(p, rng)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  opt_state, losses = tx.init(params), []
  for i in range(8):
    params, opt_state, loss = step(params, opt_state, jax.random.key(10 + i))
    losses.append(float(loss))
  assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 3, 2, 4, 5)], ids=["2d", "3d"])
def test_up_is_flax_transposed_convolution_with_kernel_equal_to_stride(shape):
  """conv_blocks.Up computes nn.ConvTranspose(kernel = stride = 2, VALID) as a matrix product per
  voxel: the same parameters and values, on inputs whose voxels all differ."""
  x = jax.random.normal(jax.random.key(0), shape)
  n = len(shape) - 2
  reference = nn.ConvTranspose(6, (2,) * n, strides=(2,) * n, padding="VALID", use_bias=False)
  params = reference.init(jax.random.key(1), x)
  fast = conv_blocks.Up(6).apply(params, x)
  assert fast.shape == (shape[0], *(2 * s for s in shape[1:-1]), 6)
  np.testing.assert_allclose(fast, reference.apply(params, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,kernel,bias", [((2, 5, 6, 4, 3), 3, False),
                                               ((1, 4, 3, 5, 2), 1, True),
                                               ((2, 6, 5, 3), 3, True)],
                         ids=["3d_3x3x3", "3d_1x1x1", "2d_3x3"])
def test_conv_is_flax_convolution(shape, kernel, bias):
  """conv_blocks.Conv computes nn.Conv (stride 1, SAME) with the same parameters and gradients:
  in 3D as one 2D convolution over the depth slices, on inputs whose voxels all differ."""
  x = jax.random.normal(jax.random.key(0), shape)
  n = len(shape) - 2
  reference = nn.Conv(7, (kernel,) * n, use_bias=bias, bias_init=nn.initializers.normal(1.0))
  params = reference.init(jax.random.key(1), x)
  fast = conv_blocks.Conv(7, kernel, use_bias=bias)
  assert jax.tree.map(jnp.shape, fast.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape,
                                                                                  params)
  np.testing.assert_allclose(fast.apply(params, x), reference.apply(params, x), rtol=1e-5,
                             atol=1e-5)
  # Gradients too (conv3d's own kernel gradient), for a loss that weighs every output apart.
  weights = jax.random.normal(jax.random.key(2), x.shape[:-1] + (7,))
  loss = lambda model: lambda p, x: (model.apply(p, x) * weights).sum()
  ours, theirs = (jax.grad(loss(m), argnums=(0, 1))(params, x) for m in (fast, reference))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), ours, theirs)
