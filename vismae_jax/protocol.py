"""Fine-tuning protocols: the runs over folds, label fractions and initialisations.

k-fold cross-validation (by patient, stratified) or a fixed split; inside each fold a
validation hold-out and nested label fractions; for every (fold, fraction, initialisation)
one fine-tuning run, or `protocol.repeats` runs with different seeds. Each run trains in
`runs/<name>/` with the same loop as pretraining, keeps its best checkpoint by validation Dice
or AUC, and is scored on the fold's test cases. A finished run leaves `result.json` and is
skipped when the protocol is started again, so an interrupted protocol resumes where it
stopped; the workdir keeps the config (`protocol_config.json`) and refuses to resume under a
different recipe. What the runs mean (statistics, tables, figures) is report.py's.
"""
import json
import os

import jax
import numpy as np
import tqdm
from absl import logging

from data_pipelines import downstream, splits
from vismae_jax import checkpoint, config_lib, parallel, report
from vismae_jax.train import finetune, loop


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


def _predictions_path(workdir: str, name: str) -> str:
  return os.path.join(workdir, "runs", name, "test_predictions.npy")


def run_one(config, name: str, workdir: str, mesh, examples: dict, train, val, test, init: str):
  """One fine-tuning run, scored on `test` with its best checkpoint (or its earlier result)."""
  out_dir = os.path.join(workdir, "runs", name)
  result_path = os.path.join(out_dir, "result.json")
  if os.path.exists(result_path):
    with open(result_path) as f:
      return json.load(f)
  task = finetune.make_task(config, examples, train, val, init)
  loop.train(task, config, out_dir, mesh)
  # On the mesh, as validation saw the parameters: predict keeps its one trace.
  params = jax.device_put(checkpoint.load_params(out_dir, task.best_metric),
                          parallel.replicated(mesh))
  predictions = finetune.predict_all(finetune.functions(config).predict, params,
                                     {k: v[test] for k, v in examples.items()},
                                     config.eval_batch_size)
  result = {"name": name, "init": init, "test": np.asarray(test).tolist(),
            "train_size": len(train), **report.score(config, predictions, examples, test)}
  if jax.process_index() == 0:
    if config.finetune.kind == config_lib.SEGMENTATION:
      np.save(_predictions_path(workdir, name), predictions.astype(np.uint8))
    with open(result_path, "w") as f:
      json.dump(result, f)
  checkpoint.keep_best_only(out_dir, task.best_metric)
  return result


def check_same_config(config, workdir: str):
  """Finished runs in `workdir` are reused only under the config that trained them.

  Why: a rerun resumes by run name, so a changed recipe (frozen encoders, other epochs, other
  weights) in an old workdir would silently report the old runs. It fails instead, naming the
  settings that differ; only those in PROTOCOL_RESUMABLE, which choose runs, may change.
  """
  path = os.path.join(workdir, "protocol_config.json")
  if os.path.exists(path):
    with open(path) as f:
      config_lib.check_unchanged(config, json.load(f), config_lib.PROTOCOL_RESUMABLE,
                                 f"the protocol in {workdir} ({path})")
  elif jax.process_index() == 0:
    with open(path, "w") as f:
      f.write(config.to_json(indent=1))


def plan(config, table: downstream.Table) -> list[tuple]:
  """Every run of the protocol: (fold, fraction, init, repeat, train, val, test)."""
  inits = report.INITS if (config.finetune.pretrained and config.protocol.compare_random) else (
      ("pretrained",) if config.finetune.pretrained else ("random",))
  return [(fold, fraction, init, repeat, subset, val, test)
          for fold, train, val, test in protocol_splits(config, table)
          for fraction, subset in splits.label_fractions(
              train, stratification_labels(table), tuple(config.protocol.fractions),
              seed=config.seed + fold).items()
          for init in inits
          for repeat in range(config.protocol.repeats)]


def run(config, workdir: str, mesh) -> dict:
  """The whole protocol of `config` on `mesh`; returns the summary (also written as the
  report)."""
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
  results = []
  # The protocol's progress (runs done, rate, ETA) on stderr; a long protocol is many runs.
  bar = tqdm.tqdm(plan(config, table), desc=f"{config.finetune.kind} runs", unit="run",
                  disable=jax.process_index() != 0)
  for fold, fraction, init, repeat, subset, val, test in bar:
    # Repeat 0 is the run of a single-repeat protocol, so that adding repeats reuses it.
    name = f"{init}_labels{round(fraction * 100):03d}_fold{fold}" + (
        f"_seed{repeat}" if repeat else "")
    logging.info("run %s: %d train, %d val, %d test cases", name, len(subset), len(val),
                 len(test))
    run_config = config.copy_and_resolve_references()
    run_config.seed = config.seed + repeat  # new layers, data order, augmentation; not splits
    result = run_one(run_config, name, workdir, mesh, examples, subset, val, test, init)
    results.append({**result, "fold": fold, "fraction": fraction})
    bar.set_postfix_str(f"{name}: {result['metric']:.3f}")
  summary = {**report.summarize(config, results), "skipped_rows": skipped}
  if jax.process_index() == 0:
    paths = report.write_report(config, workdir, summary)
    if config.finetune.kind == config_lib.SEGMENTATION:
      paths["overlays"] = report.write_overlays(
          workdir, results, examples, lambda name: np.load(_predictions_path(workdir, name)))
    print("Report: " + " | ".join(f"{k}: {v}" for k, v in paths.items()), flush=True)
  return summary
