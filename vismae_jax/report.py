"""What a fine-tuning protocol's runs mean: per-run scores, statistics tables, curves, overlays.

A run's score on its test cases (`score`) keeps the per-case values that the pooled statistics
need. Repeats (and few-shot draws) are averaged within their fold (the metrics, and the
per-case Dice or probabilities), so that training noise does not hide a difference between
initialisations. Per label fraction (or number of shots) and initialisation: the mean over
folds with a t-interval and the pooled per-case bootstrap CI; pretrained against random by a
paired t-test across folds and on the pooled test cases: for segmentation Wilcoxon's
signed-rank test on per-case Dice, for binary classification DeLong's test on the predictions.

How a run is scored and what the case-by-case tests are is each task kind's (tasks.py).
This module knows nothing of how runs are made (protocol.py); the names both need live here.
"""
import csv
import json
import os

import numpy as np

from vismae_jax import config_lib, figures, metrics, tasks

INITS = ("pretrained", "random")
# Where a run stands in a protocol: its label fraction, or its shots and their draw; its fold
# and repeat. A run has either a fraction or shots and draw.
PLACEMENT = ("fraction", "shots", "draw", "fold", "repeat")
# The training subsets a protocol reports: (run key, summary's list, summary's entries).
SUBSETS = (("fraction", "fractions", "by_fraction"), ("shots", "shots", "by_shots"))
OVERLAY_EACH = 2  # cases shown at the best, the median and the worst Dice


_nanmean = tasks.nanmean


def distance_unit(config) -> str:
  """HD95's unit: mm for volumes (their voxel spacing) and where the CSV gives pixel sizes,
  else pixels of the original images."""
  return "mm" if config.data.pixel_size_column or config_lib.volumetric(config) else "px"


def average_repeats(results: list[dict]) -> list[dict]:
  """One result per (fold, fraction or shots, initialisation): its repeats' and draws' metrics
  and per-case values (Dice, predicted probabilities) averaged, their metrics kept as
  `repeat_metrics` (by draw, then repeat)."""
  groups = {}
  for r in results:
    groups.setdefault((r["fold"], r.get("fraction"), r.get("shots"), r["init"]), []).append(r)
  averaged = []
  for runs in groups.values():
    runs = sorted(runs, key=lambda r: (r.get("draw", 0), r.get("repeat", 0)))
    merged = {**runs[0], "repeat_metrics": [r["metric"] for r in runs]}
    for key in ("metric", *(k for kind in tasks.KINDS.values() for k in kind.secondary)):
      if key in runs[0]:
        merged[key] = _nanmean([r[key] for r in runs])
    for key in ("per_case", "probs", "class_dice"):
      if key in runs[0]:
        merged[key] = np.mean([r[key] for r in runs], axis=0).tolist()
    averaged.append(merged)
  return averaged


def _compare(kind, results: list[dict]) -> dict:
  """One training subset's entry: per initialisation its fold values, mean with CI and pooled
  bootstrap CI; pretrained against random where both ran in every fold."""
  rows = {init: sorted((r for r in results if r["init"] == init), key=lambda r: r["fold"])
          for init in INITS}
  entry = {}
  for init, runs in rows.items():
    if not runs:
      continue
    values = [r["metric"] for r in runs]
    mean, low, high = metrics.mean_ci(values)
    pooled = kind.pooled_ci(runs)
    entry[init] = {"mean": mean, "ci95": [low, high], "per_fold": values,
                   "per_fold_repeats": [r["repeat_metrics"] for r in runs],
                   "pooled": pooled[0], "pooled_bootstrap_ci95": [pooled[1], pooled[2]],
                   **{k: _nanmean([r[k] for r in runs]) for k in kind.secondary}}
    if all("class_dice" in r for r in runs):  # per structure: mean and CI over folds
      entry[init]["class_dice"] = [dict(zip(("mean", "low", "high"), metrics.mean_ci(v)))
                                   for v in np.array([r["class_dice"] for r in runs]).T]
  if all(rows[i] for i in INITS) and len(rows["pretrained"]) == len(rows["random"]):
    a, b = ([r["metric"] for r in rows[i]] for i in INITS)
    entry["paired_t_test"] = metrics.paired_test(a, b) if len(a) > 1 else None
    entry["p_value"] = entry["paired_t_test"]["p_value"] if len(a) > 1 else None
    # the same test cases in each fold, in the same order
    entry.update(kind.case_test(rows["pretrained"], rows["random"]))
  return entry


