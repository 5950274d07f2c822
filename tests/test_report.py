"""What runs mean: repeats averaged within folds, intervals, tests, and the report's files."""
import json
import os

import numpy as np
import pytest
from scipy import stats

from vismae_jax import config_lib, metrics, report


def classification_results(rng, folds=4):
  """Runs of two repeats per (fold, init); pretrained predictions separate the classes better."""
  config = config_lib.finetune("classification", "tiny")
  results = []
  for fold in range(folds):
    labels = rng.integers(0, 2, 40)
    for init, signal in (("pretrained", 1.5), ("random", 0.5)):
      for repeat in range(2):
        score = labels * signal + rng.normal(0, 1, 40)
        probs = np.stack([1 - stats.norm.cdf(score), stats.norm.cdf(score)], 1)
        results.append({"name": f"{init}_{fold}_{repeat}", "fold": fold, "fraction": 1.0,
                        "init": init, **report.score(config, probs, {"label": labels},
                                                     np.arange(40))})
  return results


def test_repeats_average_within_folds_and_the_tests_see_folds():
  results = classification_results(np.random.default_rng(0))
  config = config_lib.finetune("classification", "tiny")
  config.protocol.repeats = 2
  summary = report.summarize(config, results)
  entry = summary["by_fraction"]["1.0"]
  for init in report.INITS:
    runs = [r for r in results if r["init"] == init]
    per_fold = [np.mean([r["metric"] for r in runs if r["fold"] == k]) for k in range(4)]
    np.testing.assert_allclose(entry[init]["per_fold"], per_fold)
    assert entry[init]["per_fold_repeats"][0] == [runs[0]["metric"], runs[1]["metric"]]
    mean, low, high = metrics.mean_ci(per_fold)
    assert entry[init]["mean"] == pytest.approx(mean) and entry[init]["ci95"] == [low, high]
    low, high = entry[init]["pooled_bootstrap_ci95"]
    assert low < entry[init]["pooled"] < high
  pretrained, random = (entry[i]["per_fold"] for i in report.INITS)
  assert entry["p_value"] == pytest.approx(stats.ttest_rel(pretrained, random).pvalue)
  assert entry["delong"]["auc_a"] > entry["delong"]["auc_b"]
  assert entry["delong"]["p_value"] < 0.05


def test_the_report_files_say_the_same_numbers(tmp_path):
  config = config_lib.finetune("classification", "tiny")
  config.finetune.probe_first = 0.25
  summary = {**report.summarize(config, classification_results(np.random.default_rng(1))),
             "skipped_rows": [{"line": 3, "problem": "x.png: truncated"}]}
  paths = report.write_report(config, str(tmp_path), summary)
  with open(paths["json"]) as f:
    assert json.load(f)["by_fraction"]["1.0"]["p_value"] == summary["by_fraction"]["1.0"][
        "p_value"]
  markdown = open(paths["markdown"]).read()
  assert markdown.startswith("# classification fine-tuning, the first 25% with frozen encoders "
                             "(LP-FT): roc_auc")
  mean = summary["by_fraction"]["1.0"]["pretrained"]["mean"]
  assert f"| 100% | pretrained | {mean:.4f} |" in markdown and "1 rows of" in markdown
  assert open(paths["csv"]).read().count("\n") == 3  # the header and one row per init
  assert os.path.getsize(paths["curve"]) > 10_000


def test_segmentation_scores_pool_images_with_something_to_find(tmp_path):
  config = config_lib.finetune("segmentation", "tiny")
  masks = np.zeros((3, 8, 8), np.int64)
  masks[0, :4, :4] = 1
  masks[1, 4:, 4:] = 1  # image 2 has nothing to find
  predictions = masks.copy()
  predictions[1] = 0
  scored = report.score(config, predictions, {"mask": masks}, np.arange(3))
  assert scored["per_case"] == [1.0, 0.0] and scored["metric"] == 0.5
  images = np.zeros((3, 8, 8), np.uint8)
  results = [{"name": "random_labels100_fold0", "fraction": 1.0, "init": "random", "fold": 0,
              "test": [0, 1, 2]}]
  path = report.write_overlays(str(tmp_path), results, {"image": images, "mask": masks},
                               lambda name: predictions)
  assert os.path.getsize(path) > 0
