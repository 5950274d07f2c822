"""Fine-tuning protocols: k-fold cross-validation or a fixed split, label fractions, pretrained
against random initialisation, and the report (JSON, CSV, Markdown with CIs, figures).

For every (fold, fraction, initialisation) one fine-tuning run, or `protocol.repeats` runs with
different seeds, trains in `runs/<name>/` with the same loop as pretraining, keeps its best
checkpoint by validation Dice or AUC, and is scored on the fold's test cases. A finished run
leaves `result.json` and is skipped when the protocol is started again, so an interrupted
protocol resumes where it stopped; the workdir keeps the config (`protocol_config.json`) and
refuses to resume under a different recipe.

Segmentation Dice is the mean over test images that contain the foreground (MONAI's
ignore_empty: a normal image has nothing to find); HD95, precision and recall (segmentation) and
PR AUC (classification) are reported beside the main metric. Repeats are averaged within their
fold (the metrics, and the per-case Dice or probabilities that the pooled statistics use), so
that training noise does not hide a difference between initialisations. Statistics: per
fraction and initialisation, the mean over folds with a t-interval and the pooled per-case
bootstrap CI (1,000 resamples); pretrained against random by a paired t-test across folds and,
for classification, DeLong's test on the pooled test predictions.
"""
import csv
import json
import os

import jax
import numpy as np
import tqdm
from absl import logging

from data_pipelines import downstream, splits
from vismae_jax import config_lib, figures, metrics
from vismae_jax.train import finetune, loop

INITS = ("pretrained", "random")
# Reported beside the main metric (means over folds); the first also in the CSV / Markdown.
SECONDARY = {True: ("hd95", "precision", "recall"), False: ("pr_auc",)}
# Settings that may change between invocations on one workdir: they choose which runs to do, or
# how to run them, not what a run computes.
RESUMABLE_CHANGES = ("protocol.max_folds", "protocol.fractions", "protocol.compare_random",
                     "protocol.repeats", "data.workers", "eval_batch_size", "log_every")


def stratification_labels(table: downstream.Table) -> np.ndarray:
  """Class per case for stratified splits (multi-label: the first positive flag, or none)."""
  labels = table.labels
  if labels.ndim == 2:
    return np.where(labels.any(axis=1), labels.argmax(axis=1), -1)
  return labels


def protocol_splits(config, table: downstream.Table):
  """[(fold, train, val, test)] from config.protocol: k-fold (by patient) or fixed 72/8/20."""
  p = config.protocol
  strat = stratification_labels(table)
  if p.kind == "fixed":
    train, val, test = splits.fixed_split(strat, table.groups, seed=config.seed)
    return [(0, train, val, test)]
  if p.folds_from_csv and table.folds is not None:
    folds = [(np.flatnonzero(table.folds != k), np.flatnonzero(table.folds == k))
             for k in np.unique(table.folds)]
  else:
    folds = splits.kfold(strat, p.folds, table.groups, seed=config.seed)
  out = []
  for k, (trainval, test) in enumerate(folds[:p.max_folds or None]):
    train, val = splits.holdout(trainval, strat, p.val_fraction, table.groups, config.seed + k)
    out.append((k, train, val, test))
  return out


def _nanmean(values) -> float:
  values = np.asarray(values, float)
  return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def score(config, predictions: np.ndarray, examples: dict, indices) -> dict:
  """Metrics of one run on its test cases, and the per-case values the statistics pool."""
  if config.finetune.kind == finetune.SEGMENTATION:
    s = metrics.segmentation_scores(predictions, examples["mask"][indices],
                                    config.finetune.num_classes)
    dice = s["dice"][~np.all(np.isnan(s["dice"]), axis=1)]  # images with something to find
    per_case = np.nanmean(dice, axis=1)
    return {"metric": float(per_case.mean()), "per_case": per_case.tolist(),
            **{k: _nanmean(s[k]) for k in SECONDARY[True]}}
  labels = examples["label"][indices]
  s = metrics.classification_scores(labels, predictions)
  return {"metric": float(s["roc_auc"]), "pr_auc": float(s["pr_auc"]),
          "probs": predictions.tolist(), "labels": labels.tolist()}


def run_one(config, name: str, workdir: str, examples: dict, train, val, test, init: str):
  out_dir = os.path.join(workdir, "runs", name)
  result_path = os.path.join(out_dir, "result.json")
  if os.path.exists(result_path):
    with open(result_path) as f:
      return json.load(f)
  task = finetune.make_task(config, examples, train, val, init)
  loop.train(task, config, out_dir)
  params = task.best_params(out_dir)
  predictions = finetune.predict_all(finetune.functions(config).predict, params,
                                     {k: v[test] for k, v in examples.items()},
                                     config.eval_batch_size)
  result = {"name": name, "init": init, "test": np.asarray(test).tolist(),
            "train_size": len(train), **score(config, predictions, examples, test)}
  if config.finetune.kind == finetune.SEGMENTATION and jax.process_index() == 0:
    np.save(os.path.join(out_dir, "test_predictions.npy"), predictions.astype(np.uint8))
  if jax.process_index() == 0:
    with open(result_path, "w") as f:
      json.dump(result, f)
  return result


