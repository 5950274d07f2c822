"""Hostile inputs through every door: a generated corpus of odd and broken files through the
ingest, and broken configs and weights files through the command line.

The ingest must never crash or hang, lose no good file, list every bad one, and write no
planted identifier anywhere; the command line must answer every mistake with one line that
names the field or file, and no traceback."""
import collections
import csv
import os
import resource
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, get_testdata_file, in_parallel, main_env, need, run_main


from data_pipelines import ingest, shards

# Identifiers planted in folder names, file names and DICOM headers.
PHI = ("DOE^JOHN", "MRN123456", "Smith_Jane", "MRN987654", "PLANTED^PATIENT", "PLANTEDID777",
       "19450101", "ACC4242")


def png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format="PNG")


def dicom(path, source="CT_small.dcm", **tags):
  pydicom = need("pydicom")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  ds = pydicom.dcmread(get_testdata_file(source))
  ds.PatientName, ds.PatientID, ds.PatientBirthDate = "PLANTED^PATIENT", "PLANTEDID777", "19450101"
  ds.AccessionNumber = "ACC4242"
  for key, value in tags.items():
    setattr(ds, key, value)
  ds.save_as(path)


def write(path, data: bytes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def hostile_corpus(root: str) -> tuple[collections.Counter, collections.Counter, int]:
  """Writes good files under odd names and bad files of many kinds below `root` (bytes paths,
  so that names need not be UTF-8); returns (good files per kind, bad files per kind, frames
  the good ones hold)."""
  nibabel = need("nibabel")
  pydicom = need("pydicom")
  good, bad, frames = collections.Counter(), collections.Counter(), 0
  for folder in ("us", "ct", "mr"):
    os.makedirs(os.path.join(root, folder), exist_ok=True)
  r = os.fsencode(root)
  rng = np.random.default_rng(0)
  picture = rng.integers(0, 255, (48, 64), np.uint8)
  names = [b"plain.png", b"\xff\xfe not utf-8.png", b"line\nbreak.png", b"carriage\rreturn.png",
           b"tab\there.png", "\u00fcber \u2603 \U0001F600.png".encode(), b"-leading-dash.png",
           b"'quoted\" name'.png", b"x" * 240 + b".png", b"Smith_Jane_MRN987654.png",
           b"spaces  in  name .png"]
  for name in names:
    png(os.path.join(r, b"us", b"DOE^JOHN_MRN123456", name), picture)
    good["PNG, hostile name"] += 1
  png(os.path.join(r, b"us", b"grey16.png"),
      (rng.integers(0, 65535, (40, 50))).astype(np.uint16))
  good["16-bit PNG"] += 1
  Image.fromarray(picture).save(os.path.join(root, "us", "photo.jpg"), quality=80)
  good["JPEG"] += 1
  dicom(os.path.join(root, "ct", "DOE^JOHN", "ct.dcm"))
  dicom(os.path.join(root, "ct", "no_extension"))
  good["DICOM"] += 2
  dicom(os.path.join(root, "us", "cine.dcm"), source="examples_ybr_color.dcm")
  good["multi-frame DICOM"] += 1
  nibabel.save(nibabel.Nifti1Image(rng.normal(0, 1, (16, 16, 4)).astype(np.float32), np.eye(4)),
               os.path.join(root, "mr", "volume.nii.gz"))
  good["NIfTI"] += 1
  frames = len(names) + 2 + 2 + 30 + 4

  ok_png = open(os.path.join(root, "us", "DOE^JOHN_MRN123456", "plain.png"), "rb").read()
  for rel, data, kind in [
      ("us/empty.png", b"", "empty"), ("ct/empty.dcm", b"", "empty"),
      ("mr/empty.nii.gz", b"", "empty"),
      ("us/truncated.png", ok_png[:len(ok_png) // 2], "truncated"),
      ("us/MRN123456_truncated.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 50, "truncated"),
      ("us/noise.png", rng.bytes(3000), "random bytes"),
      ("ct/noise.dcm", rng.bytes(3000), "random bytes"),
      ("ct/preamble_then_noise", b"\x00" * 128 + b"DICM" + rng.bytes(500), "random bytes"),
      ("us/text.jpeg", b"not an image at all\n" * 20, "text under an image name"),
      ("ct/notes.bin", b"\x00\x01", "unsupported kind")]:
    write(os.path.join(root, rel), data)
    bad[kind] += 1
  dicom(os.path.join(root, "ct", "nan_slope.dcm"), RescaleSlope="NaN")
  bad["non-finite values"] += 1
  ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
  del ds.PixelData
  ds.save_as(os.path.join(root, "ct", "no_pixels.dcm"))
  bad["DICOM without pixels"] += 1
  dicom(os.path.join(root, "ct", "huge_header.dcm"), Rows=65535, Columns=65535,
        NumberOfFrames=1000)
  bad["a header promising too many pixels"] += 1
  Image.new("1", (20000, 20000)).save(os.path.join(root, "us", "bomb.png"))
  bad["a header promising too many pixels"] += 1
  for value, name in ((np.nan, "nan.nii.gz"), (np.inf, "inf.nii.gz")):
    volume = np.ones((8, 8, 2), np.float32)
    volume[1, 1, 1] = value
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), os.path.join(root, "mr", name))
    bad["non-finite values"] += 1
  nibabel.save(nibabel.Nifti1Image(np.ones((4, 4, 2, 2), np.float32), np.eye(4)),
               os.path.join(root, "mr", "four_d.nii.gz"))
  bad["4-D NIfTI"] += 1
  header = nibabel.Nifti1Header()
  header.set_data_shape((30000, 30000, 400))
  write(os.path.join(root, "mr", "giant.nii"), header.binaryblock + b"\x00" * 100)
  bad["a header promising too many pixels"] += 1
  os.mkfifo(os.path.join(root, "us", "fifo.png"))
  os.symlink("/dev/zero", os.path.join(root, "ct", "zero.dcm"))
  os.symlink(os.path.join(root, "missing.png"), os.path.join(root, "us", "broken_link.png"))
  os.symlink(root, os.path.join(root, "mr", "loop"))
  bad["not a regular file (FIFO, device, broken link, link to a folder)"] += 4
  return good, bad, frames


def test_the_ingest_survives_a_hostile_corpus_and_leaks_nothing(tmp_path):
  good, bad, frames = hostile_corpus(str(tmp_path / "raw"))
  out, private = tmp_path / "shards", tmp_path / "error_paths.csv"
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "data_pipelines.ingest",
                         f"--input={tmp_path / 'raw'}", f"--output={out}", "--salt=s",
                         "--size=32", f"--error_paths={private}"],
                        cwd=ROOT, env=main_env(), capture_output=True, text=True, timeout=600)
  seconds = time.perf_counter() - start
  peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  assert proc.returncode == 0, proc.stderr[-3000:]  # no crash, no hang (the timeout)
  manifest = shards.load_manifest(str(out))
  assert manifest["num_records"] == frames  # no good file lost
  assert manifest["num_files"] == sum(good.values()) + sum(bad.values())  # every input counted
  with open(out / ingest.ERRORS) as f:
    errors = list(csv.DictReader(f))
  assert len(errors) == sum(bad.values()) and all(e["reason"] and e["file"] for e in errors)
  with open(private, encoding="utf-8", errors="surrogateescape") as f:
    named = {row["path"] for row in csv.DictReader(f)}
  assert {"us/fifo.png", "ct/zero.dcm", "ct/nan_slope.dcm", "mr/giant.nii"} <= named
  blob = b"".join(open(os.path.join(d, f), "rb").read()
                  for d, _, files in os.walk(out) for f in files)
  found = [s for s in PHI + ("DOE", "Smith", "\u00fcber") if s.encode() in blob]
  assert not found, found
  assert not os.path.exists(out / ingest.PLAN_DIR)
  print(f"hostile corpus: {dict(good)} good, {dict(bad)} bad; crashes 0, good lost 0, "
        f"identifiers found 0; {seconds:.1f} s, peak RSS {peak_mb:.0f} MB")


