"""What runs mean: repeats averaged within folds, intervals, tests, and the report's files."""
import csv
import dataclasses
import json
import os

import numpy as np
import pytest
from scipy import stats

from data_pipelines import downstream
from helpers import picture
from vismae_jax import config_lib, metrics, report, tasks


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
                        "init": init, **tasks.of(config).score(config, probs, {"label": labels},
                                                     np.arange(40), None)})
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


def segmentation_results(rng, folds=4):
  """Per (fold, init) two runs at all the labels (seeds) and the same two at 2 shots (draws);
  pretrained a little better."""
  results = []
  for fold in range(folds):
    for init, shift in (("pretrained", 0.1), ("random", 0.0)):
      for run in range(2):
        per_case = np.clip(rng.normal(0.6 + shift, 0.1, 10), 0, 1)
        scored = {"init": init, "fold": fold, "metric": float(per_case.mean()),
                  "per_case": per_case.tolist(), "hd95": 5.0, "precision": 0.7, "recall": 0.7}
        results += [{**scored, "name": f"{init}_labels100_fold{fold}_seed{run}", "fraction": 1.0,
                     "repeat": run},
                     {**scored, "name": f"{init}_shots002_fold{fold}_draw{run}", "shots": 2,
                      "draw": run, "repeat": 0}]
  return results


def test_shot_draws_are_summarized_and_reported_as_fractions_are(tmp_path):
  config = config_lib.finetune("segmentation", "tiny")
  config.protocol.update(shots=(2,), shot_draws=2)
  results = segmentation_results(np.random.default_rng(0))
  summary = report.summarize(config, results)
  assert summary["fractions"] == [1.0] and summary["shots"] == [2]
  entry = summary["by_shots"]["2"]
  assert entry == summary["by_fraction"]["1.0"]  # draws average within the fold as seeds do
  pretrained, random = (entry[i]["per_fold"] for i in report.INITS)
  np.testing.assert_allclose(pretrained, [np.mean([r["metric"] for r in results if r.get(
      "shots") and r["init"] == "pretrained" and r["fold"] == k]) for k in range(4)])
  assert entry["p_value"] == pytest.approx(stats.ttest_rel(pretrained, random).pvalue)
  cases = {i: np.concatenate([np.mean([r["per_case"] for r in results if r.get("shots") and
                                       r["init"] == i and r["fold"] == k], axis=0)
                              for k in range(4)]) for i in report.INITS}
  assert entry["wilcoxon"]["cases"] == 40
  assert entry["wilcoxon"]["p_value"] == pytest.approx(
      stats.wilcoxon(cases["pretrained"], cases["random"]).pvalue)
  paths = report.write_report(config, str(tmp_path), {**summary, "skipped_rows": []})
  markdown = open(paths["markdown"]).read()
  assert f"| 2 shots | pretrained | {entry['pretrained']['mean']:.4f} |" in markdown
  assert (f"| 2 shots | 40 | {entry['wilcoxon']['better']} / {entry['wilcoxon']['worse']} | "
          in markdown)
  assert "N shots: N training images" in markdown and "the mean of 2 draws" in markdown
  with open(paths["csv"], newline="") as f:
    rows = [(r["fraction"], r["shots"], r["init"]) for r in csv.DictReader(f)]
  assert rows == [("1.0", "", "pretrained"), ("1.0", "", "random"), ("", "2", "pretrained"),
                  ("", "2", "random")]


def test_evaluation_compares_shot_runs_of_the_same_draw():
  config = config_lib.finetune("segmentation", "tiny")
  results = [r for r in segmentation_results(np.random.default_rng(0), folds=1) if "shots" in r]
  summary = report.summarize_evaluation(config, results)
  assert [(c["pretrained"], c["random"]) for c in summary["comparisons"]] == [
      (f"pretrained_shots002_fold0_draw{d}", f"random_shots002_fold0_draw{d}") for d in (0, 1)]
  assert {k: summary["models"][1][k] for k in ("shots", "draw", "fold", "repeat")} == {
      "shots": 2, "draw": 1, "fold": 0, "repeat": 0}


