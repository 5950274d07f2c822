"""Evaluation splits: k folds by patient, the fixed split, nested label fractions and shots."""
import numpy as np
import pytest

from data_pipelines import splits


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


def test_shots_are_n_per_class_nested_and_drawn_by_their_seed_alone():
  labels, _ = synthetic_labels(400)
  pool = np.arange(0, 400, 2)
  subsets = splits.shots(pool, labels, (2, 5, 10), seed=(0, 1, 0))
  previous = set()
  for n, idx in subsets.items():
    assert set(idx) <= set(pool) and previous <= set(idx)
    previous = set(idx)
    assert np.bincount(labels[idx], minlength=3).tolist() == [n] * 3
  np.testing.assert_array_equal(splits.shots(pool, labels, (5,), seed=(0, 1, 0))[5], subsets[5])
  assert set(splits.shots(pool, labels, (5,), seed=(0, 1, 1))[5]) != set(subsets[5])
  in_all = splits.shots(pool, None, (3, 7), seed=0)
  assert len(in_all[7]) == 7 and set(in_all[3]) <= set(in_all[7]) <= set(pool)


def test_too_few_cases_name_each_short_class():
  labels = np.array([0] * 10 + [1] * 3 + [2] * 5)
  with pytest.raises(ValueError, match=r"^5 cases per class wanted, only 3 of class 1$"):
    splits.shots(np.arange(18), labels, (2, 5), seed=0)
  with pytest.raises(ValueError, match=r"only 3 of class 1, 0 of class 2$"):  # none in the pool
    splits.shots(np.arange(13), labels, (4,), seed=0)
  with pytest.raises(ValueError, match=r"^20 cases in all wanted, only 18$"):
    splits.shots(np.arange(18), None, (20,), seed=0)
