"""Volumes as data: NIfTI in any orientation and DICOM series read to the same RAS voxels,
resampling that keeps the physical extent, per-modality normalisation, the Decathlon layout,
and the volume ingest (one record per volume, bad files reported, resumable, no PHI)."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest


from data_pipelines import DatasetError, ingest, readers, records, shards
from data_pipelines import volume_ingest, volumes
from helpers import ROOT, get_testdata_file, main_env, need, shared_dataset

SPACING = (0.8, 1.2, 2.5)


def asymmetric_volume() -> np.ndarray:
  """Every voxel distinct, so any flip or transposition shows."""
  return np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)


def orient(volume, spacing, codes):
  """(voxels, affine) of the same anatomy stored with axes towards `codes` (e.g. "PIR"): the
  inverse of the reorientation that the reader is expected to do."""
  nibabel = need("nibabel")
  ras = nibabel.orientations.axcodes2ornt("RAS")
  transform = nibabel.orientations.ornt_transform(ras, nibabel.orientations.axcodes2ornt(codes))
  voxels = nibabel.orientations.apply_orientation(volume, transform)
  affine = np.diag(list(spacing) + [1.0]) @ np.eye(4)
  affine[:3, 3] = (10.0, -20.0, 30.0)
  affine = affine @ nibabel.orientations.inv_ornt_aff(transform, volume.shape)
  return voxels, affine


@pytest.mark.parametrize("codes", ["RAS", "LPS", "LAS", "PIR", "SLA", "RPI"])
def test_nifti_in_any_orientation_reads_as_the_same_ras_voxels(tmp_path, codes):
  nibabel = need("nibabel")
  volume = asymmetric_volume()
  voxels, affine = orient(volume, SPACING, codes)
  assert (codes == "RAS") == np.array_equal(voxels, volume)  # stored differently but RAS
  path = str(tmp_path / f"{codes}.nii.gz")
  nibabel.save(nibabel.Nifti1Image(voxels, affine), path)
  read = volumes.read_nifti(path)
  assert nibabel.aff2axcodes(affine) == tuple(codes)
  np.testing.assert_array_equal(read.voxels, volume)
  assert read.voxels.dtype == np.float32
  np.testing.assert_allclose(read.spacing, SPACING, rtol=1e-6)
  np.testing.assert_allclose(read.affine[:3, :3], np.diag(SPACING), atol=1e-6)


def test_nifti_shapes_and_values_that_are_not_a_volume_fail_naming_the_file(tmp_path):
  nibabel = need("nibabel")
  single = tmp_path / "single.nii"
  nibabel.save(nibabel.Nifti1Image(asymmetric_volume()[..., None], np.eye(4)), str(single))
  assert volumes.read_nifti(str(single)).voxels.shape == (5, 6, 7)
  cases = {"series.nii": (np.zeros((4, 4, 4, 2), np.float32), "shape \\(4, 4, 4, 2\\)"),
           "nan.nii": (np.full((4, 4, 4), np.nan, np.float32), "not finite"),
           "junk.nii": (None, "junk.nii: ")}
  for name, (voxels, problem) in cases.items():
    if voxels is None:
      (tmp_path / name).write_bytes(b"not a nifti file at all" * 20)
    else:
      nibabel.save(nibabel.Nifti1Image(voxels, np.eye(4)), str(tmp_path / name))
    with pytest.raises(readers.UnreadableFile, match=problem) as caught:
      volumes.read_nifti(str(tmp_path / name))
    assert str(tmp_path / name) in str(caught.value)


def test_resampling_keeps_the_extent_and_label_classes():
  rng = np.random.default_rng(0)
  image = rng.normal(size=(35, 50, 36)).astype(np.float32)
  labels = np.zeros((35, 50, 36), np.uint8)
  labels[10:20, 15:30, 5:25] = 1
  labels[20:25, 30:40, 10:20] = 2
  spacing, target = (1.0, 0.7, 1.3), (1.5, 1.5, 2.0)
  resampled = volumes.resample(image, spacing, target)
  resampled_labels = volumes.resample(labels, spacing, target, order=0)
  assert resampled.shape == resampled_labels.shape == (23, 23, 23)
  extent = np.array(image.shape) * spacing
  assert np.all(np.abs(np.array(resampled.shape) * target - extent) <= np.array(target) / 2)
  assert resampled.dtype == np.float32 and resampled_labels.dtype == np.uint8
  assert set(np.unique(resampled_labels)) == {0, 1, 2}
  # Linear interpolation of a constant is that constant; the fraction of each class is kept.
  np.testing.assert_allclose(volumes.resample(np.full((9, 9, 9), 3.0), spacing, target), 3.0)
  for c in (1, 2):
    assert abs((resampled_labels == c).mean() - (labels == c).mean()) < 0.02


def test_normalize_ct_window_and_mr_zscore():
  hu = np.array([-1000.0, -175.0, 37.5, 250.0, 3000.0], np.float32)
  np.testing.assert_allclose(volumes.normalize(hu, "CT"), [0.0, 0.0, 0.5, 1.0, 1.0])
  np.testing.assert_allclose(volumes.normalize(hu, "CT", ct_window=(-1000.0, 3000.0)),
                             [0.0, 0.20625, 0.259375, 0.3125, 1.0], rtol=1e-6)
  mr = np.zeros((10, 10, 10), np.float32)
  mr[2:8, 2:8, 2:8] = np.random.default_rng(1).uniform(100, 900, (6, 6, 6))
  z = volumes.normalize(mr, "MR")
  foreground = z[2:8, 2:8, 2:8]
  assert z.dtype == np.float32
  assert abs(foreground.mean()) < 1e-4 and abs(foreground.std() - 1.0) < 1e-4
  assert np.all(z[0] < foreground.min())  # the background stays below the anatomy
  unit = volumes.normalize(mr, "MR", mr="percentile")
  assert unit.min() == 0.0 and unit.max() == 1.0
  z_all = volumes.normalize(-mr, "MR")  # no voxel above zero: statistics over all of them
  assert abs(z_all.mean()) < 1e-4
  with pytest.raises(ValueError, match="zscore"):
    volumes.normalize(mr, "MR", mr="minmax")


SERIES_Z = (-30.0, -27.5, -25.0, -22.5, -20.0, -17.5)


def write_series(folder, z_positions=SERIES_Z, seed=0) -> list[int]:
  """A CT series from pydicom's single CT slice: one slice per z (along the normal of an
  axial orientation), distinct pixels, Instance Numbers and file names in other orders than
  the positions. Returns the offset added to each slice's pixels, in position order."""
  pydicom = need("pydicom")
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  instance_numbers = rng.permutation(len(z_positions)) + 1
  names = rng.permutation(len(z_positions))
  offsets = []
  for k, z in enumerate(z_positions):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.ImagePositionPatient = [-158.135803, -179.035797, z]
    ds.SliceLocation = z
    ds.InstanceNumber = int(instance_numbers[k])
    ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{k + 1}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    offsets.append(10 * (k + 1))
    ds.PixelData = (ds.pixel_array + offsets[-1]).astype(np.int16).tobytes()
    ds.save_as(os.path.join(folder, f"img{names[k]:02d}.dcm"))
  return offsets


