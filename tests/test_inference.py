"""Sliding-window inference: exact where it must be (one window, pointwise models), the scan
covers every voxel, the importance map, padding, and one compilation for all batches."""
import itertools

import flax.linen as nn
import jax
import numpy as np
import pytest

from data_pipelines.volume_crops import pad_to_roi
from vismae_jax import inference


def pointwise_predict(channels=2, classes=3):
  """Softmax of a per-voxel linear map, jitted, and a counter of its traces: translation
  equivariant and without context, so every window agrees wherever windows overlap."""
  weights = np.random.default_rng(0).normal(size=(channels, classes)).astype(np.float32)
  traces = []

  @jax.jit
  def predict(x):
    traces.append(x.shape)
    return jax.nn.softmax(x @ weights, axis=-1)
  reference = lambda volume: np.asarray(jax.nn.softmax(volume @ weights, axis=-1))
  return predict, reference, traces


def volume(shape, channels=2, seed=1):
  return np.random.default_rng(seed).normal(size=(*shape, channels)).astype(np.float32)


def test_one_window_reproduces_the_whole_volume_forward_of_a_conv_net():
  net = nn.Sequential([nn.Conv(4, (3, 3, 3)), nn.relu, nn.Conv(3, (3, 3, 3)),
                       lambda x: nn.softmax(x, axis=-1)])
  x = volume((8, 8, 6))
  params = net.init(jax.random.PRNGKey(0), x[None])
  predict = jax.jit(lambda batch: net.apply(params, batch))
  out = inference.sliding_window_inference(predict, x, (8, 8, 6), batch=2)
  assert out.shape == (8, 8, 6, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, predict(x[None])[0], atol=1e-6)


def test_overlapping_windows_equal_a_pointwise_map_and_compile_once():
  predict, reference, traces = pointwise_predict()
  x = volume((21, 17, 9))
  roi = (8, 8, 8)
  assert len(inference.window_starts(x.shape[:3], roi, 0.5)) % 3  # a padded last batch
  out = inference.sliding_window_inference(predict, x, roi, overlap=0.5, batch=3)
  assert out.shape == (21, 17, 9, 3)
  np.testing.assert_allclose(out, reference(x), atol=1e-5)
  assert traces == [(3, 8, 8, 8, 2)]


def test_a_volume_smaller_than_the_roi_is_padded_and_cut_back():
  predict, reference, traces = pointwise_predict()
  x = volume((5, 12, 3))
  out = inference.sliding_window_inference(predict, x, (8, 8, 8), overlap=0.25, batch=2)
  assert out.shape == (5, 12, 3, 3)
  np.testing.assert_allclose(out, reference(x), atol=1e-5)
  padded, back = pad_to_roi(x, (8, 8, 8))
  assert padded.shape == (8, 12, 8, 2) and padded.min() == x.min()
  np.testing.assert_array_equal(padded[back], x)
  assert padded[0].min() == padded[0].max() == x.min()  # 3 voxels before (5 -> 8: 1 + 2)


def test_two_dimensional_images_work_the_same_way():
  predict, reference, _ = pointwise_predict()
  x = volume((30, 11))
  out = inference.sliding_window_inference(predict, x, (8, 8), overlap=0.5, batch=3)
  np.testing.assert_allclose(out, reference(x), atol=1e-5)


@pytest.mark.parametrize("shape,roi,overlap", [((21, 17, 9), (8, 8, 8), 0.5),
                                               ((96, 40), (32, 40), 0.25),
                                               ((10,), (4,), 0.9), ((3,), (8,), 0.5)])
def test_windows_cover_every_voxel_and_the_last_ends_flush(shape, roi, overlap):
  starts = inference.window_starts(shape, roi, overlap)
  covered = np.zeros([max(s, r) for s, r in zip(shape, roi)], bool)
  for start in starts:
    covered[tuple(slice(s, s + r) for s, r in zip(start, roi))] = True
  assert covered.all()
  for axis, (size, r) in enumerate(zip(shape, roi)):
    assert max(start[axis] for start in starts) == max(size - r, 0)
    steps = np.diff(sorted({start[axis] for start in starts}))
    assert np.all(steps <= max(int(r * (1 - overlap)), 1))
  assert len(starts) == len(set(starts))


def test_window_starts_follow_monai_steps():
  assert inference.window_starts((20,), (8,), 0.5) == [(0,), (4,), (8,), (12,)]
  assert inference.window_starts((21,), (8,), 0.5) == [(0,), (4,), (8,), (12,), (13,)]
  assert inference.window_starts((8, 5), (8, 8), 0.5) == [(0, 0)]


def test_gaussian_importance_is_a_symmetric_positive_bump_with_maximum_one():
  for roi in [(9, 8, 6), (16, 16)]:
    g = inference.gaussian_importance(roi)
    assert g.shape == roi and g.dtype == np.float32
    assert g.max() == pytest.approx(1.0) and g.min() >= 1e-3
    for axis in range(len(roi)):
      np.testing.assert_allclose(g, np.flip(g, axis), rtol=1e-6)
  g = inference.gaussian_importance((9, 9, 9), sigma_scale=0.125)
  assert g[4, 4, 4] == 1.0
  assert g[4, 4, 5] == pytest.approx(np.exp(-0.5 / 1.125 ** 2), rel=1e-5)  # sigma 9/8
  assert g[0, 0, 0] == pytest.approx(1e-3)  # the floor
  corners = [g[idx] for idx in itertools.product((0, 8), repeat=3)]
  assert len(set(corners)) == 1
