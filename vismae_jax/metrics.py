"""Evaluation metrics and statistics: Dice / precision / recall, ROC and PR AUC, confidence
intervals, DeLong's test, paired tests across folds.

Per-case metrics are numpy on the host (evaluation sets are small); AUCs come from scikit-learn
and tests from scipy, so the numbers are the ones reviewers recompute.
"""
import numpy as np

# scipy and scikit-learn are imported in the functions that use them: at the top they were
# about a second of every command's start, --help and --only_check_args included.


def segmentation_scores(pred, target, num_classes: int, hd95: bool = True,
                        spacing=None) -> dict:
  """Per-case, per-foreground-class Dice, precision and recall: arrays (N, num_classes - 1).

  pred, target: N integer label maps of any dimension, 2D images or 3D volumes: an (N, ...)
  array or a list (volumes differ in size). As MONAI's `ignore_empty`: Dice and recall are NaN
  where the class is absent from the target (nothing to find: leave the case out of the mean,
  use np.nanmean), precision is NaN where nothing was predicted. A prediction on a case without
  the class counts as precision 0. With `hd95` also the 95% Hausdorff distance, NaN unless both
  masks are non-empty: a distance transform per case, most of the cost, which validation during
  training leaves out. It is in pixels, or in mm with `spacing` (see `hausdorff95`): one
  spacing for every case, or a list of one per case.
  """
  pairs = [(np.asarray(p), np.asarray(t)) for p, t in zip(pred, target)]
  spacings = spacing if np.ndim(spacing) == 2 else [spacing] * len(pairs)
  classes = range(1, num_classes)
  shape = (len(pairs), len(classes))
  # True positives, predicted and target voxels of each case and class: (3, N, classes).
  tp, n_p, n_t = np.moveaxis(np.array(
      [[[np.sum((p == c) & (t == c)), np.sum(p == c), np.sum(t == c)] for c in classes]
       for p, t in pairs], np.float64).reshape(*shape, 3), -1, 0)
  with np.errstate(divide="ignore", invalid="ignore"):
    out = {"dice": np.where(n_t == 0, np.nan, 2 * tp / (n_p + n_t)),
           "precision": np.where(n_p == 0, np.nan, tp / n_p),
           "recall": np.where(n_t == 0, np.nan, tp / n_t)}
  if hd95:
    out["hd95"] = np.array([[hausdorff95(p == c, t == c, s) for c in classes]
                            for (p, t), s in zip(pairs, spacings)], np.float64).reshape(shape)
  return out


def _surface_distances(a, b, spacing):
  """Distances from each boundary voxel of mask a to the nearest boundary voxel of mask b, in
  units of `spacing` (None: voxels)."""
  from scipy import ndimage
  a_edge = a & ~ndimage.binary_erosion(a, border_value=0)
  b_edge = b & ~ndimage.binary_erosion(b, border_value=0)
  return ndimage.distance_transform_edt(~b_edge, sampling=spacing)[a_edge]


def hausdorff95(pred, target, spacing=None) -> float:
  """95th-percentile symmetric Hausdorff distance between two binary masks of any dimension,
  in pixels, or in mm with `spacing` (mm per axis, scipy's `sampling`).

  As MONAI's `compute_hausdorff_distance(percentile=95)` (with `spacing`): the larger of the two
  directed 95th percentiles of boundary-to-boundary distances. NaN if either mask is empty.
  """
  pred, target = np.asarray(pred, bool), np.asarray(target, bool)
  if not pred.any() or not target.any():
    return float("nan")
  return float(max(np.percentile(_surface_distances(pred, target, spacing), 95),
                   np.percentile(_surface_distances(target, pred, spacing), 95)))


def classification_scores(labels, probs) -> dict:
  """ROC AUC and PR AUC (average precision).

  labels (N,) class indices with probs (N, C): binary uses the positive class, multi-class is
  one-vs-rest macro. labels (N, C) 0/1 with probs (N, C): multi-label macro over classes that
  have both outcomes. Also accuracy for single-label tasks.
  """
  from sklearn import metrics as skm
  labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
  if labels.ndim == 2:
    keep = [c for c in range(labels.shape[1]) if 0 < labels[:, c].sum() < len(labels)]
    return {"roc_auc": skm.roc_auc_score(labels[:, keep], probs[:, keep], average="macro"),
            "pr_auc": skm.average_precision_score(labels[:, keep], probs[:, keep],
                                                  average="macro")}
  accuracy = float(np.mean(probs.argmax(axis=1) == labels))
  if probs.shape[1] == 2:
    return {"roc_auc": skm.roc_auc_score(labels, probs[:, 1]),
            "pr_auc": skm.average_precision_score(labels, probs[:, 1]), "accuracy": accuracy}
  onehot = np.eye(probs.shape[1])[labels]
  return {"roc_auc": skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"),
          "pr_auc": skm.average_precision_score(onehot, probs, average="macro"),
          "accuracy": accuracy}