def test_a_dicom_series_is_one_volume_ordered_by_position(tmp_path):
  pydicom = need("pydicom")
  offsets = write_series(tmp_path / "series")
  paths = sorted(str(p) for p in (tmp_path / "series").iterdir())
  groups = volumes.find_dicom_series(paths)
  template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
  assert groups == {template.SeriesInstanceUID: paths}
  volume, ids = volumes.read_dicom_series(paths)
  assert ids == {"PatientID": "1CT1", "StudyInstanceUID": template.StudyInstanceUID,
                 "SeriesInstanceUID": template.SeriesInstanceUID, "Modality": "CT"}
  assert volume.voxels.shape == (128, 128, 6)
  np.testing.assert_allclose(volume.spacing, (0.661468, 0.661468, 2.5), rtol=1e-5)
  # RAS: DICOM's rows run towards patient posterior and columns towards left, so both flip.
  hu = template.pixel_array.astype(np.float32) * float(template.RescaleSlope) + float(
      template.RescaleIntercept)
  for k, offset in enumerate(offsets):
    np.testing.assert_array_equal(volume.voxels[..., k], (hu + offset).T[::-1, ::-1])
  np.testing.assert_allclose(volume.affine[2, 3], SERIES_Z[0])


def test_an_uneven_or_duplicated_series_fails_naming_the_problem(tmp_path):
  write_series(tmp_path / "gap", z_positions=(0.0, 2.5, 5.0, 10.0))
  write_series(tmp_path / "twice", z_positions=(0.0, 2.5, 2.5, 5.0))
  for name, problem in (("gap", "unevenly spaced"), ("twice", "duplicate the position")):
    paths = [str(p) for p in (tmp_path / name).iterdir()]
    with pytest.raises(readers.UnreadableFile, match=problem) as caught:
      volumes.read_dicom_series(paths)
    assert f"series of 4 files starting at {min(paths)}" in str(caught.value)


