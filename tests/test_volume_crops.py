"""Volume crops: ROI shapes, the same crop for the same (seed, i), the foreground share, padding
of small volumes, and uniform crops without masks; through grain as training reads them."""
import grain
import numpy as np
import pytest

from data_pipelines.volume_crops import CropSource

ROI = (16, 16, 8)


def blob_volume(shape=(64, 48, 32), blob=(40, 30, 20)):
  """A gradient image (the crop's position can be read off it) with a 3^3 foreground blob."""
  image = np.add.outer(np.add.outer(np.arange(shape[0]) * 1e4, np.arange(shape[1]) * 1e2),
                       np.arange(shape[2])).astype(np.float32)
  mask = np.zeros(shape, np.uint8)
  mask[tuple(slice(c - 1, c + 2) for c in blob)] = 2
  return image, mask


def test_crops_have_the_roi_shape_and_come_from_the_volume():
  image, mask = blob_volume()
  source = CropSource([image, image[:40]], [mask, mask[:40]], ROI, crops_per_volume=3)
  assert len(source) == 6
  for i in range(len(source)):
    example = source[i]
    assert example["image"].shape == example["mask"].shape == ROI
    assert example["image"].dtype == np.float32 and example["mask"].dtype == np.uint8
    x, y, z = (int(example["image"][0, 0, 0]) // 10 ** k % 100 for k in (4, 2, 0))
    np.testing.assert_array_equal(example["image"], image[x:x + 16, y:y + 16, z:z + 8])
    np.testing.assert_array_equal(example["mask"], mask[x:x + 16, y:y + 16, z:z + 8])
    assert x + 16 <= (64 if i % 2 == 0 else 40)  # example i is a crop of volume i % 2


def test_the_same_seed_and_index_give_the_same_crop():
  image, mask = blob_volume()
  first, again = (CropSource([image], [mask], ROI, seed=3, crops_per_volume=8) for _ in "ab")
  other = CropSource([image], [mask], ROI, seed=4, crops_per_volume=8)
  for i in (5, 0, 7, 5):
    np.testing.assert_array_equal(first[i]["image"], again[i]["image"])
  assert any(not np.array_equal(first[i]["image"], other[i]["image"]) for i in range(8))
  datasets = [grain.MapDataset.source(source).seed(1).shuffle().repeat().batch(4)
              for source in (first, again)]  # a resumed run rebuilds its pipeline
  np.testing.assert_array_equal(datasets[0][3]["image"], datasets[1][3]["image"])
  assert datasets[0][3]["image"].shape == (4, *ROI)


@pytest.mark.parametrize("share", [0.5, 0.2])
def test_the_foreground_share_is_the_one_asked_for(share):
  image, mask = blob_volume()
  source = CropSource([image], [mask], ROI, foreground_share=share, crops_per_volume=400)
  centred = np.mean([source[i]["mask"][8, 8, 4] > 0 for i in range(len(source))])
  assert centred == pytest.approx(share, abs=0.08)
  # A random voxel rarely lands a crop on a blob of 27 voxels in 98,304.
  anywhere = CropSource([image], [mask], ROI, foreground_share=0.0, crops_per_volume=100)
  assert np.mean([anywhere[i]["mask"].any() for i in range(100)]) < 0.2


def test_volumes_smaller_than_the_roi_are_padded():
  image, mask = blob_volume(shape=(10, 20, 5), blob=(5, 10, 2))
  image -= 7.0  # a minimum that is not 0
  source = CropSource([image], [mask], ROI, foreground_share=1.0, crops_per_volume=5)
  for example in (source[i] for i in range(len(source))):
    assert example["image"].shape == example["mask"].shape == ROI
    y = int(example["image"][3, 0, 1] + 7) // 100  # axis 1 (20 > 16) is cropped
    np.testing.assert_array_equal(example["image"][3:13, :, 1:6], image[:, y:y + 16])
    np.testing.assert_array_equal(example["mask"][3:13, :, 1:6], mask[:, y:y + 16])
    assert example["mask"].sum() == 27 * 2  # centred on the blob: all of it inside
    padding = np.ones(ROI, bool)
    padding[3:13, :, 1:6] = False  # (16 - 10) // 2 = 3 before on axis 0, (8 - 5) // 2 = 1 on 2
    assert np.all(example["image"][padding] == image.min())
    assert not example["mask"][padding].any()


def test_without_masks_crops_are_uniform_and_have_no_mask():
  image, _ = blob_volume(shape=(40, 16, 8))
  source = CropSource([image], None, ROI, crops_per_volume=500)
  examples = [source[i] for i in range(len(source))]
  assert all(e.keys() == {"image"} and e["image"].shape == ROI for e in examples)
  starts = [int(e["image"][0, 0, 0]) // 10 ** 4 for e in examples]
  counts = np.bincount(starts, minlength=25)
  assert len(counts) == 25 and counts.min() > 5  # every one of the 25 positions drawn