def test_a_killed_ingest_leaves_no_file_name_behind(tmp_path):
  hostile_corpus(str(tmp_path / "raw"))
  config = ingest.IngestConfig(input=str(tmp_path / "raw"), output=str(tmp_path / "out"),
                               salt="s", size=32)
  os.makedirs(config.output)
  ingest.plan(config)  # what a run killed after planning leaves
  blob = b"".join(open(os.path.join(d, f), "rb").read()
                  for d, _, files in os.walk(config.output) for f in files)
  assert not [s for s in PHI + ("plain", "bomb", "fifo") if s.encode() in blob]
  assert ingest.write_shard(0, config)["files"] > 0  # and the plan still reads back


def test_csv_mistakes_fail_naming_the_line_or_the_fix(tmp_path):
  from data_pipelines import DatasetError, downstream
  from vismae_jax import config_lib, protocol
  from vismae_jax.train import finetune

  def classification(rows: str, **changes):
    (tmp_path / "labels.csv").write_text("image,label\n" + rows)
    config = config_lib.finetune("classification", "tiny")
    config.data.csv = str(tmp_path / "labels.csv")
    config.update(changes)
    return config
  config = classification("a.png,0\nb.png,abc\n")
  with pytest.raises(DatasetError, match=r"labels.csv line 3: label='abc' is not a class index "
                     r"or 0\|1 flags"):
    finetune.read_labelled(config, config.data.csv)
  config = classification("a.png,0\nb.png,0\n")
  with pytest.raises(config_lib.ConfigError, match="every row has label 0"):
    finetune.read_labelled(config, config.data.csv)
  config = classification("a.png,0\nb.png,2\n")
  with pytest.raises(config_lib.ConfigError, match="num_classes=2: set it to 3"):
    finetune.read_labelled(config, config.data.csv)
  config = classification("".join(f"{i}.png,{i % 3}\n" for i in range(30)))
  config.finetune.num_classes = 3
  table = downstream.read_table(config.data.csv)
  with pytest.raises(config_lib.ConfigError, match=r"30 cases \(class 0: 10, class 1: 10, class "
                     r"2: 10; 30 groups\) cannot be split into 5 folds .* Lower "
                     r"config.protocol.folds"):
    protocol.splittable(config, table)
  (tmp_path / "latin1.csv").write_bytes("image,label\n\xe9t\xe9.png,0\n".encode("latin-1"))
  with pytest.raises(DatasetError, match="latin1.csv: not a UTF-8 CSV file"):
    downstream.read_table(str(tmp_path / "latin1.csv"))


