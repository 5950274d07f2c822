"""3-D medical volumes (NIfTI files, DICOM series) as RAS voxel arrays with their spacing.

The 2-D reader (data_pipelines.readers) cuts volumes into windowed uint8 slices; 3-D models
need the whole volume, in one orientation and at a known spacing, with intensities on a scale
that means the same across scanners. So every volume is reoriented to nibabel's closest
canonical orientation (the voxel axes point, as closely as they can, to patient Right,
Anterior and Superior), resampled on request (`resample`) and normalised per modality
(`normalize`). `read_msd` and `load_labelled` read labelled sets in the Medical Segmentation
Decathlon layout. data_pipelines.volume_ingest writes volumes into shards.

  from data_pipelines import volumes
  rows = volumes.read_msd("../shared/datasets/msd_hippocampus")
  images, labels, spacings, skipped = volumes.load_labelled(rows, target_spacing=(1, 1, 1))

A DICOM series' identifiers come back only so that the caller can hash them (as the 2-D
reader's Frame); no other header attribute is read into a volume.
"""
import contextlib
import dataclasses
import json
import os

import numpy as np
import tqdm

from data_pipelines import DatasetError, readers

# Slices of one series may differ in position from an even step by this fraction of the step
# (scanners round positions to a few micrometres); more is a gap or a mixed series.
SLICE_STEP_TOLERANCE = 0.01
MR_NORMALIZATIONS = ("zscore", "percentile")


@dataclasses.dataclass(frozen=True)
class Volume:
  voxels: np.ndarray  # (X, Y, Z) float32, axes towards +R, +A, +S (nibabel's closest canonical)
  spacing: tuple      # mm per voxel along each axis
  affine: np.ndarray  # 4x4: voxel index -> RAS mm


@contextlib.contextmanager
def _failing_as(problem: str):
  """Any failure inside becomes a readers.UnreadableFile that starts with `problem` (the file
  or series): nibabel's and pydicom's errors come in many types and rarely say which file."""
  try:
    yield
  except readers.UnreadableFile as e:
    if str(e).startswith(problem):
      raise
    raise readers.UnreadableFile(f"{problem}: {e}") from e
  except Exception as e:
    raise readers.UnreadableFile(f"{problem}: {type(e).__name__}: {e}") from e


def _canonical(image) -> Volume:
  """A nibabel image reoriented to the closest canonical (RAS) orientation, as float32."""
  import nibabel  # optional: the [ingest] extra
  if len(image.shape) == 4 and image.shape[3] == 1:
    image = image.slicer[..., 0]
  if len(image.shape) != 3:
    raise readers.UnreadableFile(f"a volume of shape {tuple(image.shape)}; expected 3 "
                                 "dimensions (or 4 with a single volume)")
  readers.check_pixels(int(np.prod(image.shape)), "a volume")
  image = nibabel.as_closest_canonical(image)
  voxels = np.asarray(image.dataobj, np.float32)
  readers.check_finite(voxels)
  spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
  return Volume(voxels=voxels, spacing=spacing, affine=image.affine)


def read_nifti(path: str) -> Volume:
  """A NIfTI volume in RAS orientation; fails with readers.UnreadableFile naming the file."""
  import nibabel  # optional: the [ingest] extra
  with _failing_as(path):
    readers.check_file(path)  # a FIFO would block, a device never end
    return _canonical(nibabel.load(path))


def find_dicom_series(paths, unreadable: list | None = None) -> dict[str, list[str]]:
  """DICOM files grouped by SeriesInstanceUID, reading headers only (no pixels).

  A file that is not a readable DICOM with a SeriesInstanceUID raises readers.UnreadableFile,
  or, where `unreadable` is given, is appended to it as (path, reason) and left out.
  """
  import pydicom  # optional: the [ingest] extra
  series = {}
  for path in paths:
    try:
      with _failing_as(path):
        readers.check_file(path)
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).get("SeriesInstanceUID", ""))
        if not uid:
          raise readers.UnreadableFile("DICOM without a SeriesInstanceUID")
    except readers.UnreadableFile as e:
      if unreadable is None:
        raise
      unreadable.append((path, str(e)))
      continue
    series.setdefault(uid, []).append(path)
  return series


