"""Evaluation splits, labelled sources (CSV convention and TFDS), mixture sampling."""
import csv
import os

import numpy as np
import pytest

from data_pipelines import downstream, pretrain_input, records, splits
from conftest import shared_dataset


def synthetic_labels(n=200, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.choice(3, n, p=[0.6, 0.3, 0.1])
  groups = rng.integers(0, 70, n)  # ~3 images per patient
  return labels, groups


def test_kfold_by_patient_is_disjoint_covering_and_stratified():
  labels, groups = synthetic_labels()
  folds = splits.kfold(labels, 5, groups, seed=1)
  tests = [te for _, te in folds]
  assert sorted(np.concatenate(tests).tolist()) == list(range(len(labels)))
  for train, test in folds:
    assert not set(groups[train]) & set(groups[test])  # no patient on both sides
    share = np.bincount(labels[test], minlength=3) / len(test)
    np.testing.assert_allclose(share, np.bincount(labels) / len(labels), atol=0.1)
  assert [te.tolist() for _, te in splits.kfold(labels, 5, groups, seed=1)] == \
      [te.tolist() for te in tests]  # deterministic


def test_fixed_split_is_about_72_8_20_by_patient():
  labels, groups = synthetic_labels(1000)
  train, val, test = splits.fixed_split(labels, groups, seed=0)
  assert len(train) + len(val) + len(test) == 1000
  np.testing.assert_allclose([len(train), len(val), len(test)], [720, 80, 200], atol=40)
  for a, b in ((train, val), (train, test), (val, test)):
    assert not set(groups[a]) & set(groups[b])


def test_label_fractions_are_nested_and_stratified():
  labels, _ = synthetic_labels(400)
  pool = np.arange(0, 400, 2)  # e.g. a fold's training indices
  subsets = splits.label_fractions(pool, labels, seed=3)
  assert list(subsets) == list(splits.LABEL_FRACTIONS)
  previous = set()
  for f, idx in subsets.items():
    assert set(idx) <= set(pool) and previous <= set(idx)
    previous = set(idx)
    for c in range(3):
      n_c = np.sum(labels[pool] == c)
      assert np.sum(labels[idx] == c) == int(np.ceil(f * n_c))  # every class, same fraction
  assert len(subsets[1.0]) == len(pool)


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


def write_png(path, array):
  from PIL import Image
  Image.fromarray(np.asarray(array, np.uint8)).save(path)


def test_unreadable_rows_are_left_out_and_listed_by_file(tmp_path):
  write_png(tmp_path / "good.png", np.random.default_rng(0).integers(0, 256, (48, 40)))
  write_png(tmp_path / "good_mask.png", np.pad(np.full((8, 8), 255), ((20, 20), (16, 16))))
  write_png(tmp_path / "wide_mask.png", np.zeros((48, 41)))
  with open(tmp_path / "good.png", "rb") as f:
    (tmp_path / "truncated.png").write_bytes(f.read()[:1000])  # of ~2 KB of noise
  (tmp_path / "text.png").write_text("not an image")
  (tmp_path / "labels.csv").write_text(
      "image,mask\ngood.png,good_mask.png\nmissing.png,good_mask.png\ntruncated.png,good_mask.png\n"
      "text.png,good_mask.png\ngood.png,wide_mask.png\ngood.png,good_mask.png\n")
  table = downstream.read_table(str(tmp_path / "labels.csv"))
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
  pytest.importorskip("tensorflow_datasets")
  from data_pipelines import tfds_builders  # the TFDS builder leaves the same rows out
  source = tfds_builders.load_source("bad_rows", str(tmp_path / "labels.csv"),
                                     str(tmp_path / "tfds"), size=32)
  assert len(source) == 2
  np.testing.assert_array_equal(source[1]["mask"], examples["mask"][1])
  (tmp_path / "none.csv").write_text("image,label\nmissing.png,0\ntext.png,1\n")
  with pytest.raises(ValueError, match="none of the 2 rows could be read; the first: .*missing"):
    downstream.load_readable(downstream.read_table(str(tmp_path / "none.csv")), 32)


def test_tfds_builders_for_busi_and_chest_xray(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  from data_pipelines import tfds_builders
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


def test_mixture_weights_set_modality_proportions(sample_dir):
  source = pretrain_input.record_source(sample_dir, ["US"])
  us = {records.decode_image(source[i]).tobytes() for i in range(len(source))}
  for weights, expected in (({"US": 1.0, "XR": 1.0}, 0.5), ({"US": 3.0, "XR": 1.0}, 0.75)):
    ds = pretrain_input.pretrain_dataset(sample_dir, modalities=(), seed=0, per_host_batch=8,
                                         process_index=0, process_count=1, mixture=weights)
    it = pretrain_input.make_iterator(ds, workers=0)
    share = np.mean([im.tobytes() in us for _ in range(50) for im in next(it)])
    assert abs(share - expected) < 0.03, (weights, share)
