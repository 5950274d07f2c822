"""The ingest pipeline: every good frame a record, bad files reported, no PHI in any output,
reruns that resume, and its command line."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from PIL import Image

from data_pipelines import ingest, pretrain_input, records, shards
from helpers import ROOT, get_testdata_file, main_env, need

DICOMS = {"ct/693_UNCR.dcm": "CT", "mr/MR_small.dcm": "MR", "xr/RG3_J2KI.dcm": "XR",
          "us/examples_ybr_color.dcm": "US"}


PHI_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
            "InstitutionName", "StudyInstanceUID", "SeriesInstanceUID", "ReferringPhysicianName")


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
  nibabel = need("nibabel")
  root = tmp_path_factory.mktemp("raw")
  for rel in DICOMS:
    os.makedirs(root / os.path.dirname(rel), exist_ok=True)
    shutil.copy(get_testdata_file(os.path.basename(rel)), root / rel)
  shutil.copy(get_testdata_file("CT_small.dcm"), root / "ct" / "no_extension")
  shutil.copy(get_testdata_file("MR_truncated.dcm"), root / "mr" / "corrupt.dcm")
  os.makedirs(root / "us" / "png")
  Image.fromarray(np.arange(64 * 48, dtype=np.uint8).reshape(48, 64)).save(root / "us/png/a.png")
  data = open(root / "us/png/a.png", "rb").read()
  open(root / "us/png/truncated.png", "wb").write(data[:len(data) // 2])
  volume = np.linspace(-1000, 1000, 32 * 32 * 5).reshape(32, 32, 5).astype(np.float32)
  nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), str(root / "ct" / "vol.nii.gz"))
  return str(root)


@pytest.fixture(scope="module")
def ingested(raw_dir, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("ingested"))
  error_paths = str(tmp_path_factory.mktemp("private") / "error_paths.csv")
  config = ingest.IngestConfig(input=raw_dir, output=out, salt="test-salt", size=64,
                               files_per_shard=3, error_paths=error_paths)
  manifest = ingest.ingest(config, beam_args=[])  # Beam's local default
  return config, manifest


def test_ingest_writes_every_good_frame_and_reports_bad_files(ingested):
  config, manifest = ingested
  # CT: 693 + no_extension + 5 NIfTI slices; MR: 1; XR: 1; US: 30 frames + a.png.
  assert manifest["counts"] == {"CT": 7, "MR": 1, "US": 31, "XR": 1}
  assert manifest["num_files"] == 9 and manifest["num_errors"] == 2
  with open(os.path.join(config.output, ingest.ERRORS)) as f:
    errors = list(csv.DictReader(f))
  # Rows name no file: its number in the sorted walk and its salted hash; the private map
  # (--error_paths, outside the output) says which files they are.
  with open(config.error_paths) as f:
    paths = {row["file"]: row["path"] for row in csv.DictReader(f)}
  assert {paths[row["file"]] for row in errors} == {
      os.path.join("mr", "corrupt.dcm"), os.path.join("us", "png", "truncated.png")}
  for row in errors:
    assert row["reason"] and "corrupt.dcm" not in row["reason"] and "truncated.png" not in (
        row["reason"])
    assert row["source_hash"] == records.salted_hash(paths[row["file"]], "test-salt")
  source = pretrain_input.record_source(config.output)
  index = shards.load_index(config.output)
  assert len(source) == len(index) == 40
  for i in (0, 17, 39):
    record = records.decode(source[i])
    assert record["image"].shape == (64, 64) and record["modality"] == index[i]["modality"]
    assert record["source_hash"] == index[i]["source_hash"]
  ct = [r for r in index if r["modality"] == "CT"]
  assert len({r["patient_key"] for r in ct}) == 3  # 693, CT_small, and none for the NIfTI
  png = [r for r in index if r["modality"] == "US"][-1]  # a.png: a picture names no patient
  assert png["patient_key"] == png["study_hash"] == png["series_hash"] == ""
  assert len(png["source_hash"]) == 16


def test_no_phi_value_reaches_any_output_byte(ingested, raw_dir):
  pydicom = need("pydicom")
  config, _ = ingested
  values = set()
  for rel in list(DICOMS) + ["ct/no_extension"]:
    ds = pydicom.dcmread(os.path.join(raw_dir, rel))
    values |= {str(ds.get(k, "")) for k in PHI_KEYS}
  values = {v for v in values if len(v) >= 4}
  assert {"CompressedSamples^RG3", "11RG3", "19790408", "FUJI95706"} <= values
  blob = b""
  for dirpath, _, names in os.walk(config.output):
    for name in names:
      blob += open(os.path.join(dirpath, name), "rb").read()
  leaked = [v for v in values if v.encode() in blob or v.replace("^", " ").encode() in blob]
  assert not leaked, leaked


def test_rerun_skips_finished_shards_and_rebuilds_missing_or_outdated_ones_identically(
    ingested):
  config, manifest = ingested
  names = manifest["shards"]
  before = {n: open(os.path.join(config.output, n), "rb").read() for n in names}
  mtimes = {n: os.stat(os.path.join(config.output, n)).st_mtime_ns for n in names}
  missing, outdated = (n.replace(".array_record", "") for n in names[1:3])
  for suffix in (".array_record", ".index.csv", ".json"):
    os.remove(os.path.join(config.output, missing + suffix))
  mark = os.path.join(config.output, outdated + ".json")  # as an older version wrote it
  with open(mark) as f:
    summary = json.load(f)
  with open(mark, "w") as f:
    json.dump({k: v for k, v in summary.items() if k != "shapes"}, f)
  again = ingest.ingest(config)  # in-process this time: the same records either way
  assert again == manifest
  for n in names:
    assert open(os.path.join(config.output, n), "rb").read() == before[n]
    rewritten = os.stat(os.path.join(config.output, n)).st_mtime_ns != mtimes[n]
    assert rewritten == n.startswith((missing, outdated))


def test_rerun_with_other_options_refuses(ingested):
  config, _ = ingested
  with pytest.raises(ValueError, match="was written with"):
    ingest.plan(ingest.IngestConfig(input=config.input, output=config.output, salt="test-salt",
                                    size=128, files_per_shard=3))


def test_shards_are_planned_so_that_every_core_has_work():
  assert ingest.auto_files_per_shard(999, 2) == 125  # 8 shards: 4 per core
  assert ingest.auto_files_per_shard(5, 2) == 1
  assert ingest.auto_files_per_shard(10 ** 7, 64) == ingest.MAX_FILES_PER_SHARD


def run_ingest(*args, env=None):
  return subprocess.run([sys.executable, "-m", "data_pipelines.ingest", *args], cwd=ROOT,
                        env=env or main_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_command_line_ingests_and_requires_a_salt(raw_dir, tmp_path):
  env = main_env()
  env.pop("VISMAE_INGEST_SALT", None)
  refused = run_ingest(f"--input={raw_dir}", f"--output={tmp_path / 'unsalted'}", env=env)
  assert refused.returncode == 1 and "--salt (or $VISMAE_INGEST_SALT) is required" in (
      refused.stderr) and "Traceback" not in refused.stderr
  assert not (tmp_path / "unsalted").exists()
  bad_window = run_ingest(f"--input={raw_dir}", f"--output={tmp_path}", "--salt=s",
                          "--fallback_window=CT:40")
  assert bad_window.returncode == 1 and "MODALITY:CENTER:WIDTH" in bad_window.stderr
  done = run_ingest(f"--input={raw_dir}", f"--output={tmp_path / 'shards'}", "--salt=s",
                    "--size=32", "--direct_num_workers=1")  # a Beam option passes through
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.startswith("ingest: 40 records from 9 files")
  assert shards.load_manifest(str(tmp_path / "shards"))["num_records"] == 40