HOSTILE_CONFIGS = {
    "--config.bogus_key=1": "the config has no setting 'bogus_key'",
    "--config.optim.lrr=0.1": 'Did you mean "lr" instead of "lrr"?',
    "--config.batch_size=0": "config.batch_size=0: must be positive",
    "--config.model.embed_dim=-16": "config.model.embed_dim=-16: must be positive",
    "--config.model.depths=(2,0,1,1)": "config.model.depths=(2, 0, 1, 1): must be positive",
    "--config.total_steps=-5": "neither may be negative",
    "--config.mae.mask_ratio=1.5": "config.mae.mask_ratio=1.5: must be in (0, 1)",
    "--config.input.image_size=0": "config.input.image_size=0: must be positive",
    "--config.mesh.data=3": "must equal the 1 devices",
}


@pytest.mark.slow
def test_every_config_mistake_is_one_line_before_any_work(tmp_path):
  def workdir(override):
    return tmp_path / override.strip("-").replace("=", "_")
  procs = in_parallel(lambda o: run_main(str(workdir(o)), o, check=False), HOSTILE_CONFIGS)
  for (override, expected), proc in zip(HOSTILE_CONFIGS.items(), procs):
    assert proc.returncode == 1, (override, proc.stderr[-2000:])
    assert expected in proc.stderr and "Traceback" not in proc.stderr, (override, proc.stderr)
    assert not workdir(override).exists(), override


def weights_files(folder) -> dict:
  """Broken weights files of many kinds: {path: what the error must say}."""
  import torch

  class Payload:
    def __reduce__(self):
      return (print, ("this must never run",))
  files = {folder / "empty.pth": "the file is empty",
           folder / "truncated.pth": "not a readable PyTorch checkpoint",
           folder / "pickled_code.pth": "it holds pickled objects beyond tensors",
           folder / "a_list.pth": "expected a state dict, found list",
           folder / "no_tensors.pth": "holds no tensors",
           folder / "garbage.safetensors": "not a readable PyTorch checkpoint",
           folder / "wrong_shapes.pth": "does not fit the model"}
  (folder / "empty.pth").write_bytes(b"")
  torch.save({"model": {"x": torch.zeros(3)}}, str(folder / "whole.pth"))
  (folder / "truncated.pth").write_bytes((folder / "whole.pth").read_bytes()[:200])
  torch.save({"model": {"x": torch.zeros(1)}, "code": Payload()}, str(folder / "pickled_code.pth"))
  torch.save([torch.zeros(1)], str(folder / "a_list.pth"))
  torch.save({"model": {"note": "text"}}, str(folder / "no_tensors.pth"))
  (folder / "garbage.safetensors").write_bytes(os.urandom(500))
  torch.save({"patch_embed.proj.weight": torch.zeros(5, 1, 4, 4)}, str(folder / "wrong_shapes.pth"))
  return files


@pytest.mark.slow
def test_every_unusable_weights_file_is_refused_before_the_data_is_read(
    tmp_path, sample_segmentation_csv):
  pytest.importorskip("torch")
  files = weights_files(tmp_path)
  def workdir(path):
    return tmp_path / ("run_" + path.name)
  procs = in_parallel(lambda path: run_main(
      str(workdir(path)), f"--config.data.csv={sample_segmentation_csv}",
      f"--config.finetune.pretrained={path}", config="configs/finetune_seg.py:tiny",
      check=False), files)
  for (path, expected), proc in zip(files.items(), procs):
    assert proc.returncode == 1 and expected in proc.stderr, (path.name, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "splits:" not in proc.stderr  # no data read
    assert str(path) in proc.stderr or "does not fit" in proc.stderr
    assert not workdir(path).exists(), path.name
