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


@pytest.mark.data
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
  assert readable.images == [table.images[0], table.images[5]]
  np.testing.assert_array_equal(readable.sizes, [[48, 40], [48, 40]])  # before letterboxing
  np.testing.assert_array_equal(readable.labels, [1, 1])  # no label column: the mask has some
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


def test_columns_are_named_by_the_config_and_named_columns_must_exist(tmp_path):
  (tmp_path / "labels.csv").write_text(
      "image,label,subject_id,fold,pixel_size_mm\na.png,0,s1,0,0.1\nb.png,1,s1,1,0.25\n")
  columns = downstream.Columns(group="subject_id", pixel_size="pixel_size_mm")
  table = downstream.read_table(str(tmp_path / "labels.csv"), columns)
  assert list(table.groups) == ["s1", "s1"] and list(table.folds) == [0, 1]
  np.testing.assert_allclose(table.pixel_sizes, [0.1, 0.25])
  with pytest.raises(ValueError, match="no pixel size column 'spacing'; its columns are"):
    downstream.read_table(str(tmp_path / "labels.csv"), downstream.Columns(pixel_size="spacing"))
  (tmp_path / "zero.csv").write_text("image,label,pixel_size_mm\na.png,0,0.1\nb.png,1,0\n")
  with pytest.raises(ValueError, match="holds sizes <= 0 \\(line 3\\)"):
    downstream.read_table(str(tmp_path / "zero.csv"),
                          downstream.Columns(pixel_size="pixel_size_mm"))
  # By default the fold column is read where the CSV has one; "" reads none.
  assert downstream.read_table(str(tmp_path / "labels.csv"),
                               downstream.Columns(fold="")).folds is None
