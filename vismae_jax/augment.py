"""Data augmentation on the device: jitted, batched, deterministic from the step's key.

The host hands over uint8 bytes; every transform here acts on (B, H, W, C) float batches inside
the train step, with one key per image split from the step's key, so a replayed step draws the
same crops, flips and rotations.

Pretraining: random resized crop (MAE-style scale and aspect ranges) and horizontal flips;
SimCLR's and DINO's views add brightness and contrast jitter and Gaussian blur
(`contrastive_view`).
Segmentation: the same random geometry applied to image and mask together: flips, 90-degree
rotations, and an affine map (rotation, translation, scale, shear), bilinear for images and
nearest-neighbour for masks so labels stay labels.
Volumes (3D segmentation, `volume_augment`): flips along each axis and quarter turns, which
need no resampling, then intensity scale and shift, as the UNETR recipe's MONAI transforms.
"""
import jax
import jax.numpy as jnp
from jax.scipy import ndimage


def random_hflip(rng, images):
  """Flips each image of the batch left-right with probability 1/2."""
  flip = jax.random.bernoulli(rng, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def random_resized_crop(rng, images, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), size=None):
  """Crops a random area fraction in `scale` with aspect in `ratio`, resized back to H x W (or
  to size x size: DINO's local crops)."""
  b, h, w, c = images.shape
  out_h, out_w = (size, size) if size else (h, w)
  k_area, k_ratio, k_y, k_x = jax.random.split(rng, 4)
  area = jax.random.uniform(k_area, (b,), minval=scale[0], maxval=scale[1])
  log_r = jax.random.uniform(k_ratio, (b,), minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1]))
  aspect = jnp.exp(log_r)
  crop_h = jnp.clip(jnp.sqrt(area / aspect) * h, 1.0, h)
  crop_w = jnp.clip(jnp.sqrt(area * aspect) * w, 1.0, w)
  top = jax.random.uniform(k_y, (b,)) * (h - crop_h)
  left = jax.random.uniform(k_x, (b,)) * (w - crop_w)

  def crop(image, ch, cw, y0, x0):
    s = jnp.array([out_h / ch, out_w / cw])
    return jax.image.scale_and_translate(image, (out_h, out_w, c), (0, 1), s,
                                         -jnp.array([y0, x0]) * s, "linear", antialias=True)
  return jax.vmap(crop)(images, crop_h, crop_w, top, left)


def random_gaussian_blur(rng, images, prob: float, sigma=(0.1, 2.0)):
  """Blurs each image with probability `prob`, with its own sigma (px) drawn from `sigma`.

  Separable, over a kernel of ~10% of the side as in SimCLR, edges replicated. The kernel's
  taps are fixed by the image size, so one program serves every sigma.
  """
  b, h, w, _ = images.shape
  k_do, k_sigma = jax.random.split(rng)
  radius = max(1, h // 20)
  sigmas = jax.random.uniform(k_sigma, (b,), minval=sigma[0], maxval=sigma[1])
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  weights = jnp.exp(-0.5 * (taps / sigmas[:, None]) ** 2)
  weights = (weights / weights.sum(-1, keepdims=True))[:, None, None, None]  # (B, 1, 1, 1, K)

  def blur(x, axis):
    pad = [(0, 0)] * 4
    pad[axis] = (radius, radius)
    x = jnp.pad(x, pad, mode="edge")
    n = x.shape[axis] - 2 * radius
    shifted = jnp.stack([jax.lax.slice_in_dim(x, k, k + n, axis=axis)
                         for k in range(2 * radius + 1)], -1)
    return (shifted * weights).sum(-1)
  blurred = blur(blur(images, 1), 2)
  do = jax.random.bernoulli(k_do, prob, (b,))[:, None, None, None]
  return jnp.where(do, blurred, images)


def random_intensity(rng, images, brightness: float, contrast: float):
  """Grey-level jitter: each image scaled by a factor in [1 - brightness, 1 + brightness], and
  its contrast about its mean by one in [1 - contrast, 1 + contrast] (torchvision's brightness
  and contrast, for images in [0, 1], unclamped; SimCLR's saturation and hue need colour)."""
  b = images.shape[0]
  k_b, k_c = jax.random.split(rng)
  gain = jax.random.uniform(k_b, (b, 1, 1, 1), minval=1 - brightness, maxval=1 + brightness)
  spread = jax.random.uniform(k_c, (b, 1, 1, 1), minval=1 - contrast, maxval=1 + contrast)
  images = images * gain
  mean = images.mean(axis=(1, 2, 3), keepdims=True)
  return (images - mean) * spread + mean


def contrastive_view(rng, images, *, crop_scale, hflip: bool, brightness: float,
                     contrast: float, blur_prob: float, blur_sigma, size=None):
  """One SimCLR or DINO view of each image: random resized crop (to `size` px, else the
  input's), flip, intensity jitter, blur."""
  k_crop, k_flip, k_intensity, k_blur = jax.random.split(rng, 4)
  images = random_resized_crop(k_crop, images, scale=tuple(crop_scale), size=size)
  if hflip:
    images = random_hflip(k_flip, images)
  images = random_intensity(k_intensity, images, brightness, contrast)
  return random_gaussian_blur(k_blur, images, blur_prob, tuple(blur_sigma))


def _affine_matrices(rng, b, rotate90, max_rotate, max_translate, scale, max_shear):
  """(B, 2, 2) output->input linear maps and (B, 2) translations (fractions of the side)."""
  k = jax.random.split(rng, 5)
  angle = jnp.deg2rad(jax.random.uniform(k[0], (b,), minval=-max_rotate, maxval=max_rotate))
  if rotate90:  # quarter turns folded into the same warp: one resampling in all
    angle += jax.random.randint(k[4], (b,), 0, 4) * (jnp.pi / 2)
  shear = jnp.deg2rad(jax.random.uniform(k[1], (b,), minval=-max_shear, maxval=max_shear))
  zoom = jax.random.uniform(k[2], (b,), minval=scale[0], maxval=scale[1])
  shift = jax.random.uniform(k[3], (b, 2), minval=-max_translate, maxval=max_translate)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  rotation = jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], -2)
  shearing = jnp.stack([jnp.stack([jnp.ones(b), jnp.tan(shear)], -1),
                        jnp.stack([jnp.zeros(b), jnp.ones(b)], -1)], -2)
  forward = rotation @ shearing * zoom[:, None, None]
  return jnp.linalg.inv(forward), shift


