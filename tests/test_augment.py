"""On-device augmentation: deterministic from the key, joint image/mask geometry, identities."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from vismae_jax import augment


def blocks(b=6, size=32):
  rng = np.random.default_rng(0)
  images = np.zeros((b, size, size, 1), np.float32)
  for i in range(b):
    y, x = rng.integers(2, size // 2, 2)
    images[i, y:y + 10, x:x + 6] = 1.0
  return jnp.asarray(images), jnp.asarray(images[..., 0] > 0.5, jnp.int32)


def test_segmentation_augment_moves_image_and_mask_together_deterministically():
  images, masks = blocks()
  step = jax.jit(augment.segmentation_augment)
  out_images, out_masks = step(jax.random.PRNGKey(3), images, masks)
  again = step(jax.random.PRNGKey(3), images, masks)
  np.testing.assert_array_equal(out_images, again[0])
  assert out_masks.dtype == jnp.int32 and set(np.unique(out_masks)) <= {0, 1}
  changed = np.mean(np.asarray(out_masks) != np.asarray(masks))
  assert changed > 0.01  # the geometry did something
  agreement = np.mean((np.asarray(out_images[..., 0]) > 0.5) == np.asarray(out_masks, bool))
  assert agreement > 0.98  # the mask followed the image


def test_quarter_turns_alone_are_exact_rotations():
  images, masks = blocks()
  out_images, out_masks = augment.segmentation_augment(
      jax.random.PRNGKey(1), images, masks, flip=False, max_rotate=0.0, max_translate=0.0,
      scale=(1.0, 1.0), max_shear=0.0)
  for i in range(images.shape[0]):
    candidates = [np.rot90(np.asarray(masks[i]), k) for k in range(4)]
    assert any(np.array_equal(out_masks[i], c) for c in candidates)
    np.testing.assert_allclose(out_images[i, ..., 0], out_masks[i], atol=1e-4)


def test_random_resized_crop_full_area_is_identity_and_crops_zoom_in():
  images, _ = blocks()
  same = augment.random_resized_crop(jax.random.PRNGKey(0), images, scale=(1.0, 1.0),
                                     ratio=(1.0, 1.0))
  np.testing.assert_allclose(same, images, atol=1e-5)
  zoomed = augment.random_resized_crop(jax.random.PRNGKey(0), images, scale=(0.25, 0.25),
                                       ratio=(1.0, 1.0))
  assert zoomed.shape == images.shape
  assert float(jnp.mean(zoomed > 0.5)) != float(jnp.mean(images > 0.5))


def test_hflip_flips_about_half():
  images = jnp.arange(64 * 4 * 4, dtype=jnp.float32).reshape(64, 4, 4, 1)
  out = augment.random_hflip(jax.random.PRNGKey(0), images)
  flipped = [bool(jnp.all(out[i] == images[i, :, ::-1])) for i in range(64)]
  assert 20 < sum(flipped) < 44


def symmetries(volume, planes):
  """Every flip (along any axes) followed by quarter turns in `planes`, of one (X, Y, Z, ...)
  array: what volume_augment may return for it."""
  out = []
  for flips in itertools.product((False, True), repeat=3):
    flipped = np.flip(volume, [a for a in range(3) if flips[a]])
    turned = [flipped]
    for plane in planes:
      turned = [np.rot90(t, k, axes=plane) for t in turned for k in range(4)]
    out += turned
  return out


def volumes(shape, b=6):
  images = np.random.default_rng(0).random((b, *shape, 1)).astype(np.float32)
  return jnp.asarray(images), jnp.asarray(images[..., 0] > 0.6, jnp.uint8)


def test_volume_augment_moves_masks_with_images_and_turns_only_equal_planes():
  geometry = functools.partial(augment.volume_augment, scale=0.0, shift=0.0)
  for shape, planes in [((6, 6, 4), [(0, 1)]), ((4, 6, 6), [(1, 2)]),
                        ((5, 5, 5), [(0, 1), (0, 2), (1, 2)])]:
    images, masks = volumes(shape)
    out_images, out_masks = jax.jit(geometry)(jax.random.PRNGKey(0), images, masks)
    assert out_images.shape == images.shape and out_masks.shape == masks.shape
    assert out_masks.dtype == jnp.uint8
    np.testing.assert_array_equal(out_masks, np.asarray(out_images[..., 0] > 0.6))
    turned = 0
    for i in range(len(images)):
      flips_only = symmetries(np.asarray(images[i]), [])
      allowed = symmetries(np.asarray(images[i]), planes)
      assert any(np.array_equal(out_images[i], a) for a in allowed)
      turned += not any(np.array_equal(out_images[i], a) for a in flips_only)
    assert turned > 0  # quarter turns happened, within the allowed planes only


def test_volume_augment_is_deterministic_per_key_and_scales_and_shifts_intensities():
  images, masks = volumes((4, 5, 6), b=16)
  step = jax.jit(augment.volume_augment)
  first, again, other = (step(jax.random.PRNGKey(k), images, masks) for k in (1, 1, 2))
  np.testing.assert_array_equal(first[0], again[0])
  np.testing.assert_array_equal(first[1], again[1])
  assert not np.array_equal(first[0], other[0])
  out, none = augment.volume_augment(jax.random.PRNGKey(3), images, flip=False, rotate90=False)
  assert none is None
  flat, out = np.asarray(images).reshape(16, -1), np.asarray(out).reshape(16, -1)
  gain = (out[:, 1] - out[:, 0]) / (flat[:, 1] - flat[:, 0])
  offset = out[:, 0] - gain * flat[:, 0]
  np.testing.assert_allclose(out, gain[:, None] * flat + offset[:, None], atol=1e-5)
  assert np.all(np.abs(gain - 1) <= 0.1 + 1e-5) and np.all(np.abs(offset) <= 0.1 + 1e-5)
  assert np.std(gain) > 0.02 and np.std(offset) > 0.02  # one draw per example