def test_segmentation_scores_pool_images_with_something_to_find():
  config = config_lib.finetune("segmentation", "tiny")
  masks = np.zeros((3, 8, 8), np.int64)
  masks[0, :4, :4] = 1
  masks[1, 4:, 4:] = 1  # image 2 has nothing to find
  predictions = masks.copy()
  predictions[1] = 0
  scored = tasks.of(config).score(config, predictions, {"mask": masks}, np.arange(3), np.ones(3))
  assert scored["per_case"] == [1.0, 0.0] and scored["metric"] == 0.5


def test_hd95_is_in_millimetres_where_the_csv_gives_pixel_sizes(tmp_path):
  """A point 5 model pixels from the target's (the 3-4-5 triangle) on 64 px inputs letterboxed
  from 100 x 200 images of 0.5 mm pixels: 5 * 200 / 64 * 0.5 mm; without a pixel size the
  same distance in pixels of the original image."""
  target, prediction = np.zeros((1, 64, 64), np.int64), np.zeros((1, 64, 64), np.int64)
  target[0, 10, 10], prediction[0, 13, 14] = 1, 1
  table = downstream.Table(images=["a.png"], masks=None, labels=None, groups=None, folds=None,
                           splits=None, pixel_sizes=np.array([0.5]), sizes=np.array([[100, 200]]))
  config = config_lib.finetune("segmentation", "tiny")
  config.data.pixel_size_column = "pixel_size_mm"
  kind = tasks.of(config)
  scored = kind.score(config, prediction, {"mask": target}, [0], table.distance_scale(64))
  assert scored["hd95"] == pytest.approx(5 * 200 / 64 * 0.5)
  assert report.distance_unit(config) == "mm"
  in_pixels = dataclasses.replace(table, pixel_sizes=None).distance_scale(64)
  config.data.pixel_size_column = ""
  assert tasks.of(config).score(config, prediction, {"mask": target}, [0], in_pixels)["hd95"] == (
      pytest.approx(5 * 200 / 64))
  summary = {**report.summarize(config, [{**scored, "name": "random_labels100_fold0", "fold": 0,
                                          "fraction": 1.0, "init": "random"}]),
             "skipped_rows": []}
  paths = report.write_report(config, str(tmp_path), summary)
  assert "| hd95 (px) |" in open(paths["markdown"]).read()
  assert ",hd95_px," in open(paths["csv"]).readline()


def test_overlays_show_the_best_median_and_worst_cases_each_once():
  dice = {case: value for case, value in enumerate([0.5, 0.9, 0.1, 0.7, 0.3, 0.8, 0.2, 0.6])}
  rows = report.overlay_rows(dice)
  # Ranked 1, 5, 3, 7, 0, 4, 6, 2: the top two, the middle two, the bottom two.
  assert [case for _, case in rows] == [1, 5, 7, 0, 6, 2]
  assert rows[0][0] == "best: case 1" and rows[-1][0] == "worst: case 2"
  few = report.overlay_rows({0: 0.4, 1: 0.6, 2: 0.5})
  assert sorted(case for _, case in few) == [0, 1, 2]  # every case once


def test_overlays_put_every_initialisation_on_the_same_cases(tmp_path):
  config = config_lib.finetune("segmentation", "tiny")
  rng = np.random.default_rng(0)
  masks = (rng.random((10, 16, 16)) < 0.3).astype(np.int64)
  images = rng.integers(0, 255, (10, 16, 16), np.uint8)
  results = [{"name": f"{init}_labels100_fold{fold}", "fraction": 1.0, "init": init,
              "fold": fold, "repeat": 0, "test": list(range(5 * fold, 5 * fold + 5))}
             for init in report.INITS for fold in range(2)]
  shown = {}

  def predictions(name):
    fold = int(name[-1])
    shown[name] = masks[5 * fold:5 * fold + 5] * (name.startswith("pretrained"))
    return shown[name]
  path = report.write_overlays(config, str(tmp_path), results,
                               {"image": images, "mask": masks}, predictions)
  assert len(shown) == 4  # both folds of both initialisations
  drawn = picture(path)  # ground truth in every row, predictions of the pretrained runs
  assert drawn["lime"] > 1e-3 and drawn["red"] > 1e-3