def summarize(config, results: list[dict]) -> dict:
  """Per label fraction (`by_fraction`) and number of shots (`by_shots`): each
  initialisation's fold values, mean with CI, pooled bootstrap CI, tests."""
  kind = tasks.of(config)
  results = average_repeats(results)
  summary = {"metric": kind.metric, "repeats": config.protocol.repeats,
             "shot_draws": config.protocol.shot_draws, "units": kind.units(distance_unit(config))}
  for key, listed, entries in SUBSETS:
    values = sorted({r[key] for r in results if key in r})
    summary[listed] = values
    summary[entries] = {str(v): _compare(kind, [r for r in results if r.get(key) == v])
                        for v in values}
  return summary


def _markdown_title(config, summary: dict) -> str:
  probe = config.finetune.probe_first
  how = ("with frozen encoders" if config.finetune.freeze_encoder else
         f"fine-tuning, the first {probe:.0%} with frozen encoders (LP-FT)" if probe
         else "fine-tuning")
  repeats = summary["repeats"]
  seeds = f" (each fold the mean of {repeats} seeds)" if repeats > 1 else ""
  return f"# {config.finetune.kind} {how}: {summary['metric']}{seeds}"


def feature_reuse_table(reuse: dict) -> list[str]:
  """Markdown lines of protocol.feature_reuse's CKA: a row per initialisation, a column per
  encoder stage."""
  stages = list(next(iter(reuse["cka"].values())))
  return [f"Feature reuse: linear CKA between each encoder stage's output (mean over its tokens) "
          f"before and after fine-tuning, fold {reuse['fold']} at {reuse['fraction']:.0%} of "
          f"the labels, on {reuse['images']} validation images (1: the stage was kept as it was).",
          "", "| init | " + " | ".join(stages) + " |", "| --- |" + " --- |" * len(stages),
          *(f"| {init} | " + " | ".join(f"{v:.3f}" for v in cka.values()) + " |"
            for init, cka in reuse["cka"].items())]


def write_feature_reuse(reuse: dict, workdir: str) -> dict:
  """feature_reuse.md and the heatmap feature_reuse.png; returns their paths."""
  paths = {"feature_reuse": os.path.join(workdir, "feature_reuse.md"),
           "feature_reuse_heatmap": os.path.join(workdir, "feature_reuse.png")}
  with open(paths["feature_reuse"], "w") as f:
    f.write("\n".join(feature_reuse_table(reuse)) + "\n")
  stages = list(next(iter(reuse["cka"].values())))
  figures.heatmap([list(cka.values()) for cka in reuse["cka"].values()], list(reuse["cka"]),
                  stages, paths["feature_reuse_heatmap"], label="linear CKA",
                  title=f"feature reuse, fold {reuse['fold']}, {reuse['fraction']:.0%} labels")
  return paths


def case_test_lines(config, summary: dict) -> list[str]:
  """Pretrained against random case by case, where segmentation runs of both were made."""
  tests = [(_subset_label(config, key, value), summary[entries][str(value)]["wilcoxon"])
           for key, listed, entries in SUBSETS for value in summary[listed]
           if "wilcoxon" in summary[entries][str(value)]]
  if not tests:
    return []
  return ["", "Pretrained against random case by case (Wilcoxon signed-rank on per-case Dice "
          "over the test cases of all folds):", "",
          "| labels | cases | better / worse | median difference | p |",
          "| --- | --- | --- | --- | --- |",
          *(f"| {label} | {t['cases']} | {t['better']} / {t['worse']} | "
            f"{t['median_difference']:+.4f} | {t['p_value']:.3g} |" for label, t in tests)]


def class_dice_table(config, summary: dict) -> list[str]:
  """Markdown lines: Dice per foreground class (mean over folds and its 95% CI), where the runs
  scored it; several structures (the two hippocampus parts) can hide behind one mean."""
  rows = [(key, value, init, entry[init]["class_dice"])
          for key, listed, entries in SUBSETS for value in summary[listed]
          for entry in [summary[entries][str(value)]] for init in INITS
          if "class_dice" in entry.get(init, {})]
  if not rows or config.finetune.num_classes < 3:
    return []
  classes = range(1, config.finetune.num_classes)
  return ["", "Dice per class (mean over folds, 95% CI):", "",
          "| labels | init | " + " | ".join(f"class {c}" for c in classes) + " |",
          "| --- | --- |" + " --- |" * len(classes),
          *(f"| {_subset_label(config, key, value)} | {init} | " + " | ".join(
              f"{d['mean']:.4f} ({d['low']:.4f}-{d['high']:.4f})" for d in dice) + " |"
            for key, value, init, dice in rows)]