def bootstrap_ci(statistic, *arrays, strata=None, n_resamples: int = 1000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
  """(estimate, low, high): percentile bootstrap over cases (the rows of `arrays` resampled
  together), with scipy.stats.bootstrap.

  `strata` (one label per case, e.g. the class for an AUC) resamples each stratum on its own
  and keeps its size, as pROC's stratified bootstrap does for ROC curves: every resample then
  holds every class, so a statistic that needs them all is always defined.
  """
  from scipy import stats
  arrays = [np.asarray(a) for a in arrays]
  estimate = float(statistic(*arrays))
  cases = np.arange(len(arrays[0]))
  groups = ([cases] if strata is None else
            [cases[np.asarray(strata) == s] for s in np.unique(strata)])
  # A stratum of one case is the same in every resample (scipy takes none under two).
  varying = [g for g in groups if len(g) > 1]
  fixed = np.concatenate([g for g in groups if len(g) == 1] + [np.zeros(0, int)])
  if not varying:
    return estimate, estimate, estimate

  def resampled(*indices):
    rows = np.concatenate([*indices, fixed])
    return statistic(*(a[rows] for a in arrays))
  result = stats.bootstrap(varying, resampled, n_resamples=n_resamples, vectorized=False,
                           confidence_level=level, method="percentile",
                           rng=np.random.default_rng(seed))
  interval = result.confidence_interval
  return estimate, float(interval.low), float(interval.high)


def delong_test(labels, scores_a, scores_b) -> dict:
  """DeLong, DeLong & Clarke-Pearson (1988): two correlated ROC AUCs on the same cases.

  Uses the structural components (placement values) computed with midranks (Sun & Xu 2014;
  scipy.stats.rankdata's average ranks).
  Returns both AUCs, their difference, its standard error, z and the two-sided p-value.
  """
  from scipy import stats
  labels = np.asarray(labels).astype(bool)
  scores = np.stack([np.asarray(scores_a, float), np.asarray(scores_b, float)])
  pos, neg = scores[:, labels], scores[:, ~labels]
  m, n = pos.shape[1], neg.shape[1]
  if m < 2 or n < 2:
    raise ValueError("DeLong's test needs at least two positive and two negative cases")
  aucs, v10, v01 = [], [], []
  for k in range(2):
    all_ranks = stats.rankdata(np.concatenate([pos[k], neg[k]]))
    pos_ranks, neg_ranks = stats.rankdata(pos[k]), stats.rankdata(neg[k])
    aucs.append((all_ranks[:m].sum() - m * (m + 1) / 2) / (m * n))
    v10.append((all_ranks[:m] - pos_ranks) / n)        # per positive: share of negatives below
    v01.append(1 - (all_ranks[m:] - neg_ranks) / m)    # per negative: share of positives above
  s10, s01 = np.cov(np.array(v10)), np.cov(np.array(v01))
  contrast = np.array([1.0, -1.0])
  variance = contrast @ s10 @ contrast / m + contrast @ s01 @ contrast / n
  diff = aucs[0] - aucs[1]
  if variance <= 0:
    return {"auc_a": aucs[0], "auc_b": aucs[1], "difference": diff, "se": 0.0, "z": 0.0,
            "p_value": 1.0}
  z = diff / np.sqrt(variance)
  return {"auc_a": aucs[0], "auc_b": aucs[1], "difference": diff, "se": float(np.sqrt(variance)),
          "z": float(z), "p_value": float(2 * stats.norm.sf(abs(z)))}


def paired_test(values_a, values_b) -> dict:
  """Paired t-test across folds (a vs b on the same folds) and the mean difference."""
  from scipy import stats
  a, b = np.asarray(values_a, float), np.asarray(values_b, float)
  result = stats.ttest_rel(a, b)
  p = float(result.pvalue) if np.isfinite(result.pvalue) else 1.0
  return {"mean_difference": float(np.mean(a - b)), "t": float(result.statistic),
          "p_value": p, "n": len(a)}


def case_test(values_a, values_b) -> dict:
  """Wilcoxon signed-rank test of per-case values (a vs b on the same cases; pairs with a NaN,
  cases with nothing to score, left out) and the median difference.

  Why beside the test across folds: with five folds a t-test has four degrees of freedom and
  misses small steady gains; segmentation papers compare methods case by case. It sees the
  cases' spread, not how much another training run would move each fold's model.
  """
  from scipy import stats
  d = np.asarray(values_a, float) - np.asarray(values_b, float)
  d = d[np.isfinite(d)]
  p = float(stats.wilcoxon(d).pvalue) if np.any(d) else 1.0
  return {"median_difference": float(np.median(d)) if len(d) else 0.0,
          "better": int(np.sum(d > 0)), "worse": int(np.sum(d < 0)), "p_value": p,
          "cases": len(d)}


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
  """(mean, low, high): t-interval of a mean over folds."""
  from scipy import stats
  values = np.asarray(values, float)
  mean = float(values.mean())
  if len(values) < 2 or np.ptp(values) == 0:  # no spread: scipy's interval would be NaN
    return mean, mean, mean
  low, high = stats.t.interval(level, len(values) - 1, loc=mean, scale=stats.sem(values))
  return mean, float(low), float(high)
