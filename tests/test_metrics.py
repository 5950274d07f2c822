"""Metrics against scikit-learn, hand-computed values, and DeLong on a worked example."""
import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from vismae_jax import metrics


def test_segmentation_scores_by_hand():
  target = np.zeros((2, 4, 4), int)
  target[0, :2, :2] = 1          # 4 lesion pixels
  pred = np.zeros_like(target)
  pred[0, :2, :1] = 1            # 2 predicted, both right
  pred[0, 3, 3] = 1              # and 1 wrong
  pred[1, 0, 0] = 1              # image 1 has no lesion: a false positive
  scores = metrics.segmentation_scores(pred, target, num_classes=2)
  np.testing.assert_allclose(scores["dice"][:, 0], [2 * 2 / (3 + 4), np.nan])  # nothing to find
  np.testing.assert_allclose(scores["precision"][:, 0], [2 / 3, 0.0])
  np.testing.assert_allclose(scores["recall"][:, 0], [2 / 4, np.nan])
  without_distances = metrics.segmentation_scores(pred, target, num_classes=2, hd95=False)
  assert without_distances.keys() == {"dice", "precision", "recall"}
  for name, values in without_distances.items():
    np.testing.assert_array_equal(values, scores[name])
  multi = metrics.segmentation_scores(np.array([[[1, 2]]]), np.array([[[1, 1]]]), 3)
  np.testing.assert_allclose(multi["dice"], [[2 / 3, np.nan]])  # class 2 absent: left out


def test_hausdorff95_by_hand():
  point = np.zeros((9, 9), bool)
  point[4, 4] = True
  other = np.zeros_like(point)
  other[7, 8] = True
  assert metrics.hausdorff95(point, other) == pytest.approx(5.0)  # the 3-4-5 triangle
  square = np.zeros_like(point)
  square[2:7, 2:7] = True  # 16 boundary pixels: 4 at 2, 8 at sqrt(5), 4 corners at sqrt(8)
  assert metrics.hausdorff95(square, square) == 0.0
  assert metrics.hausdorff95(square, point) == pytest.approx(np.sqrt(8))
  assert metrics.hausdorff95(point, square) == pytest.approx(np.sqrt(8))  # symmetric
  assert metrics.hausdorff95(point, other, spacing=(2.0, 1.0)) == pytest.approx(np.hypot(6, 4))
  assert np.isnan(metrics.hausdorff95(square, np.zeros_like(square)))
  scores = metrics.segmentation_scores(np.stack([square, point]).astype(int),
                                       np.stack([point, point]).astype(int), num_classes=2)
  np.testing.assert_allclose(scores["hd95"][:, 0], [np.sqrt(8), 0.0])


def test_segmentation_scores_on_volumes_by_hand():
  target = np.zeros((1, 4, 4, 4), int)
  target[0, :2, :2, :2] = 1                  # 8 voxels
  target[0, 3, 3, 3] = 2
  pred = np.zeros_like(target)
  pred[0, :2, :2, :1] = 1                    # 4 of them
  pred[0, 3, :, 3] = 2                       # 4 voxels, 1 right
  volumes = [pred[0], pred[0, :3]], [target[0], target[0, :3]]  # of two sizes: a list
  scores = metrics.segmentation_scores(*volumes, num_classes=3, hd95=False)
  np.testing.assert_allclose(scores["dice"], [[2 * 4 / 12, 2 * 1 / 5], [2 * 4 / 12, np.nan]])
  np.testing.assert_allclose(scores["precision"], [[1.0, 1 / 4], [1.0, np.nan]])
  np.testing.assert_allclose(scores["recall"], [[4 / 8, 1.0], [4 / 8, np.nan]])


def test_hausdorff95_is_in_mm_with_an_anisotropic_spacing():
  box = np.zeros((12, 12, 12), bool)
  box[2:6, 2:6, 2:6] = True
  spacing = (3.0, 1.0, 0.5)
  along_x, along_z = np.roll(box, 2, axis=0), np.roll(box, 2, axis=2)
  assert metrics.hausdorff95(box, along_x, spacing) == pytest.approx(2 * 3.0)
  assert metrics.hausdorff95(box, along_z, spacing) == pytest.approx(2 * 0.5)
  assert metrics.hausdorff95(box, along_z) == pytest.approx(2.0)  # voxels
  cases = np.stack([box, box]).astype(int), np.stack([along_x, along_z]).astype(int)
  one = metrics.segmentation_scores(*cases, num_classes=2, spacing=spacing)
  np.testing.assert_allclose(one["hd95"][:, 0], [6.0, 1.0])
  per_case = metrics.segmentation_scores(*cases, num_classes=2, spacing=[spacing, (1, 1, 2)])
  np.testing.assert_allclose(per_case["hd95"][:, 0], [6.0, 4.0])


