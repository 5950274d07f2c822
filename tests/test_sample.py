"""The bundled sample as shards: both modalities, and no identifier from its file names."""
import os

import numpy as np

from data_pipelines import pretrain_input, records, sample, shards


def test_sample_shards_hold_both_modalities(sample_dir):
  manifest = shards.load_manifest(sample_dir)
  assert manifest["counts"] == {"US": 96, "XR": 160}
  assert manifest["num_records"] == len(shards.load_index(sample_dir)) == 256
  source = pretrain_input.record_source(sample_dir)
  record = records.decode(source[200])
  assert record["image"].shape == (224, 224) and record["image"].dtype == np.uint8
  assert record["modality"] == "XR" and len(record["source_hash"]) == 16
  # The pictures name no patient, study or series: their keys are empty, not a shared hash.
  assert record["patient_key"] == record["study_hash"] == record["series_hash"] == ""
  assert 0.2 < manifest["pixel_mean"] < 0.6


def test_no_identifier_from_file_names_reaches_any_output(sample_dir):
  identifiers = set()
  for folder in ("us", "xr"):
    for name in os.listdir(os.path.join(sample.SAMPLE_DIR, folder)):
      identifiers |= {name, os.path.splitext(name)[0], name.rsplit("-", 1)[0]}
  assert "IM-0003" in identifiers  # patient numbers are in the chest X-ray file names
  blob = b"".join(open(os.path.join(sample_dir, f), "rb").read() for f in os.listdir(sample_dir))
  leaked = [i for i in identifiers if i.encode() in blob]
  assert not leaked, leaked
