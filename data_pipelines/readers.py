"""Raw clinical files -> windowed 2-D uint8 frames, and the letterbox resize to the stored size.

Formats: DICOM (with or without the .dcm extension: recognised by its "DICM" preamble), PNG and
JPEG, NIfTI (.nii, .nii.gz; volumes become slices along one axis). Greyscale is what the model
sees, so colour ultrasound is converted to luminance.

DICOM intensities follow the standard's pipeline: modality LUT (Rescale Slope/Intercept), then
the VOI transform from the header (a VOI LUT Sequence where present, else the first Window
Center/Width pair with its VOI LUT Function), else a per-modality fallback window, else the
0.5-99.5 percentile range of the image; MONOCHROME1 is inverted last so bone is always bright.

A Frame carries the raw patient, study and series identifiers only so that the caller can hash
them; they are never written anywhere. Files that hold none (PNG, JPEG; NIfTI but for its own
series) carry empty ones, which stay empty keys: no shared hash of nothing.
"""
import dataclasses
import os
import stat

import numpy as np
from PIL import Image

# DICOM Modality attribute -> the modality stored with a record.
DICOM_MODALITIES = {"CT": "CT", "MR": "MR", "PT": "PT", "CR": "XR", "DX": "XR", "US": "US"}
# Folder names that give non-DICOM files their modality (see modality_from_path).
FOLDER_MODALITIES = {"ct": "CT", "mr": "MR", "mri": "MR", "pt": "PT", "pet": "PT", "xr": "XR",
                     "xray": "XR", "x-ray": "XR", "cr": "XR", "dx": "XR", "us": "US",
                     "ultrasound": "US"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# Bounds of the work per file (read_frames): pixels a header may promise, bytes on disk.
MAX_PIXELS = 2 ** 28
MAX_FILE_BYTES = 4 * 2 ** 30
NIFTI_EXTENSIONS = (".nii", ".nii.gz")


class UnreadableFile(Exception):
  """A file that is corrupt, truncated or of an unsupported kind; the message says which."""


@dataclasses.dataclass(frozen=True)
class Frame:
  image: np.ndarray  # (H, W) uint8 at the source resolution
  modality: str      # one of records.MODALITIES
  patient_id: str    # raw identifiers: hash them, never store them
  study_uid: str
  series_uid: str


@dataclasses.dataclass(frozen=True)
class ReadOptions:
  # auto: from the DICOM header or the folder name, else the file is refused; any: the same, or
  # none (prediction, where the modality plays no part); else forced.
  modality: str = "auto"
  fallback_windows: tuple = (("CT", 40.0, 400.0),)  # (modality, center, width) without a VOI
  nifti_axis: int = 2


def is_dicom(path: str) -> bool:
  if path.lower().endswith(".dcm"):
    return True
  with open(path, "rb") as f:
    return f.read(132)[128:132] == b"DICM"


def modality_from_path(rel_path: str) -> str | None:
  """The innermost folder named after a modality (e.g. `site1/CT/...`, `sample/us/...`)."""
  for part in reversed(os.path.dirname(rel_path).replace("\\", "/").split("/")):
    if part.lower() in FOLDER_MODALITIES:
      return FOLDER_MODALITIES[part.lower()]
  return None


def read_frames(path: str, rel_path: str, options: ReadOptions) -> list[Frame]:
  """All 2-D frames of one file. Raises UnreadableFile with the reason for any failure; the
  reason never names the file (the caller knows which it is, and names can identify people).

  Bounded work: only regular files are opened (a FIFO would block, a device never ends), and
  a file whose header promises more than MAX_PIXELS pixels (or a file over MAX_FILE_BYTES) is
  refused before decoding, so that no input can hang the reader or exhaust its memory.
  """
  lower = rel_path.lower()
  try:
    check_file(path)
    if lower.endswith(IMAGE_EXTENSIONS):
      return _read_picture(path, rel_path, options)
    if lower.endswith(NIFTI_EXTENSIONS):
      return _read_nifti(path, rel_path, options)
    if is_dicom(path):
      return _read_dicom(path, rel_path, options)
  except UnreadableFile:
    raise
  except Exception as e:  # every reader error becomes a report line, never a crash
    raise UnreadableFile(scrubbed(f"{type(e).__name__}: {_first_line(e)}", path, rel_path)) from e
  raise UnreadableFile("unsupported file type (expected DICOM, PNG, JPEG or NIfTI)")


def check_file(path: str):
  """Only regular files of bounded size are opened: a FIFO would block, a device never ends."""
  status = os.stat(path)
  if not stat.S_ISREG(status.st_mode):
    raise UnreadableFile("not a regular file (a folder, FIFO, device or socket)")
  if status.st_size > MAX_FILE_BYTES:
    raise UnreadableFile(f"{status.st_size / 2 ** 30:.1f} GiB: larger than the "
                         f"{MAX_FILE_BYTES / 2 ** 30:.0f} GiB read per file")


def scrubbed(reason: str, *names: str) -> str:
  """`reason` with every spelling of the file's path and name replaced by "<file>": decoders
  quote the path they failed on, and folder and file names can name patients."""
  spellings = set()
  for name in names:
    for part in (name, os.path.basename(name)):
      if part:
        spellings |= {part, repr(part)[1:-1], os.fsencode(part).decode("utf-8", "replace")}
  for spelling in sorted(spellings, key=len, reverse=True):  # the longest first
    reason = reason.replace(spelling, "<file>")
  return reason


def letterbox(image: np.ndarray, size: int, resample=Image.LANCZOS) -> np.ndarray:
  """Resizes the longer side to `size` and zero-pads the shorter one, centred.

  Keeping the aspect ratio and every pixel of anatomy matters more than filling the square.
  Masks pass resample=Image.NEAREST so labels stay labels.
  """
  top, left, new_h, new_w = letterbox_box(image.shape, size)
  resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), resample), np.uint8)
  out = np.zeros((size, size), np.uint8)
  out[top:top + new_h, left:left + new_w] = resized
  return out


