"""The sparse ("uniform") masking: what the encoder sees, how units line up through the merges,
what it saves, and that everything the dense mode does works with it."""
import functools
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import (assert_export_loads_and_fills_the_unet, in_parallel, load_config,
                     read_metrics, run_main)
from vismae_jax.models import mae
from vismae_jax.train import masked_image, pretrain

TINY = dict(in_chans=1, embed_dim=16, depths=(2, 1, 1, 1), decoder_depths=(1, 1, 1),
            num_heads=(1, 1, 2, 2), window=4)


def test_one_unit_of_every_block_is_kept_and_a_quarter_of_those_is_hidden_again():
  kept, hidden = mae.uniform_mask(jax.random.PRNGKey(0), 16, 14, 0.25)
  blocks = np.asarray(kept).reshape(16, 7, 2, 7, 2)
  assert (blocks.sum(axis=(2, 4)) == 1).all()
  assert (np.asarray(hidden) | np.asarray(kept)).all()  # only kept units can be seen
  hidden_again = (np.asarray(kept) & np.asarray(hidden)).sum(axis=(1, 2))
  assert (hidden_again == 49 - int(49 * 0.75)).all()  # window_mask's count
  offsets = blocks.transpose(0, 1, 3, 2, 4).reshape(-1, 4).argmax(-1)
  assert (np.bincount(offsets, minlength=4) > 100).all()  # 784 blocks: every offset drawn
  _, nothing_more = mae.uniform_mask(jax.random.PRNGKey(0), 2, 14, 0.0)
  assert np.asarray(nothing_more).sum() == 2 * 147  # exactly 75%, as the release masks


def unit_ids(units: int, unit_px: int):
  """(1, H, W) image whose pixels hold their mask unit's number."""
  ids = np.arange(units * units, dtype=np.float32).reshape(units, units)
  return ids.repeat(unit_px, 0).repeat(unit_px, 1)[None]


