"""Labelled CSVs: the release's convention, multi-label, unreadable rows left out and listed."""
import csv
import os

import numpy as np
import pytest

from data_pipelines import downstream
from helpers import shared_dataset, write_csv_with_bad_rows


def write_release_csvs(folder, busi):
  with open(os.path.join(busi, "labels.csv"), newline="") as f:
    rows = list(csv.DictReader(f))[:30]
  for split, part in (("train", rows[:20]), ("val", rows[20:25]), ("test", rows[25:])):
    with open(os.path.join(folder, f"{split}_fold0.csv"), "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["image", "mask"])
      for r in part:
        w.writerow([os.path.join(busi, r["image"]), os.path.join(busi, r["mask"])])


def test_release_csv_convention_gives_aligned_images_and_masks(tmp_path):
  busi = shared_dataset("busi")
  write_release_csvs(tmp_path, busi)
  tables = downstream.release_fold_tables(str(tmp_path), 0)
  assert [len(t) for t in tables.values()] == [20, 5, 5]
  example = downstream.ExampleSource(tables["train"], 64)[0]
  assert example["image"].shape == example["mask"].shape == (64, 64)
  assert set(np.unique(example["mask"])) <= {0, 1} and example["mask"].any()
  assert example["image"][example["mask"] == 1].std() > 0  # real pixels under the lesion


def test_read_table_multilabel_and_errors(tmp_path):
  path = tmp_path / "labels.csv"
  path.write_text("image,label,patient_key\na.png,0|1|1,p1\nb.png,1|0|0,p2\n")
  table = downstream.read_table(str(path))
  np.testing.assert_array_equal(table.labels, [[0, 1, 1], [1, 0, 0]])
  assert table.labels.dtype == np.float32 and list(table.groups) == ["p1", "p2"]
  (tmp_path / "bad.csv").write_text("path,target\na.png,1\n")
  with pytest.raises(ValueError, match="bad.csv: expected columns image,mask"):
    downstream.read_table(str(tmp_path / "bad.csv"))


def test_unreadable_rows_are_left_out_and_listed_by_file(tmp_path):
  table = downstream.read_table(write_csv_with_bad_rows(tmp_path))
  examples, readable, skipped = downstream.load_readable(table, 32)
  np.testing.assert_array_equal(readable, [0, 5])
  assert examples["image"].shape == examples["mask"].shape == (2, 32, 32)
  assert examples["mask"].sum() > 0
  assert [row["line"] for row in skipped] == [3, 4, 5, 6]
  problems = [row["problem"] for row in skipped]
  assert "missing.png" in problems[0] and "No such file" in problems[0]
  assert problems[1].startswith(str(tmp_path / "truncated.png") + ":")
  assert "text.png" in problems[2] and "cannot identify image file" in problems[2]
  assert problems[3] == f"{tmp_path / 'wide_mask.png'}: the mask is 41x48 pixels, its image 40x48"
  (tmp_path / "none.csv").write_text("image,label\nmissing.png,0\ntext.png,1\n")
  with pytest.raises(ValueError, match="none of the 2 rows could be read; the first: .*missing"):
    downstream.load_readable(downstream.read_table(str(tmp_path / "none.csv")), 32)
