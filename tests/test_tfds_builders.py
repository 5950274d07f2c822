"""TFDS builders over folder + CSV datasets, built and read without TensorFlow."""
import csv
import os

import numpy as np
import pytest

from data_pipelines import downstream, tfds_builders
from helpers import shared_dataset, write_csv_with_bad_rows


def test_a_built_dataset_holds_the_readable_rows_letterboxed(tmp_path):
  csv_path = write_csv_with_bad_rows(tmp_path)
  source = tfds_builders.load_source("bad_rows", csv_path, str(tmp_path / "tfds"), size=32)
  assert len(source) == 2  # the unreadable rows are left out, as fine-tuning leaves them out
  examples, _, _ = downstream.load_readable(downstream.read_table(csv_path), 32)
  np.testing.assert_array_equal(source[1]["mask"], examples["mask"][1])
  np.testing.assert_array_equal(source[0]["image"], examples["image"][0])
  np.testing.assert_array_equal(source[0]["orig_size"], [48, 40])
  assert source[0]["fold"] == -1 and source[0]["patient_key"] != b"good.png"


@pytest.mark.data
def test_tfds_builders_for_busi_and_chest_xray(tmp_path):
  busi = tfds_builders.load_source("busi", os.path.join(shared_dataset("busi"), "labels.csv"),
                                   str(tmp_path), size=32)
  assert len(busi) == 780
  ex = busi[0]
  assert ex["image"].shape == ex["mask"].shape == (32, 32) and ex["image"].dtype == np.uint8
  assert ex["label"] in (0, 1, 2) and 0 <= ex["fold"] < 5
  cxr_csv = os.path.join(shared_dataset("chest_xray_pneumonia"), "labels.csv")
  test = tfds_builders.load_source("chest_xray_pneumonia", cxr_csv, str(tmp_path), "test", 32)
  with open(cxr_csv, newline="") as f:
    rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
  assert len(test) == len(rows)
  assert {test[i]["patient_key"] for i in range(len(test))}.isdisjoint(
      {r["patient_key"].encode() for r in rows})  # hashed, never the raw key
