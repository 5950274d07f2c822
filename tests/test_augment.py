"""On-device augmentation: deterministic from the key, joint image/mask geometry, identities."""
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