def _warp(image, inverse, shift, order):
  """Samples image (H, W, C) at inverse(output - centre - shift) + centre, zeros outside."""
  h, w, _ = image.shape
  centre = jnp.array([(h - 1) / 2, (w - 1) / 2])
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing="ij")
  out = jnp.stack([yy, xx]).reshape(2, -1) - (centre + shift * jnp.array([h, w]))[:, None]
  src = inverse @ out + centre[:, None]
  channel = lambda c: ndimage.map_coordinates(image[..., c], [src[0], src[1]], order=order,
                                              mode="constant", cval=0.0).reshape(h, w)
  return jnp.stack([channel(c) for c in range(image.shape[-1])], -1)


def segmentation_augment(rng, images, masks, *, flip=True, rotate90=True, max_rotate=15.0,
                         max_translate=0.1, scale=(0.9, 1.1), max_shear=5.0):
  """The same random geometry for (B, H, W, C) images and (B, H, W) integer masks (H == W)."""
  b = images.shape[0]
  k_flip, k_affine = jax.random.split(rng)
  masks = masks[..., None].astype(jnp.float32)
  if flip:
    do = jax.random.bernoulli(k_flip, 0.5, (b,))[:, None, None, None]
    images, masks = (jnp.where(do, x[:, :, ::-1], x) for x in (images, masks))
  inverse, shift = _affine_matrices(k_affine, b, rotate90, max_rotate, max_translate, scale,
                                    max_shear)
  images = jax.vmap(lambda x, a, t: _warp(x, a, t, order=1))(images, inverse, shift)
  masks = jax.vmap(lambda x, a, t: _warp(x, a, t, order=0))(masks, inverse, shift)
  return images, jnp.round(masks[..., 0]).astype(jnp.int32)


def _random_quarter_turns(rng, x, axes):
  """Each example of x turned k times (k uniform in 0..3, one draw per example) in the plane
  of `axes`, whose lengths are equal so every k gives the same shape."""
  k = jax.random.randint(rng, (x.shape[0],), 0, 4).reshape((-1,) + (1,) * (x.ndim - 1))
  turned = x
  for n in range(1, 4):
    turned = jnp.where(k == n, jnp.rot90(x, n, axes=axes), turned)
  return turned


def volume_augment(rng, images, masks=None, *, flip=True, rotate90=True, scale=0.1, shift=0.1):
  """Random flips and quarter turns of (B, X, Y, Z, C) volumes and their (B, X, Y, Z) integer
  masks together, then intensity scale and shift of the images alone; masks may be None.

  Flips along each spatial axis with probability 1/2 and quarter turns in every plane whose two
  axes have equal lengths (only those: shapes never change), per example: MONAI's RandFlip and
  RandRotate90 of the UNETR recipe, exact (no interpolation), so labels stay labels.
  Intensities as MONAI's RandScaleIntensity and RandShiftIntensity: x * (1 + U(-scale, scale))
  + U(-shift, shift), the shift in the normalised image's own units (not times its std), per
  example.
  Returns (images, masks), masks in their own dtype (None without masks).
  """
  b, *spatial, channels = images.shape
  per_example = (b,) + (1,) * (images.ndim - 1)  # one draw broadcast over an example
  k_flip, k_turn, k_scale, k_shift = jax.random.split(rng, 4)
  joint = images if masks is None else jnp.concatenate(
      [images, masks[..., None].astype(images.dtype)], -1)  # one geometry for both
  if flip:
    do = jax.random.bernoulli(k_flip, 0.5, (len(spatial), b))
    for axis in range(len(spatial)):
      joint = jnp.where(do[axis].reshape(per_example), jnp.flip(joint, axis + 1), joint)
  if rotate90:
    planes = [(i + 1, j + 1) for i in range(len(spatial)) for j in range(i + 1, len(spatial))
              if spatial[i] == spatial[j]]
    for plane, key in zip(planes, jax.random.split(k_turn, len(planes))):
      joint = _random_quarter_turns(key, joint, plane)
  images = joint[..., :channels]
  gain = 1 + jax.random.uniform(k_scale, per_example, minval=-scale, maxval=scale)
  offset = jax.random.uniform(k_shift, per_example, minval=-shift, maxval=shift)
  images = (images * gain + offset).astype(images.dtype)
  if masks is None:
    return images, None
  return images, jnp.round(joint[..., channels]).astype(masks.dtype)