def read_dicom_series(paths) -> tuple[Volume, dict]:
  """One DICOM series as a RAS volume in Hounsfield units for CT (the modality LUT applied),
  and its raw PatientID, StudyInstanceUID, SeriesInstanceUID and Modality, for hashing.

  Slices are ordered by their position along the slice normal (Image Position Patient
  projected on the cross product of Image Orientation Patient's row and column directions):
  file names and Instance Numbers are often not in that order. Slices at the same position
  or unevenly spaced (a gap, a mix of two stacks) fail, naming the series' first file.
  """
  import nibabel  # optional: the [ingest] extra
  import pydicom  # optional: the [ingest] extra
  from pydicom.pixels import processing

  paths = sorted(paths)
  problem = f"the DICOM series of {len(paths)} files starting at {paths[0]}"
  with _failing_as(problem):
    datasets = [pydicom.dcmread(p) for p in paths]
    missing = [k for k in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
                           "PixelData") if any(k not in ds for ds in datasets)]
    if missing:
      raise readers.UnreadableFile(f"slices without {', '.join(missing)}")
    orientation = np.array(datasets[0].ImageOrientationPatient, float)
    if any(not np.allclose(ds.ImageOrientationPatient, orientation, atol=1e-4)
           or (ds.Rows, ds.Columns) != (datasets[0].Rows, datasets[0].Columns)
           for ds in datasets):
      raise readers.UnreadableFile("slices of different orientations or sizes")
    readers.check_pixels(int(datasets[0].Rows) * int(datasets[0].Columns) * len(datasets),
                         "pixel data")
    along_row, along_column = orientation[:3], orientation[3:]
    normal = np.cross(along_row, along_column)
    positions = np.array([np.dot(np.array(ds.ImagePositionPatient, float), normal)
                          for ds in datasets])
    order = np.argsort(positions, kind="stable")
    step = _slice_step(positions[order], datasets[0])
    # Voxel (i, j, k): column i, row j of the k-th slice along the normal.
    voxels = np.stack([processing.apply_modality_lut(datasets[k].pixel_array, datasets[k]).T
                       for k in order], axis=-1).astype(np.float32)
    row_spacing, column_spacing = (float(s) for s in datasets[0].PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = along_row * column_spacing
    affine[:3, 1] = along_column * row_spacing
    affine[:3, 2] = normal * step
    affine[:3, 3] = np.array(datasets[order[0]].ImagePositionPatient, float)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # DICOM's LPS -> RAS
    ids = {k: str(datasets[0].get(k, "")) for k in ("PatientID", "StudyInstanceUID",
                                                    "SeriesInstanceUID", "Modality")}
    return _canonical(nibabel.Nifti1Image(voxels, affine)), ids


def _slice_step(sorted_positions: np.ndarray, first) -> float:
  """The distance between consecutive slices, checked even; one slice: its thickness."""
  if len(sorted_positions) == 1:
    return float(first.get("SliceThickness") or 1.0)
  steps = np.diff(sorted_positions)
  step = float(steps.mean())
  duplicates = int(np.sum(steps <= SLICE_STEP_TOLERANCE * max(step, 1e-3)))
  if duplicates:
    raise readers.UnreadableFile(f"{duplicates} slices duplicate the position of another")
  if np.abs(steps - step).max() > SLICE_STEP_TOLERANCE * step:
    raise readers.UnreadableFile(f"slices unevenly spaced (steps from {steps.min():.3f} to "
                                 f"{steps.max():.3f} mm)")
  return step


def resample(voxels: np.ndarray, spacing, target_spacing, order: int = 1) -> np.ndarray:
  """`voxels` at `target_spacing` (mm), keeping the physical extent: the new shape is
  round(shape * spacing / target), so the extent changes by at most half a target voxel per
  side. order=1: trilinear, for images; order=0: nearest, for label maps (labels stay labels).
  """
  import scipy.ndimage
  shape = np.array(voxels.shape)
  new_shape = np.maximum(1, np.round(shape * np.asarray(spacing, float)
                                     / np.asarray(target_spacing, float))).astype(int)
  readers.check_pixels(int(np.prod(new_shape)), "a resampled volume")
  # grid_mode: voxels are cells whose outer edges are kept, not points whose corners are.
  return scipy.ndimage.zoom(voxels, new_shape / shape, order=order, mode="nearest",
                            grid_mode=True)


def normalize(voxels: np.ndarray, modality: str, ct_window=(-175.0, 250.0),
              mr: str = "zscore") -> np.ndarray:
  """float32 intensities that mean the same across scanners.

  CT is in Hounsfield units already: clipped to `ct_window` (default: abdominal soft tissue)
  and scaled to [0, 1]. MR (and any other modality) has no absolute scale: "zscore" over the
  foreground (voxels > 0, where the background is zero; else all voxels), or "percentile",
  clipped to the 0.5..99.5 percentiles and scaled to [0, 1].
  """
  if mr not in MR_NORMALIZATIONS:
    raise ValueError(f"mr={mr!r}: expected one of {MR_NORMALIZATIONS}")
  values = voxels.astype(np.float32)
  if modality == "CT":
    low, high = ct_window
    return (np.clip(values, low, high) - low) / np.float32(high - low)
  if mr == "percentile":
    return readers.percentile_window(values).astype(np.float32)
  foreground = values[values > 0] if (values > 0).any() else values
  return (values - foreground.mean()) / max(float(foreground.std()), 1e-6)


def _msd_json(folder: str) -> dict:
  path = os.path.join(folder, "dataset.json")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise DatasetError(f"{path}: not a Medical Segmentation Decathlon dataset.json "
                       f"({type(e).__name__}: {e})") from e


def read_msd(folder: str) -> list[dict]:
  """The training cases of a Medical Segmentation Decathlon folder (dataset.json with
  "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}, ...]) as
  rows {"name", "image", "label"} with absolute paths, every file checked present."""
  meta = _msd_json(folder)
  where = os.path.join(folder, "dataset.json")
  if not isinstance(meta.get("training"), list):
    raise DatasetError(f"{where}: no \"training\" list")
  rows = []
  for n, entry in enumerate(meta["training"]):
    if not (isinstance(entry, dict) and isinstance(entry.get("image"), str)
            and isinstance(entry.get("label"), str)):
      raise DatasetError(f"{where}: training entry {n} is {entry!r}; expected "
                         "{\"image\": PATH, \"label\": PATH}")
    row = {"name": os.path.basename(entry["image"]).split(".")[0]}
    for key in ("image", "label"):
      row[key] = os.path.abspath(os.path.join(folder, entry[key]))
      if not os.path.isfile(row[key]):
        raise DatasetError(f"{where}: training entry {n}'s {key} {row[key]} does not exist")
    rows.append(row)
  return rows


def msd_info(folder: str) -> dict:
  """{"name", "labels": {0: "background", 1: ...}, "modality": {0: "MRI", ...}} (channel
  numbers and label values as ints) from a Decathlon dataset.json."""
  meta = _msd_json(folder)
  try:
    return {"name": meta.get("name", ""),
            "labels": {int(k): str(v) for k, v in meta["labels"].items()},
            "modality": {int(k): str(v) for k, v in meta["modality"].items()}}
  except (KeyError, AttributeError, ValueError) as e:
    raise DatasetError(f"{os.path.join(folder, 'dataset.json')}: \"labels\" and \"modality\" "
                       f"must map numbers to names ({type(e).__name__}: {e})") from e


def load_labelled(rows, target_spacing=None, modality: str = "MR", ct_window=(-175.0, 250.0)):
  """(images, labels, spacings, skipped) for rows {"name", "image", "label"} (read_msd's):
  images normalised float32 (X, Y, Z) in RAS, label maps uint8 on the same grid, the spacing
  of each after resampling to `target_spacing` (None: as stored), and the rows that could not
  be used as {"name", "row": its index in `rows`, "problem"} (unreadable, or a label of another
  shape than its image)."""
  images, labels, spacings, skipped = [], [], [], []
  for k, row in enumerate(tqdm.tqdm(rows, desc="volumes", unit="volume", disable=None)):
    try:
      image, label = read_nifti(row["image"]), read_nifti(row["label"])
      if image.voxels.shape != label.voxels.shape:
        raise readers.UnreadableFile(
            f"label {row['label']} has shape {label.voxels.shape}, image {row['image']} "
            f"{image.voxels.shape}")
      classes = label.voxels
      if classes.min() < 0 or classes.max() > 255 or (np.round(classes) != classes).any():
        raise readers.UnreadableFile(f"label {row['label']}: values that are not classes 0-255")
    except readers.UnreadableFile as e:
      skipped.append({"name": row["name"], "row": k, "problem": str(e)})
      continue
    voxels, classes, spacing = image.voxels, classes.astype(np.uint8), image.spacing
    if target_spacing is not None:
      voxels = resample(voxels, spacing, target_spacing)
      classes = resample(classes, spacing, target_spacing, order=0)
      spacing = tuple(float(s) for s in target_spacing)
    images.append(normalize(voxels, modality, ct_window))
    labels.append(classes)
    spacings.append(spacing)
  return images, labels, spacings, skipped