def letterbox_box(shape: tuple[int, int], size: int) -> tuple[int, int, int, int]:
  """(top, left, height, width) of an image of `shape` inside its size x size letterbox."""
  h, w = shape
  scale = size / max(h, w)
  new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
  return (size - new_h) // 2, (size - new_w) // 2, new_h, new_w


def unletterbox(array: np.ndarray, shape: tuple[int, int], resample=Image.NEAREST) -> np.ndarray:
  """The inverse of `letterbox` for a (size, size[, C]) array made on a letterboxed image of
  `shape`: the padding cut off and the rest resized back to `shape` (nearest neighbours by
  default, so label maps stay label maps; float channels resample one by one)."""
  top, left, new_h, new_w = letterbox_box(shape, array.shape[0])
  inner = array[top:top + new_h, left:left + new_w]
  if inner.ndim == 3:
    return np.stack([_resized(inner[..., c], shape, resample)
                     for c in range(inner.shape[-1])], -1)
  return _resized(inner, shape, resample)


def _resized(plane: np.ndarray, shape: tuple[int, int], resample) -> np.ndarray:
  """One (h, w) plane resized to `shape`; floats stay floats."""
  mode = "F" if plane.dtype.kind == "f" else None
  image = Image.fromarray(plane.astype(np.float32) if mode else plane.astype(np.uint8), mode)
  return np.asarray(image.resize((shape[1], shape[0]), resample)).astype(plane.dtype)


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR"):
  """DICOM VOI window (PS3.3 C.11.2.1.2) to [0, 1]."""
  values = values.astype(np.float64)
  if function == "SIGMOID":
    return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
  if function == "LINEAR_EXACT":
    return np.clip((values - center) / width + 0.5, 0.0, 1.0)
  width = max(width, 1.0)
  return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def percentile_window(values: np.ndarray) -> np.ndarray:
  lo, hi = np.percentile(values, [0.5, 99.5])
  return np.clip((values - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def check_finite(values: np.ndarray):
  """Values that are not finite (a NaN voxel, a NaN rescale slope) are an error, not a silent
  black or garbage image."""
  bad = ~np.isfinite(values)
  if bad.any():
    raise UnreadableFile(f"{int(bad.sum())} of {values.size} values are not finite (NaN or "
                         "infinite)")


def to_uint8(unit: np.ndarray) -> np.ndarray:
  """[0, 1] -> uint8, checked finite."""
  check_finite(unit)
  return np.round(unit * 255.0).astype(np.uint8)


def _first_line(e: Exception) -> str:
  return (str(e).splitlines() or [""])[0][:200]


def check_pixels(count: int, what: str):
  if count > MAX_PIXELS:
    raise UnreadableFile(f"{what} of {count:,} pixels: more than the {MAX_PIXELS:,} read per "
                         "file")


def _fallback(values: np.ndarray, modality: str, options: ReadOptions) -> np.ndarray:
  for name, center, width in options.fallback_windows:
    if name == modality:
      return window(values, center, width)
  return percentile_window(values)


def resolve_modality(found: str | None, rel_path: str, options: ReadOptions) -> str:
  if options.modality == "any":
    return found or ""
  if options.modality != "auto":
    return options.modality
  if found is None:
    raise UnreadableFile("no modality: neither a supported DICOM Modality nor a folder named "
                         "after one; pass --modality")
  return found


def _luminance(rgb: np.ndarray) -> np.ndarray:
  return rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _read_picture(path, rel_path, options):
  with Image.open(path) as img:
    check_pixels(img.width * img.height, "an image")
    img.load()  # decode now: a truncated file fails here
    if img.mode in ("I", "I;16", "I;16B", "F"):
      unit = percentile_window(np.asarray(img, np.float64))
    else:
      unit = np.asarray(img.convert("L"), np.float64) / 255.0
  modality = resolve_modality(modality_from_path(rel_path), rel_path, options)
  return [Frame(to_uint8(unit), modality, "", "", "")]  # a picture names no patient


def _read_nifti(path, rel_path, options):
  import nibabel  # optional: the [ingest] extra
  image = nibabel.load(path)
  check_pixels(int(np.prod(image.shape)), "a volume")
  volume = np.asanyarray(image.dataobj).astype(np.float64)
  check_finite(volume)
  if volume.ndim == 2:
    volume = volume[..., None]
  if volume.ndim != 3:
    raise UnreadableFile(f"NIfTI with {volume.ndim} dimensions; expected 2 or 3")
  modality = resolve_modality(modality_from_path(rel_path), rel_path, options)
  unit = _fallback(volume, modality, options)  # one window for the whole volume
  slices = np.moveaxis(unit, options.nifti_axis, 0)
  # Voxel axes are (x, y): rotate so rows run top to bottom in the usual radiological view.
  # A volume names no patient or study; its slices are one series.
  return [Frame(to_uint8(np.rot90(s)), modality, "", "", rel_path) for s in slices]


def _read_dicom(path, rel_path, options):
  import pydicom  # optional: the [ingest] extra
  from pydicom.pixels import processing

  ds = pydicom.dcmread(path)
  if "PixelData" not in ds:
    raise UnreadableFile("DICOM without pixel data")
  check_pixels(int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0)
                * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.get("SamplesPerPixel", 1) or 1),
                "pixel data")
  modality = resolve_modality(DICOM_MODALITIES.get(str(ds.get("Modality", ""))), rel_path,
                               options)
  frames = int(ds.get("NumberOfFrames", 1) or 1)
  pixels = ds.pixel_array  # decodes compressed syntaxes; YBR colour comes back as RGB
  photometric = str(ds.get("PhotometricInterpretation", ""))
  if photometric == "PALETTE COLOR":
    pixels = processing.apply_color_lut(pixels, ds)
  colour = int(ds.get("SamplesPerPixel", 1)) > 1 or photometric == "PALETTE COLOR"
  if frames == 1:
    pixels = pixels[None]
  if colour:
    unit = _luminance(pixels) / float(np.iinfo(pixels.dtype).max)
  else:
    values = processing.apply_modality_lut(pixels, ds)
    check_finite(values)
    if "VOILUTSequence" in ds:
      lut = processing.apply_voi(values, ds, index=0)
      bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
      unit = lut.astype(np.float64) / (2.0 ** bits - 1.0)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
      center, width = (_first(ds.WindowCenter), _first(ds.WindowWidth))
      unit = window(values, center, width, str(ds.get("VOILUTFunction", "LINEAR")).upper())
    else:
      unit = _fallback(values, modality, options)
    if photometric == "MONOCHROME1":
      unit = 1.0 - unit
  ids = [str(ds.get(k, "")) for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")]
  return [Frame(to_uint8(f), modality, *ids) for f in unit]


def _first(value) -> float:
  """Window Center/Width may hold several alternatives: the first is the default view."""
  return float(value[0]) if hasattr(value, "__len__") else float(value)


def nifti_affine(path: str) -> np.ndarray:
  """The RAS affine of a DICOM image's pixel grid, for a NIfTI array indexed (column, row,
  frame): from Image Position and Orientation (Patient) and the pixel spacing where the file
  has them, else from the pixel spacing alone. Only geometry is read, no identifier."""
  import pydicom  # optional: the [ingest] extra
  ds = pydicom.dcmread(path, stop_before_pixels=True)
  spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing") or (1.0, 1.0)
  row_spacing, column_spacing = float(spacing[0]), float(spacing[1])
  orientation, position = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
  along_row, along_column, origin = np.eye(3)[0], np.eye(3)[1], np.zeros(3)
  if orientation is not None and position is not None:
    along_row, along_column = np.array(orientation[:3], float), np.array(orientation[3:], float)
    origin = np.array(position, float)
  affine = np.eye(4)
  affine[:3, 0] = along_row * column_spacing  # next column
  affine[:3, 1] = along_column * row_spacing  # next row
  affine[:3, 2] = np.cross(along_row, along_column) * float(ds.get("SliceThickness") or 1.0)
  affine[:3, 3] = origin
  return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # DICOM's LPS -> NIfTI's RAS
