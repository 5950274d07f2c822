"""Reading raw clinical files: DICOM windowing by hand, MONOCHROME1, multi-frame, letterboxing."""
import numpy as np
import pytest

from data_pipelines import readers
from helpers import get_testdata_file, need

OPTIONS = readers.ReadOptions()


def read(name):
  return readers.read_frames(get_testdata_file(name), name, OPTIONS)


def test_ct_pixel_windowed_by_hand_from_hu_slope_intercept_center_width():
  pydicom = need("pydicom")
  ds = pydicom.dcmread(get_testdata_file("693_UNCR.dcm"))
  assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
  assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (40.0, 100.0)
  stored = ds.pixel_array.astype(float)
  hu = stored * 1.0 - 1024.0
  r, c = np.argwhere((hu > 0) & (hu < 80))[0]  # a pixel inside the window
  # DICOM linear window: (x - (c - 0.5)) / (w - 1) + 0.5, scaled to 0..255.
  expected = round(((hu[r, c] - 39.5) / 99.0 + 0.5) * 255)
  frames = read("693_UNCR.dcm")
  assert len(frames) == 1 and frames[0].modality == "CT"
  assert frames[0].image[r, c] == expected
  assert frames[0].image[hu < -10].max() == 0 and frames[0].image[hu > 90].min() == 255


def test_mr_and_monochrome1_radiograph_and_multiframe_ultrasound():
  pydicom = need("pydicom")
  mr = read("MR_small.dcm")
  assert [f.modality for f in mr] == ["MR"] and mr[0].image.shape == (64, 64)

  ds = pydicom.dcmread(get_testdata_file("RG3_J2KI.dcm"))  # JPEG 2000, MONOCHROME1, CR
  assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.Modality == "CR"
  xr = read("RG3_J2KI.dcm")
  assert xr[0].modality == "XR"
  unit = readers.window(ds.pixel_array, float(ds.WindowCenter), float(ds.WindowWidth))
  np.testing.assert_array_equal(xr[0].image, readers.to_uint8(1.0 - unit))  # inverted

  us = read("examples_ybr_color.dcm")  # 30 JPEG-baseline YBR frames
  assert len(us) == 30 and {f.modality for f in us} == {"US"}
  assert us[0].image.shape == (240, 320) and us[0].image.dtype == np.uint8
  assert not np.array_equal(us[0].image, us[29].image)


def test_letterbox_keeps_aspect_and_centres():
  image = np.full((100, 200), 255, np.uint8)
  out = readers.letterbox(image, 64)
  assert out.shape == (64, 64)
  assert (out[:16] == 0).all() and (out[-16:] == 0).all() and (out[17:47] > 250).all()


@pytest.mark.parametrize("shape", [(120, 360), (360, 120), (257, 131), (224, 224)])
def test_unletterbox_returns_a_mask_to_its_images_size_and_place(shape):
  mask = np.zeros(shape, np.uint8)
  mask[shape[0] // 5:shape[0] // 2, shape[1] // 3:3 * shape[1] // 4] = 1
  boxed = readers.letterbox(mask, 224, readers.Image.NEAREST)
  back = readers.unletterbox(boxed, shape)
  assert back.shape == shape and back.dtype == np.uint8
  assert (back & mask).sum() / (back | mask).sum() > 0.95
  probabilities = np.stack([1.0 - boxed, boxed], -1).astype(np.float32)
  smooth = readers.unletterbox(probabilities, shape, readers.Image.BILINEAR)
  assert smooth.shape == shape + (2,) and smooth.dtype == np.float32
  np.testing.assert_allclose(smooth.sum(-1), 1.0, atol=1e-5)