def test_units_stay_whole_through_every_patch_merge():
  """224 px, 4 px patches, 16 px units: in the compacted image every stage-1 to stage-3 token
  lies inside one kept unit, and every stage-4 token joins kept units of four neighbouring
  blocks (the odd 7x7 unit grid padded), as models/mae.py describes."""
  kept, _ = mae.uniform_mask(jax.random.PRNGKey(3), 1, 14, 0.25)
  image = unit_ids(14, 16)
  compacted = np.asarray(mae.compact(jnp.asarray(image)[..., None], kept))[0, ..., 0]
  assert compacted.shape == (112, 112)
  kept_ids = set(np.flatnonzero(np.asarray(kept)[0]).tolist())
  for stage, token_px in enumerate((4, 8, 16)):  # a stage's token in pixels
    tokens = compacted.reshape(112 // token_px, token_px, 112 // token_px, token_px)
    assert (tokens.min(axis=(1, 3)) == tokens.max(axis=(1, 3))).all(), stage
    assert set(np.unique(tokens).astype(int).tolist()) <= kept_ids
  padded = np.pad(compacted, ((0, 16), (0, 16)), constant_values=-1)
  for row in range(4):
    for col in range(4):
      ids = {int(i) for i in np.unique(padded[32 * row:32 * row + 32, 32 * col:32 * col + 32])}
      blocks = {(i // 14 // 2, i % 14 // 2) for i in ids - {-1}}
      assert len(blocks) == len(ids - {-1}) and blocks <= {
          (2 * row + dr, 2 * col + dc) for dr in (0, 1) for dc in (0, 1)}
  # The decoder's way back: every kept unit at its own place, zeros elsewhere.
  back = np.asarray(mae.uncompact(jnp.asarray(compacted)[None, ..., None], kept))[0, ..., 0]
  place = mae.unit_mask_to_tokens(kept, 16)[0]
  np.testing.assert_array_equal(back, np.where(place, image[0], 0))


def tiny_inputs(batch=2, size=64, unit=8, secondary=0.25, seed=0):
  kept, hidden = mae.uniform_mask(jax.random.PRNGKey(seed), batch, size // unit, secondary)
  images = jax.random.normal(jax.random.PRNGKey(seed + 1), (batch, size, size, 1))
  return images, mae.unit_mask_to_tokens(hidden, unit // 4), kept, hidden


def test_the_sparse_encoder_sees_the_kept_unhidden_pixels_and_nothing_else():
  images, token_mask, kept, hidden = tiny_inputs()
  encoder = mae.SwinMAEEncoder(**TINY)
  params = jax.jit(mae.SwinMAE(**TINY).init)(jax.random.PRNGKey(0), images, token_mask)
  grad = jax.jit(jax.grad(lambda x: encoder.apply(params, x, token_mask, True, kept).sum()))(
      images)
  per_unit = np.abs(np.asarray(grad)[..., 0]).reshape(2, 8, 8, 8, 8).sum(axis=(2, 4))
  assert (per_unit[np.asarray(hidden)] == 0).all()
  assert (per_unit[~np.asarray(hidden)] > 0).all()


def test_the_sparse_encoder_is_the_dense_encoder_on_the_image_of_kept_units():
  """The equivalence that holds (with masking there is always something masked): the sparse
  encoder computes exactly what the release's encoder computes on the half-size image that the
  kept units make, built here by plain indexing."""
  images, token_mask, kept, _ = tiny_inputs()
  params = jax.jit(mae.SwinMAE(**TINY).init)(jax.random.PRNGKey(0), images, token_mask)
  encoder = mae.SwinMAEEncoder(**TINY)
  apply = jax.jit(encoder.apply, static_argnums=3)
  sparse = apply(params, images, token_mask, True, kept)
  rows, cols = np.nonzero(np.asarray(kept)[0])
  rows, cols = zip(*sorted(zip(rows, cols), key=lambda rc: (rc[0] // 2, rc[1] // 2)))
  pieces = [np.asarray(images)[0, 8 * r:8 * r + 8, 8 * c:8 * c + 8] for r, c in zip(rows, cols)]
  small = np.block([[pieces[4 * i + j][..., 0] for j in range(4)] for i in range(4)])
  mask_pieces = [np.asarray(token_mask)[0, 2 * r:2 * r + 2, 2 * c:2 * c + 2]
                 for r, c in zip(rows, cols)]
  small_mask = np.block([[mask_pieces[4 * i + j] for j in range(4)] for i in range(4)])
  dense = apply(params, small[None, ..., None], small_mask[None], True)
  np.testing.assert_allclose(sparse[:1], dense, rtol=1e-5, atol=1e-5)


def test_same_parameters_and_a_full_grid_of_predictions():
  images, token_mask, kept, _ = tiny_inputs()
  model = mae.SwinMAE(**TINY)
  key = jax.random.PRNGKey(0)
  dense = jax.eval_shape(model.init, key, images, token_mask)  # shapes: nothing to compile
  sparse = jax.eval_shape(functools.partial(model.init, kept_units=kept), key, images,
                          token_mask)
  assert jax.tree.map(jnp.shape, dense) == jax.tree.map(jnp.shape, sparse)
  predictions = jax.eval_shape(functools.partial(model.apply, kept_units=kept), dense, images,
                               token_mask)
  assert predictions.shape == (2, 16, 16, 16)


def forward_flops(model_class, config, kept: bool) -> float:
  model = masked_image.build_model(config, model_class)
  size = config.input.image_size
  images, token_mask, kept_units = masked_image.model_inputs(
      config, jnp.zeros((1, size, size), jnp.uint8), jax.random.PRNGKey(0), train=False)
  params = jax.eval_shape(lambda: masked_image.init_params(model, config, jax.random.PRNGKey(0)))
  cost = jax.jit(lambda p: model.apply({"params": p}, images, token_mask, True,
                                       kept_units if kept else None)).lower(params).cost_analysis()
  return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]


@pytest.mark.slow
def test_flops_fall_as_the_geometry_says():
  """The release's SwinMAE at 224 px: encoder 0.32x (stages 1-3 at a quarter of the tokens,
  stage 4 at 16 of 49 tokens, in its 7x7 padded window); with one decoder block per stage the
  whole forward pass under half."""
  config = load_config("generic.py", "")
  config.model.in_chans = 1
  dense = {c: forward_flops(c, config, False) for c in (mae.SwinMAEEncoder, mae.SwinMAE)}
  config.mae.masking = "uniform"
  sparse = forward_flops(mae.SwinMAEEncoder, config, True)
  assert sparse / dense[mae.SwinMAEEncoder] <= 0.35
  config.model.decoder_depths = (1, 1, 1)
  assert forward_flops(mae.SwinMAE, config, True) / dense[mae.SwinMAE] <= 0.5


@pytest.mark.slow
def test_sharded_bf16_remat_resume_export_and_transfer(tmp_path):
  """The dense mode's machinery on sparse pretraining: 8-device FSDP matches one device; a bf16,
  rematerialised, data-parallel run resumed from step 10 ends where the straight one ends; its
  checkpoint exports to the published layout and fills the Swin-UNet."""
  pytest.importorskip("torch")
  sparse = ["--config.mae.masking=uniform"]
  short = ["--config.total_steps=3", "--config.log_every=1"]
  runs = {"one": (sparse + short, 1),
          "fsdp": (sparse + short + ["--config.mesh.data=1", "--config.mesh.fsdp=8",
                                     "--config.mesh.fsdp_min_mb=0"], 8),
          "bf16": (sparse + ["--config.dtype=bfloat16", "--config.model.remat=True",
                             "--config.mesh.data=8"], 8)}
  in_parallel(lambda name: run_main(str(tmp_path / name), *runs[name][0], devices=runs[name][1]),
              runs)
  np.testing.assert_allclose([m["loss"] for m in read_metrics(tmp_path / "fsdp")],
                             [m["loss"] for m in read_metrics(tmp_path / "one")], rtol=2e-5)

  shutil.copytree(tmp_path / "bf16", tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "20")  # as if killed after step 10
  run_main(str(tmp_path / "resumed"), *runs["bf16"][0], devices=8)
  def logged(run):
    return [(m["step"], m["loss"]) for m in read_metrics(tmp_path / run)]
  assert logged("resumed") == logged("bf16")

  run_main(str(tmp_path / "bf16"), *runs["bf16"][0], "--config.task=export", devices=8)
  assert_export_loads_and_fills_the_unet(tmp_path / "bf16" / "export")


def test_the_figure_shows_what_the_encoder_saw():
  config = load_config("generic.py", "tiny")
  config.mae.masking = "uniform"
  model = pretrain.build_model(config)
  params = jax.jit(lambda rng: masked_image.init_params(model, config, rng))(
      jax.random.PRNGKey(0))
  images = np.random.default_rng(0).integers(0, 256, (2, 64, 64), np.uint8)
  rows = jax.jit(lambda p, x: masked_image.figure_rows(model, config, p, x, jax.random.PRNGKey(
      1)))(params, images)  # jitted, as pretrain.py draws it
  assert [r for r in masked_image.ROWS if r in rows] == list(masked_image.ROWS)
  # 64 px, 8 px units: 16 of 64 units kept, 4 of those hidden behind the mask token.
  assert np.isnan(rows["masked"]).mean() == pytest.approx(1 - 12 / 64)
  assert rows["encoder input"].shape == rows["original"].shape
  assert np.isnan(rows["encoder input"]).mean() == pytest.approx(4 / 16)
  assert np.isfinite(rows["reconstruction"]).all()