def test_classification_scores_match_sklearn():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 200)
  probs = rng.dirichlet(np.ones(3), 200) + np.eye(3)[labels] * 0.3
  probs /= probs.sum(1, keepdims=True)
  s = metrics.classification_scores(labels, probs)
  assert s["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, probs, multi_class="ovr"))
  two = probs[:, :2] / probs[:, :2].sum(1, keepdims=True)
  binary = metrics.classification_scores(labels % 2, two)
  assert binary["roc_auc"] == pytest.approx(skm.roc_auc_score(labels % 2, two[:, 1]))
  multilabel = (rng.random((200, 4)) < 0.3).astype(float)
  scores = multilabel * 0.5 + rng.random((200, 4))
  ml = metrics.classification_scores(multilabel, scores)
  assert ml["roc_auc"] == pytest.approx(np.mean([skm.roc_auc_score(multilabel[:, c], scores[:, c])
                                                 for c in range(4)]))


def test_delong_on_a_worked_example():
  # Positives A (0.9, 0.8, 0.4), B (0.6, 0.5, 0.8); negatives A (0.7, 0.3), B (0.7, 0.2).
  # AUC_A = 5/6, AUC_B = 4/6. Placement values: V10_A = (1, 1, 1/2), V10_B = (1/2, 1/2, 1),
  # V01_A = (2/3, 1), V01_B = (1/3, 1). Var = c'S10c/3 + c'S01c/2 = (1/3)/3 + (1/18)/2 = 5/36,
  # so z = (1/6) / sqrt(5/36) = 1/sqrt(5).
  labels = [1, 1, 1, 0, 0]
  result = metrics.delong_test(labels, [0.9, 0.8, 0.4, 0.7, 0.3], [0.6, 0.5, 0.8, 0.7, 0.2])
  assert result["auc_a"] == pytest.approx(5 / 6) and result["auc_b"] == pytest.approx(4 / 6)
  assert result["se"] == pytest.approx(np.sqrt(5 / 36))
  assert result["z"] == pytest.approx(1 / np.sqrt(5))
  assert result["p_value"] == pytest.approx(2 * stats.norm.sf(1 / np.sqrt(5)))
  same = metrics.delong_test(labels, [0.9, 0.8, 0.4, 0.7, 0.3], [0.9, 0.8, 0.4, 0.7, 0.3])
  assert same["p_value"] == 1.0


def test_delong_detects_a_real_difference_and_aucs_match_sklearn():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 2, 300)
  good = labels + rng.normal(0, 0.6, 300)
  poor = labels + rng.normal(0, 2.0, 300)
  result = metrics.delong_test(labels, good, poor)
  assert result["auc_a"] == pytest.approx(skm.roc_auc_score(labels, good))
  assert result["auc_b"] == pytest.approx(skm.roc_auc_score(labels, poor))
  assert result["p_value"] < 1e-3


def test_bootstrap_ci_and_paired_test():
  rng = np.random.default_rng(2)
  values = rng.normal(0.8, 0.05, 100)
  estimate, low, high = metrics.bootstrap_ci(np.mean, values, n_resamples=1000)
  assert estimate == pytest.approx(values.mean()) and low < estimate < high
  assert high - low == pytest.approx(2 * 1.96 * values.std() / 10, rel=0.25)
  labels = np.array([0] * 50 + [1] * 50)
  auc, lo, hi = metrics.bootstrap_ci(skm.roc_auc_score, labels, labels + rng.normal(0, 1, 100))
  assert lo < auc < hi <= 1.0
  # Three positives in 40: plain resamples would often hold none, stratified ones always three.
  rare = np.array([1] * 3 + [0] * 37)
  seen = []
  auc, lo, hi = metrics.bootstrap_ci(lambda l, s: seen.append(l.sum()) or skm.roc_auc_score(l, s),
                                     rare, rare + rng.normal(0, 1, 40), strata=rare)
  assert set(seen) == {3} and 0 <= lo <= auc <= hi <= 1
  assert metrics.bootstrap_ci(np.mean, [0.7]) == (0.7, 0.7, 0.7)  # one case: no spread
  # By hand: differences 0.10, 0.07, 0.07, 0.11, 0.08 have mean 0.086 and squared deviations
  # summing to 0.00132, so t = 0.086 / sqrt(0.00132 / 4 / 5) on 4 degrees of freedom.
  paired = metrics.paired_test([0.8, 0.82, 0.79, 0.85, 0.81], [0.7, 0.75, 0.72, 0.74, 0.73])
  t = 0.086 / np.sqrt(0.00132 / 4 / 5)
  assert paired["mean_difference"] == pytest.approx(0.086) and paired["t"] == pytest.approx(t)
  assert paired["p_value"] == pytest.approx(2 * stats.t.sf(t, 4)) and paired["n"] == 5
  assert metrics.paired_test([0.7, 0.8], [0.8, 0.9])["t"] < 0  # the sign says which is better
  mean, lo, hi = metrics.mean_ci([1.0, 2.0, 3.0])
  assert mean == 2.0 and lo == pytest.approx(2 - stats.t.ppf(0.975, 2) * stats.sem([1, 2, 3]))


def test_case_test_pairs_cases_and_leaves_out_those_without_a_score():
  # Differences 0.1, 0.2, 0.03, 0.15, 0.05, 0.04 (the NaN pair left out): 6 cases, all better,
  # distinct ranks. Exactly, W- = 0 has probability 1/2^6 under the null: two-sided p = 2/64.
  a = [0.9, 0.8, np.nan, 0.75, 0.85, 0.55, 0.74]
  b = [0.8, 0.6, 0.5, 0.72, 0.7, 0.5, 0.7]
  result = metrics.case_test(a, b)
  assert result["cases"] == 6 and (result["better"], result["worse"]) == (6, 0)
  assert result["p_value"] == pytest.approx(2 / 64)
  assert result["median_difference"] == pytest.approx((0.05 + 0.1) / 2)
  # One of them worse, by the smallest difference (rank 1): P(W- <= 1) = 2/64, p = 4/64.
  worse = metrics.case_test([0.9, 0.8, 0.75, 0.85, 0.55, 0.69], [0.8, 0.6, 0.72, 0.7, 0.5, 0.7])
  assert (worse["better"], worse["worse"]) == (5, 1) and worse["p_value"] == pytest.approx(4 / 64)
  assert metrics.case_test(b, b)["p_value"] == 1.0