def test_dicom_files_that_cannot_be_grouped_are_reported_or_raise(tmp_path):
  write_series(tmp_path, z_positions=(0.0, 2.5))
  (tmp_path / "junk.dcm").write_bytes(b"\0" * 200)
  paths = sorted(str(p) for p in tmp_path.iterdir())
  unreadable = []
  assert len(volumes.find_dicom_series(paths, unreadable)) == 1
  assert [path for path, _ in unreadable] == [str(tmp_path / "junk.dcm")]
  with pytest.raises(readers.UnreadableFile, match="junk.dcm"):
    volumes.find_dicom_series(paths)


@pytest.mark.data
def test_the_real_decathlon_hippocampus_reads_as_labelled_volumes():
  folder = shared_dataset("msd_hippocampus")
  rows = volumes.read_msd(folder)
  assert len(rows) == 260 and rows[0]["name"] == "hippocampus_001"
  assert all(os.path.isabs(r["image"]) and os.path.isabs(r["label"]) for r in rows)
  info = volumes.msd_info(folder)
  assert info["labels"] == {0: "background", 1: "Anterior", 2: "Posterior"}
  assert info["modality"] == {0: "MRI"}
  images, labels, spacings, skipped = volumes.load_labelled(rows[:4])
  assert not skipped and spacings == [(1.0, 1.0, 1.0)] * 4
  for image, label in zip(images, labels):
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert image.shape == label.shape and 30 <= min(image.shape) <= max(image.shape) <= 60
    assert set(np.unique(label)) == {0, 1, 2}
  coarse, coarse_labels, coarse_spacings, _ = volumes.load_labelled(rows[:2], (2.0, 2.0, 2.0))
  assert coarse_spacings == [(2.0, 2.0, 2.0)] * 2
  assert coarse[0].shape == coarse_labels[0].shape == tuple(
      int(np.round(s / 2)) for s in images[0].shape)


def synthetic_msd(folder, cases=3) -> str:
  """A Decathlon folder of `cases` tiny labelled volumes (the last one's label of the wrong
  shape)."""
  nibabel = need("nibabel")
  for sub in ("imagesTr", "labelsTr"):
    os.makedirs(os.path.join(folder, sub))
  training = []
  for n in range(cases):
    image = np.random.default_rng(n).uniform(1, 100, (8, 9, 10)).astype(np.float32)
    label = (image > 50).astype(np.uint8)[:, :, : 10 if n < cases - 1 else 7]
    for sub, array in (("imagesTr", image), ("labelsTr", label)):
      nibabel.save(nibabel.Nifti1Image(array, np.diag([2.0, 2.0, 3.0, 1.0])),
                   os.path.join(folder, sub, f"case_{n}.nii.gz"))
    training.append({"image": f"./imagesTr/case_{n}.nii.gz",
                     "label": f"./labelsTr/case_{n}.nii.gz"})
  with open(os.path.join(folder, "dataset.json"), "w") as f:
    json.dump({"name": "Tiny", "labels": {"0": "background", "1": "bright"},
               "modality": {"0": "MRI"}, "training": training}, f)
  return str(folder)


def test_a_decathlon_folder_with_problems_fails_naming_the_file(tmp_path):
  folder = synthetic_msd(tmp_path / "msd")
  images, labels, spacings, skipped = volumes.load_labelled(volumes.read_msd(folder))
  assert len(images) == len(labels) == 2 and spacings == [(2.0, 2.0, 3.0)] * 2
  assert [s["name"] for s in skipped] == ["case_2"]
  assert "labelsTr/case_2.nii.gz" in skipped[0]["problem"] and "shape" in skipped[0]["problem"]
  os.remove(os.path.join(folder, "labelsTr", "case_1.nii.gz"))
  with pytest.raises(DatasetError, match="entry 1's label .*labelsTr/case_1.nii.gz does not"):
    volumes.read_msd(folder)
  with open(os.path.join(folder, "dataset.json"), "w") as f:
    json.dump({"training": [{"image": "./imagesTr/case_0.nii.gz"}]}, f)
  with pytest.raises(DatasetError, match="dataset.json: training entry 0"):
    volumes.read_msd(folder)
  shutil.rmtree(folder)
  with pytest.raises(DatasetError, match="msd/dataset.json: not a Medical"):
    volumes.read_msd(folder)