def average_repeats(results: list[dict]) -> list[dict]:
  """One result per (fold, fraction, initialisation): its repeats' metrics and per-case values
  (Dice, predicted probabilities) averaged, their metrics kept as `repeat_metrics`."""
  groups = {}
  for r in results:
    groups.setdefault((r["fold"], r["fraction"], r["init"]), []).append(r)
  averaged = []
  for runs in groups.values():
    merged = {**runs[0], "repeat_metrics": [r["metric"] for r in runs]}
    for key in ("metric", *SECONDARY[True], *SECONDARY[False]):
      if key in runs[0]:
        merged[key] = _nanmean([r[key] for r in runs])
    for key in ("per_case", "probs"):
      if key in runs[0]:
        merged[key] = np.mean([r[key] for r in runs], axis=0).tolist()
    averaged.append(merged)
  return averaged


def summarize(config, results: list[dict]) -> dict:
  """Per fraction: each initialisation's fold values, mean with CI, pooled bootstrap CI, tests."""
  seg = config.finetune.kind == finetune.SEGMENTATION
  summary = {"metric": "dice" if seg else "roc_auc", "repeats": config.protocol.repeats,
             "fractions": [], "by_fraction": {}}
  for fraction in sorted({r["fraction"] for r in results}):
    rows = {init: sorted((r for r in results if r["fraction"] == fraction and r["init"] == init),
                         key=lambda r: r["fold"]) for init in INITS}
    entry = {}
    for init, runs in rows.items():
      if not runs:
        continue
      values = [r["metric"] for r in runs]
      mean, low, high = metrics.mean_ci(values)
      if seg:
        pooled = metrics.bootstrap_ci(np.mean, np.concatenate([r["per_case"] for r in runs]))
      else:
        labels = np.concatenate([r["labels"] for r in runs])
        probs = np.concatenate([r["probs"] for r in runs])
        pooled = metrics.bootstrap_ci(
            lambda l, p: metrics.classification_scores(l, p)["roc_auc"], labels, probs)
      entry[init] = {"mean": mean, "ci95": [low, high], "per_fold": values,
                     "per_fold_repeats": [r["repeat_metrics"] for r in runs],
                     "pooled": pooled[0], "pooled_bootstrap_ci95": [pooled[1], pooled[2]],
                     **{k: _nanmean([r[k] for r in runs]) for k in SECONDARY[seg]}}
    if all(rows[i] for i in INITS) and len(rows["pretrained"]) == len(rows["random"]):
      a, b = ([r["metric"] for r in rows[i]] for i in INITS)
      entry["paired_t_test"] = metrics.paired_test(a, b) if len(a) > 1 else None
      entry["p_value"] = entry["paired_t_test"]["p_value"] if len(a) > 1 else None
      if not seg and np.asarray(rows["pretrained"][0]["labels"]).ndim == 1 and \
          np.asarray(rows["pretrained"][0]["probs"]).shape[1] == 2:
        labels = np.concatenate([r["labels"] for r in rows["pretrained"]])
        entry["delong"] = metrics.delong_test(
            labels, *(np.concatenate([np.asarray(r["probs"])[:, 1] for r in rows[i]])
                      for i in INITS))
    summary["fractions"].append(fraction)
    summary["by_fraction"][str(fraction)] = entry
  return summary


def write_report(config, workdir: str, summary: dict) -> dict:
  """report.json, report.csv, report.md and label_efficiency.png; returns their paths."""
  paths = {k: os.path.join(workdir, f) for k, f in (
      ("json", "report.json"), ("csv", "report.csv"), ("markdown", "report.md"),
      ("curve", "label_efficiency.png"))}
  with open(paths["json"], "w") as f:
    json.dump(summary, f, indent=1)
  name = summary["metric"]
  second = SECONDARY[config.finetune.kind == finetune.SEGMENTATION][0]
  lines = [f"| labels | init | {name} (mean over folds) | 95% CI | pooled 95% CI (bootstrap) | "
           f"p (paired t) | {second} |", "| --- | --- | --- | --- | --- | --- | --- |"]
  with open(paths["csv"], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["fraction", "init", "mean", "ci_low", "ci_high", "pooled", "pooled_ci_low",
                "pooled_ci_high", "p_value", second, "per_fold"])
    for fraction in summary["fractions"]:
      entry = summary["by_fraction"][str(fraction)]
      for init in INITS:
        if init not in entry:
          continue
        e, p = entry[init], entry.get("p_value")
        w.writerow([fraction, init, e["mean"], *e["ci95"], e["pooled"],
                    *e["pooled_bootstrap_ci95"], p, e[second],
                    " ".join(f"{v:.4f}" for v in e["per_fold"])])
        p_text = "" if p is None or init != "pretrained" else f"{p:.3g}"
        lines.append(f"| {fraction:.0%} | {init} | {e['mean']:.4f} | {e['ci95'][0]:.4f}-"
                     f"{e['ci95'][1]:.4f} | {e['pooled_bootstrap_ci95'][0]:.4f}-"
                     f"{e['pooled_bootstrap_ci95'][1]:.4f} | {p_text} | {e[second]:.4f} |")
  if summary["skipped_rows"]:
    lines.append(f"\n{len(summary['skipped_rows'])} rows of {config.data.csv} could not be read "
                 "and were left out (`skipped_rows` in report.json).")
  with open(paths["markdown"], "w") as f:
    probe = config.finetune.probe_first
    how = ("with frozen encoders" if config.finetune.freeze_encoder else
           f"fine-tuning, the first {probe:.0%} with frozen encoders (LP-FT)" if probe
           else "fine-tuning")
    repeats = summary["repeats"]
    seeds = f" (each fold the mean of {repeats} seeds)" if repeats > 1 else ""
    f.write(f"# {config.finetune.kind} {how}: {name}{seeds}\n\n" + "\n".join(lines) + "\n")
  figures.label_efficiency_curve(summary, paths["curve"])
  return paths