def _subset_label(config, key: str, value) -> str:
  """A table row's training subset: "25%" of the labels, "10 per class" or "10 shots"."""
  if key == "fraction":
    return f"{value:.0%}"
  return tasks.of(config).subset_label(value)


def _shots_note(config, summary: dict) -> str:
  """What the few-shot rows trained on, under the table."""
  what = tasks.of(config).shots_note
  draws = summary["shot_draws"]
  return (f"{what}, drawn from each fold's training cases"
          + (f"; each fold the mean of {draws} draws." if draws > 1 else "."))


def write_report(config, workdir: str, summary: dict) -> dict:
  """report.json, report.csv, report.md and label_efficiency.png, and the feature reuse where
  the summary has it; returns their paths."""
  paths = {k: os.path.join(workdir, f) for k, f in (
      ("json", "report.json"), ("csv", "report.csv"), ("markdown", "report.md"),
      ("curve", "label_efficiency.png"))}
  with open(paths["json"], "w") as f:
    json.dump(summary, f, indent=1)
  name = summary["metric"]
  second = tasks.of(config).secondary[0]
  unit = summary["units"].get(second)
  lines = [f"| labels | init | {name} (mean over folds) | 95% CI | pooled 95% CI (bootstrap) | "
           f"p (paired t) | {second}{f' ({unit})' if unit else ''} |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  with open(paths["csv"], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["fraction", "init", "mean", "ci_low", "ci_high", "pooled", "pooled_ci_low",
                "pooled_ci_high", "p_value", f"{second}_{unit}" if unit else second,
                "per_fold", "shots"])
    for key, listed, entries in SUBSETS:
      for value in summary[listed]:
        entry = summary[entries][str(value)]
        for init in INITS:
          if init not in entry:
            continue
          e, p = entry[init], entry.get("p_value")
          w.writerow([value if key == "fraction" else "", init, e["mean"], *e["ci95"],
                      e["pooled"], *e["pooled_bootstrap_ci95"], p, e[second],
                      " ".join(f"{v:.4f}" for v in e["per_fold"]),
                      value if key == "shots" else ""])
          p_text = "" if p is None or init != "pretrained" else f"{p:.3g}"
          lines.append(f"| {_subset_label(config, key, value)} | {init} | {e['mean']:.4f} | "
                       f"{e['ci95'][0]:.4f}-{e['ci95'][1]:.4f} | "
                       f"{e['pooled_bootstrap_ci95'][0]:.4f}-{e['pooled_bootstrap_ci95'][1]:.4f}"
                       f" | {p_text} | {e[second]:.4f} |")
  lines += case_test_lines(config, summary)
  lines += class_dice_table(config, summary)
  if summary["shots"]:
    lines.append(f"\n{_shots_note(config, summary)}")
  if summary["skipped_rows"]:
    lines.append(f"\n{len(summary['skipped_rows'])} rows of {config.data.csv} could not be read "
                 "and were left out (`skipped_rows` in report.json).")
  if "splits" in summary:
    lines.append(f"\nFolds: {summary['splits']['folds']}; {summary['splits']['groups']}.")
  if summary.get("feature_reuse"):
    lines += ["", *feature_reuse_table(summary["feature_reuse"])]
    paths.update(write_feature_reuse(summary["feature_reuse"], workdir))
  with open(paths["markdown"], "w") as f:
    f.write(_markdown_title(config, summary) + "\n\n" + "\n".join(lines) + "\n")
  figures.label_efficiency_curve(summary, paths["curve"])
  return paths


def summarize_evaluation(config, results: list[dict]) -> dict:
  """Models scored on one labelled set (evaluate.py): each with its bootstrap CI over the
  cases, and every pretrained run against the random run of the same fold, fraction (or shots
  and draw) and seed, tested on the same cases (paired: DeLong for a binary AUC, Wilcoxon on
  per-image Dice)."""
  kind = tasks.of(config)
  models = []
  for r in results:
    estimate, low, high = kind.pooled_ci([r])
    models.append({**{k: r[k] for k in ("name", "init", *PLACEMENT) if k in r},
                   "metric": estimate, "ci95": [low, high],
                   **{k: r[k] for k in kind.secondary}})
  comparisons = []
  for a in results:
    b = next((r for r in results if r.get("init") == "random" and a.get("init") == "pretrained"
              and all(r.get(k) == a.get(k) for k in PLACEMENT)), None)
    if b is None:
      continue
    test = {"pretrained": a["name"], "random": b["name"],
            "difference": a["metric"] - b["metric"]}
    for name, result in kind.case_test([a], [b]).items():
      test.update(test=name, p_value=result["p_value"])
    comparisons.append(test)
  return {"metric": kind.metric, "units": kind.units(distance_unit(config)),
          "models": models, "comparisons": comparisons}