@pytest.fixture(scope="module")
def volume_raw(tmp_path_factory):
  """NIfTI volumes (MR, by their folder) in two orientations, a CT series of six DICOM files,
  a corrupt NIfTI file and a note that is not read."""
  nibabel = need("nibabel")
  root = tmp_path_factory.mktemp("volume_raw")
  os.makedirs(root / "mr")
  for n, codes in enumerate(("RAS", "LPS", "PIR")):
    voxels, affine = orient(asymmetric_volume() + 1 + n, SPACING, codes)
    nibabel.save(nibabel.Nifti1Image(voxels, affine), str(root / "mr" / f"subject{n}.nii.gz"))
  (root / "mr" / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
  (root / "mr" / "notes.txt").write_text("not an image")
  write_series(root / "ct" / "series1")
  return str(root)


@pytest.fixture(scope="module")
def volumes_ingested(volume_raw, tmp_path_factory):
  config = volume_ingest.VolumeIngestConfig(
      input=volume_raw, output=str(tmp_path_factory.mktemp("volumes")), salt="volume-salt",
      files_per_shard=1, spacing=(1.0, 1.0, 2.0))
  return config, ingest.ingest(config)


def test_volume_ingest_writes_one_record_per_volume_and_reports_bad_files(
    volumes_ingested, volume_raw):
  config, manifest = volumes_ingested
  assert manifest["counts"] == {"CT": 1, "MR": 3}  # six DICOM files: one series, one volume
  assert manifest["num_files"] == 10 and manifest["num_errors"] == 1
  assert manifest["shapes"] == {"4x7x9": 3, "85x85x8": 1}
  with open(os.path.join(config.output, ingest.ERRORS)) as f:
    errors = list(csv.DictReader(f))
  assert errors[0]["source_hash"] == records.salted_hash(
      os.path.join("mr", "corrupt.nii.gz"), "volume-salt")
  assert "corrupt" not in errors[0]["reason"] and "<file>" in errors[0]["reason"]
  index = shards.load_index(config.output)
  assert [row["modality"] for row in index] == ["CT", "MR", "MR", "MR"]
  assert len({row["series_hash"] for row in index}) == 4 and index[0]["patient_key"]
  assert volume_ingest.num_volumes(config.output) == 4
  source = volume_ingest.volume_source(config.output)
  assert len(source) == 4
  for k in range(3):  # every orientation: the same anatomy, resampled and z-scored
    volume = volumes.read_nifti(os.path.join(volume_raw, "mr", f"subject{k}.nii.gz"))
    expected = volumes.normalize(volumes.resample(volume.voxels, SPACING, (1, 1, 2)), "MR")
    assert source[1 + k].dtype == np.float32
    np.testing.assert_allclose(source[1 + k], expected, atol=2e-3)
  ct = source[0]
  assert ct.shape == (85, 85, 8) and 0.0 <= ct.min() and ct.max() <= 1.0


def test_no_identifier_or_file_name_reaches_any_volume_output(volumes_ingested, volume_raw):
  pydicom = need("pydicom")
  config, _ = volumes_ingested
  ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
  secrets = [str(ds.get(k)) for k in ("PatientID", "PatientName", "StudyInstanceUID",
                                      "SeriesInstanceUID", "SOPInstanceUID")]
  secrets += ["subject", "corrupt", "series1", "img0", "volume-salt", volume_raw]
  blob = b"".join(open(os.path.join(folder, name), "rb").read()
                  for folder, _, names in os.walk(config.output) for name in names)
  leaked = [s for s in secrets if s.encode() in blob]
  assert not leaked, leaked


def test_volume_ingest_rerun_rewrites_only_the_shard_without_its_mark(volumes_ingested):
  config, manifest = volumes_ingested
  names = manifest["shards"]
  mtimes = {n: os.stat(os.path.join(config.output, n)).st_mtime_ns for n in names}
  before = {n: open(os.path.join(config.output, n), "rb").read() for n in names}
  victim = names[2]
  os.remove(os.path.join(config.output, victim.replace(".array_record", ".json")))
  assert ingest.ingest(config) == manifest
  for n in names:
    assert open(os.path.join(config.output, n), "rb").read() == before[n]
    changed = os.stat(os.path.join(config.output, n)).st_mtime_ns != mtimes[n]
    assert changed == (n == victim), n


@pytest.mark.slow
def test_the_volume_command_line_runs_beam_and_refuses_bad_spacing(volume_raw, tmp_path):
  run = lambda *args: subprocess.run(
      [sys.executable, "-m", "data_pipelines.volume_ingest", f"--input={volume_raw}",
       "--salt=s", *args], cwd=ROOT, env=main_env(), capture_output=True, text=True, timeout=300)
  refused = run(f"--output={tmp_path / 'refused'}", "--spacing=1,1")
  assert refused.returncode == 1 and "--spacing takes three positive numbers" in refused.stderr
  done = run(f"--output={tmp_path / 'out'}", "--spacing=2,2,2", "--ct_window=-1000,1000",
             "--direct_num_workers=1")  # a Beam option: the Beam runner
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.startswith("volume_ingest: 4 volumes from 10 files {'CT': 1, 'MR': 3}")
  assert volume_ingest.num_volumes(str(tmp_path / "out")) == 4
