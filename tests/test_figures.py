"""Overlay figures: the panels drawn (counted on the figure before it is closed), the slices
through the right voxel and the right way up, and the PNG written."""
import numpy as np
import pytest
from PIL import Image

from vismae_jax import figures


@pytest.fixture
def drawn(monkeypatch):
  """The figures saved during a test, kept open for inspection."""
  kept = []

  def keep(fig, path, dpi=100):
    kept.append(fig)
    fig.savefig(path, dpi=dpi)
  monkeypatch.setattr(figures, "_save", keep)
  yield kept
  for fig in kept:
    figures.pyplot().close(fig)


def ras_volume(shape=(20, 16, 12), box=(slice(12, 17), slice(3, 6), slice(7, 12))):
  """An image whose voxels encode their (x, y, z), and a box of foreground."""
  x, y, z = np.indices(shape)
  image = (x * 1e4 + y * 1e2 + z).astype(np.float32)
  mask = np.zeros(shape, np.uint8)
  mask[box] = 1
  return image, mask


def test_orthogonal_slices_go_through_the_centre_with_superior_and_anterior_up():
  image, _ = ras_volume()
  axial, coronal, sagittal = figures.orthogonal_slices(image, (5, 6, 7))
  assert axial.shape == (16, 20) and coronal.shape == (12, 20) and sagittal.shape == (12, 16)
  np.testing.assert_array_equal(axial % 100, 7)
  np.testing.assert_array_equal(coronal // 100 % 100, 6)
  np.testing.assert_array_equal(sagittal // 10 ** 4, 5)
  assert axial[0, 0] == 15 * 100 + 7       # top row: the most anterior Y, left: X = 0
  assert coronal[0, 3] == 3 * 10 ** 4 + 6 * 100 + 11  # top row: the most superior Z
  assert sagittal[-1, -1] == 5 * 10 ** 4 + 15 * 100  # bottom right: inferior, anterior


def test_volume_overlays_draw_three_views_per_model_through_the_centroid(drawn, tmp_path):
  image, mask = ras_volume()
  prediction = np.roll(mask, 1, axis=0)
  predictions = {"unetr": [(prediction, 0.75)] * 2, "random": [(np.zeros_like(mask), None)] * 2}
  path = figures.volume_overlays([image, image], [mask, mask], predictions, ["a", "b"],
                                 str(tmp_path / "volumes.png"), title="fold 0")
  assert path == str(tmp_path / "volumes.png")
  (fig,) = drawn
  assert len(fig.axes) == 2 * 3 * (1 + 2)
  titles = [ax.get_title() for ax in fig.axes[:9]]
  assert titles == ["a\naxial", "a\ncoronal", "a\nsagittal", "unetr: Dice 0.75\naxial",
                    "unetr: Dice 0.75\ncoronal", "unetr: Dice 0.75\nsagittal",
                    "random\naxial", "random\ncoronal", "random\nsagittal"]
  shown = [np.asarray(ax.images[0].get_array()) for ax in fig.axes[:3]]
  assert shown[0][0, 0] % 100 == 9 and shown[1][0, 0] // 100 % 100 == 4  # centroid (14, 4, 9)
  assert shown[2][0, 0] // 10 ** 4 == 14
  assert all(len(ax.collections) == 1 for ax in fig.axes[:3])     # ground truth only
  assert all(len(ax.collections) == 2 for ax in fig.axes[3:6])    # and the prediction
  assert all(len(ax.collections) == 1 for ax in fig.axes[6:9])    # an empty prediction
  width, height = Image.open(path).size
  assert width > height > 0


def test_volume_overlays_without_masks_slice_the_centre(drawn, tmp_path):
  image, mask = ras_volume()
  figures.volume_overlays([image], None, {"unetr": [(mask, None)]}, ["a"],
                          str(tmp_path / "volumes.png"))
  (fig,) = drawn
  assert len(fig.axes) == 6
  axial = np.asarray(fig.axes[0].images[0].get_array())
  assert axial[0, 0] % 100 == 5  # (12 - 1) // 2
  assert all(len(ax.collections) == 0 for ax in fig.axes[:3])


def test_segmentation_overlays_still_draw_one_panel_per_model(drawn, tmp_path):
  image = np.random.default_rng(0).random((16, 16))
  mask = np.zeros((16, 16), int)
  mask[4:9, 5:10] = 1
  figures.segmentation_overlays([image] * 3, [mask] * 3, {"m": [(mask, 1.0)] * 3}, list("abc"),
                                str(tmp_path / "images.png"))
  (fig,) = drawn
  assert len(fig.axes) == 3 * 2
  assert [ax.get_title() for ax in fig.axes[:2]] == ["a", "m: Dice 1.00"]
  assert [len(ax.collections) for ax in fig.axes[:2]] == [1, 2]