def write_evaluation(config, output: str, summary: dict) -> dict:
  """report.json, report.csv (a row per model) and report.md; returns their paths."""
  paths = {k: os.path.join(output, f) for k, f in (
      ("json", "report.json"), ("csv", "report.csv"), ("markdown", "report.md"))}
  with open(paths["json"], "w") as f:
    json.dump(summary, f, indent=1)
  name, secondary = summary["metric"], tasks.of(config).secondary
  unit = summary["units"].get(secondary[0])
  header = [f"{k}_{unit}" if k == secondary[0] and unit else k for k in secondary]
  with open(paths["csv"], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["model", name, "ci_low", "ci_high", *header])
    for m in summary["models"]:
      w.writerow([m["name"], m["metric"], *m["ci95"], *(m[k] for k in secondary)])
  lines = [f"# {config.finetune.kind} models on {summary['input']}: {name}", "",
           f"| model | {name} | 95% CI (bootstrap over cases) | {header[0]} |",
           "| --- | --- | --- | --- |"]
  lines += [f"| {m['name']} | {m['metric']:.4f} | {m['ci95'][0]:.4f}-{m['ci95'][1]:.4f} | "
            f"{m[secondary[0]]:.4f} |" for m in summary["models"]]
  if summary["comparisons"]:
    lines += ["", "| pretrained | random | difference | test | p |",
              "| --- | --- | --- | --- | --- |"]
    lines += [f"| {c['pretrained']} | {c['random']} | {c['difference']:+.4f} | "
              f"{c.get('test', '')} | {c.get('p_value', float('nan')):.3g} |"
              for c in summary["comparisons"]]
  if summary["skipped_rows"]:
    lines.append(f"\n{len(summary['skipped_rows'])} rows could not be read and were left out "
                 "(`skipped_rows` in report.json).")
  with open(paths["markdown"], "w") as f:
    f.write("\n".join(lines) + "\n")
  return paths


def overlay_rows(dice: dict) -> list[tuple[str, int]]:
  """(label, case) rows for the overlays: OVERLAY_EACH cases at the best, the median and the
  worst of `dice` ({case: Dice}), each case once."""
  ranked = sorted(dice, key=dice.get, reverse=True)
  middle = (len(ranked) - OVERLAY_EACH) // 2
  picks = {"best": ranked[:OVERLAY_EACH], "median": ranked[middle:middle + OVERLAY_EACH],
           "worst": ranked[-OVERLAY_EACH:]}
  rows = []
  for what, chosen in picks.items():
    rows += [(f"{what}: case {case}", case) for case in chosen
             if case not in [c for _, c in rows]]
  return rows


def write_overlays(config, workdir: str, results: list[dict], examples: dict,
                   predictions) -> str:
  """overlays.png: the test cases at the best, median and worst Dice of the runs with the most
  labels, pooled over folds; each row the case with its ground truth and every initialisation's
  prediction with its Dice, so pretrained and random are compared on the same images.
  `predictions(run name)` loads a run's label maps (its test cases, in order)."""
  top = max(r["fraction"] for r in results if "fraction" in r)
  runs = [r for r in results if r.get("fraction") == top and r.get("repeat", 0) == 0]
  inits = [i for i in INITS if any(r["init"] == i for r in runs)]
  maps, dice = {i: {} for i in inits}, {i: {} for i in inits}
  for r in runs:
    for case, label_map in zip(r["test"], predictions(r["name"])):  # 2-D or volumes
      value = metrics.segmentation_scores(label_map[None], examples["mask"][case][None],
                                          config.finetune.num_classes, hd95=False)["dice"]
      maps[r["init"]][case], dice[r["init"]][case] = label_map, _nanmean(value)
  ranking = {c: d for c, d in dice[inits[0]].items() if not np.isnan(d)}  # something to find
  rows = overlay_rows(ranking)
  draw = (figures.volume_overlays if config_lib.volumetric(config) else
          figures.segmentation_overlays)
  return draw(
      [examples["image"][c] for _, c in rows], [examples["mask"][c] for _, c in rows],
      {i: [(maps[i][c], dice[i][c]) for _, c in rows] for i in inits},
      [label for label, _ in rows], os.path.join(workdir, "overlays.png"),
      title=f"test cases at {top:.0%} of the labels, by {inits[0]} Dice, all folds: ground "
            "truth (green), prediction (red)")