def check_same_config(config, workdir: str):
  """Finished runs in `workdir` are reused only under the config that trained them.

  Why: a rerun resumes by run name, so a changed recipe (frozen encoders, other epochs, other
  weights) in an old workdir would silently report the old runs. It fails instead, naming the
  settings that differ; only those in RESUMABLE_CHANGES, which choose runs, may change.
  """
  path = os.path.join(workdir, "protocol_config.json")
  if os.path.exists(path):
    with open(path) as f:
      config_lib.check_unchanged(config, json.load(f), RESUMABLE_CHANGES,
                                 f"the protocol in {workdir} ({path})")
  elif jax.process_index() == 0:
    with open(path, "w") as f:
      f.write(config.to_json(indent=1))


def run(config, workdir: str) -> dict:
  """The whole protocol of `config`; returns the summary (also written as the report)."""
  config_lib.validate(config, jax.device_count(), jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  check_same_config(config, workdir)
  if not jax.config.jax_compilation_cache_dir:  # every run compiles the same step: once is enough
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "compile_cache"))
  table = downstream.read_table(config.data.csv)
  examples, readable, skipped = downstream.load_readable(table, config.input.image_size)
  table = table.subset(readable)
  for row in skipped[:5]:
    logging.warning("%s line %d left out: %s", config.data.csv, row["line"], row["problem"])
  if skipped:
    logging.warning("%d of %d rows of %s left out (unreadable); the report lists them",
                    len(skipped), len(skipped) + len(table), config.data.csv)
  inits = INITS if (config.finetune.pretrained and config.protocol.compare_random) else (
      ("pretrained",) if config.finetune.pretrained else ("random",))
  plan = [(fold, fraction, init, repeat, subset, val, test)
          for fold, train, val, test in protocol_splits(config, table)
          for fraction, subset in splits.label_fractions(
              train, stratification_labels(table), tuple(config.protocol.fractions),
              seed=config.seed + fold).items()
          for init in inits
          for repeat in range(config.protocol.repeats)]
  results = []
  # The protocol's progress (runs done, rate, ETA) on stderr; a long protocol is many runs.
  bar = tqdm.tqdm(plan, desc=f"{config.finetune.kind} runs", unit="run",
                  disable=jax.process_index() != 0)
  for fold, fraction, init, repeat, subset, val, test in bar:
    # Repeat 0 is the run of a single-repeat protocol, so that adding repeats reuses it.
    name = f"{init}_labels{round(fraction * 100):03d}_fold{fold}" + (
        f"_seed{repeat}" if repeat else "")
    logging.info("run %s: %d train, %d val, %d test cases", name, len(subset), len(val),
                 len(test))
    run_config = config.copy_and_resolve_references()
    run_config.seed = config.seed + repeat  # new layers, data order, augmentation; not splits
    result = run_one(run_config, name, workdir, examples, subset, val, test, init)
    results.append({**result, "fold": fold, "fraction": fraction})
    bar.set_postfix_str(f"{name}: {result['metric']:.3f}")
  summary = {**summarize(config, average_repeats(results)), "skipped_rows": skipped}
  if jax.process_index() == 0:
    paths = write_report(config, workdir, summary)
    if config.finetune.kind == finetune.SEGMENTATION:  # the most labels, pretrained if run
      last = max(results, key=lambda r: (r["fraction"], r["init"] == "pretrained", -r["fold"]))
      paths["overlays"] = figures.segmentation_overlays(
          examples["image"][last["test"][:8]], examples["mask"][last["test"][:8]],
          np.load(os.path.join(workdir, "runs", last["name"], "test_predictions.npy"))[:8],
          os.path.join(workdir, "overlays.png"), title=f"{last['name']}: ground truth (green), "
          "prediction (red)")
    print("Report: " + " | ".join(f"{k}: {v}" for k, v in paths.items()), flush=True)
  return summary
