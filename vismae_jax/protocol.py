"""Fine-tuning protocols: the runs over folds, label fractions and initialisations.

k-fold cross-validation (by patient, stratified) or a fixed split; inside each fold a
validation hold-out, nested label fractions and, with `protocol.shots`, nested few-shot draws
(`protocol.shot_draws` of them); for every (fold, fraction or shots and draw, initialisation)
one fine-tuning run, or `protocol.repeats` runs with different seeds. Each run trains in
`runs/<name>/` with the same loop as pretraining, keeps its best checkpoint by validation Dice
or AUC, and is scored on the fold's test cases. A finished run leaves `result.json` (and, for
segmentation, its test predictions) and is skipped when the protocol is started again, so an
interrupted protocol resumes where it stopped; the workdir keeps the config
(`protocol_config.json`) and refuses to resume under a different recipe. What the runs mean
(statistics, tables, figures) is report.py's; what a kind of task scores, tasks.py's.
"""
import json
import os
import re
import time

import jax
import numpy as np
import tqdm
from absl import logging

from data_pipelines import downstream, locks, splits
from data_pipelines.labelled import stratification_labels
from vismae_jax import analysis, checkpoint, config_lib, inference, parallel, report
from vismae_jax import resume_guard, tasks
from vismae_jax.train import finetune, loop


def describe_splits(config, table: downstream.Table) -> dict:
  """How the cases were split, in words: for the log and report.json."""
  d, p = config.data, config.protocol
  if p.kind == "fixed":
    folds = "one fixed 72/8/20 split, stratified by label"
  elif table.folds is not None:
    folds = (f"the CSV's {d.fold_column!r} column ({len(np.unique(table.folds))} folds; "
             "config.protocol.folds is not used)")
  else:
    folds = f"{p.folds} folds drawn, stratified by label"
  if table.groups is not None:
    groups = (f"grouped by the CSV's {d.group_column!r} column: {len(np.unique(table.groups))} "
              f"groups of {len(table)} cases never straddle a split")
  elif not d.group_column:
    groups = "not grouped (config.data.group_column is empty): every case is its own group"
  else:
    groups = (f"not grouped: the CSV has no {d.group_column!r} column, so every image is its own "
              "group and images of one patient may land on both sides of a split (name the "
              "column with --config.data.group_column)")
  return {"folds": folds, "groups": groups}


def protocol_splits(config, table: downstream.Table):
  """[(fold, train, val, test)] from config.protocol: k-fold (the CSV's folds, or drawn by
  group) or fixed 72/8/20; validation hold-outs are drawn by group."""
  p = config.protocol
  strat = stratification_labels(table)
  if p.kind == "fixed":
    train, val, test = splits.fixed_split(strat, table.groups, seed=config.seed)
    return [(0, train, val, test)]
  if table.folds is not None:
    folds = [(np.flatnonzero(table.folds != k), np.flatnonzero(table.folds == k))
             for k in np.unique(table.folds)]
  else:
    folds = splits.kfold(strat, p.folds, table.groups, seed=config.seed)
  out = []
  for k, (trainval, test) in enumerate(folds[:p.max_folds or None]):
    train, val = splits.holdout(trainval, strat, p.val_fraction, table.groups, config.seed + k)
    out.append((k, train, val, test))
  return out


def _run_path(workdir: str, name: str, file: str) -> str:
  return os.path.join(workdir, "runs", name, file)


def _labelled(result: dict, run: dict) -> dict:
  """A run's result with where it stands in the protocol, for the report."""
  return {**result, **{k: run[k] for k in report.PLACEMENT if k in run}}


def run_one(config, run: dict, workdir: str, mesh, examples: dict, distance_scale) -> dict:
  """Trains one planned run and scores its best checkpoint on the run's test cases."""
  out_dir = os.path.dirname(_run_path(workdir, run["name"], ""))
  task = finetune.make_task(config, examples, run["train"], run["val"], run["init"], mesh)
  loop.train(task, config, out_dir, mesh)
  # On the mesh, as validation saw the parameters: predict keeps its one trace.
  params = jax.device_put(checkpoint.load_params(out_dir, task.best_metric),
                          parallel.replicated(mesh))
  test, kind = run["test"], tasks.of(config)
  predictions = inference.predict_cases(finetune.functions(config).predict, params,
                                        examples["image"][test], config, mesh)
  result = {"name": run["name"], "init": run["init"], "test": np.asarray(test).tolist(),
            "train_size": len(run["train"]),
            **kind.score(config, predictions, examples, test, distance_scale[test])}
  if jax.process_index() == 0:
    if kind.saves_predictions:  # volumes: one array per case
      np.savez_compressed(_run_path(workdir, run["name"], PREDICTIONS), *predictions)
    with open(_run_path(workdir, run["name"], "result.json"), "w") as f:
      json.dump(result, f)
  checkpoint.keep_best_only(out_dir, task.best_metric)
  return result


PREDICTIONS = "test_predictions.npz"  # a run's label maps of its test cases, in order


def run_outputs(config) -> tuple[str, ...]:
  """The files of a finished run. A run missing one (an older version's, which kept no
  predictions) is run again rather than breaking the report."""
  return ("result.json",) + ((PREDICTIONS,) if tasks.of(config).saves_predictions else ())


def saved_predictions(workdir: str, name: str) -> list[np.ndarray]:
  with np.load(_run_path(workdir, name, PREDICTIONS)) as saved:
    return [saved[f"arr_{i}"] for i in range(len(saved.files))]


# Validation images per feature-reuse comparison: a forward pass of tens of images per model.
FEATURE_REUSE_IMAGES = 32


def starting_params(config, init: str, mesh):
  """A run's parameters at step 0 (host arrays), remade as loop.initial_state made them: the
  random init of the run's seed, with the pretrained weights transferred in for `pretrained`."""
  params = jax.jit(finetune.functions(config).init_params, out_shardings=parallel.replicated(
      mesh))(loop.init_key(config.seed))
  params = jax.device_get(params)
  return finetune.pretrained_params(config, params) if init == "pretrained" else params


def feature_reuse(config, runs: list[dict], workdir: str, mesh, examples: dict) -> dict:
  """Linear CKA per encoder stage between the start and the end of fine-tuning (analysis.py)
  for each initialisation's run with the most labels in the first fold (its first seed), on
  the same validation images of that fold: up to FEATURE_REUSE_IMAGES of them."""
  if config.model.arch == "vit":
    return None  # analysis.feature_reuse compares the Swin's stages
  fold = min(r["fold"] for r in runs)
  top = max(r["fraction"] for r in runs if r["fold"] == fold and "fraction" in r)
  chosen = [r for r in runs if (r["fold"], r.get("fraction"), r["repeat"]) == (fold, top, 0)]
  images = [examples["image"][i] for i in chosen[0]["val"][:FEATURE_REUSE_IMAGES]]
  if not config_lib.volumetric(config):
    images = np.stack(images)
  cka = {}
  for r in chosen:  # repeat 0: trained under config.seed
    finetuned = checkpoint.load_params(os.path.dirname(_run_path(workdir, r["name"], "")),
                                       tasks.of(config).best_metric)
    cka[r["init"]] = analysis.feature_reuse(config, starting_params(config, r["init"], mesh),
                                            finetuned, images)
  return {"fold": fold, "fraction": top, "images": len(images),
          "runs": {r["init"]: r["name"] for r in chosen}, "cka": cka}


def check_same_config(config, workdir: str):
  """Finished runs in `workdir` are reused only under the config that trained them.

  Why: a rerun resumes by run name, so a changed recipe (frozen encoders, other epochs, other
  weights) in an old workdir would silently report the old runs. It fails instead, naming the
  settings that differ; only those in PROTOCOL_RESUMABLE, which choose runs, may change.
  """
  path = os.path.join(workdir, "protocol_config.json")
  if os.path.exists(path):
    with open(path) as f:
      resume_guard.check_unchanged(config, json.load(f), resume_guard.PROTOCOL_RESUMABLE,
                                 f"the protocol in {workdir} ({path})")
  elif jax.process_index() == 0:
    with open(path, "w") as f:
      f.write(config.to_json(indent=1))


RUN_NAME = re.compile(r"^(?P<init>pretrained|random)_(?:labels(?P<percent>\d+)|shots(?P<shots>\d+))"
                      r"_fold(?P<fold>\d+)(?:_draw(?P<draw>\d+))?(?:_seed(?P<repeat>\d+))?$")


def run_name(init: str, fold: int, repeat: int, fraction: float | None = None,
             shots: int | None = None, draw: int = 0) -> str:
  """A run's folder under runs/: its label fraction, or its shots and draw. Repeat 0 and draw 0
  add nothing, so that adding repeats or draws reuses the runs of a protocol without them."""
  labels = f"shots{shots:03d}" if shots is not None else f"labels{round(fraction * 100):03d}"
  return f"{init}_{labels}_fold{fold}" + (f"_draw{draw}" if draw else "") + (
      f"_seed{repeat}" if repeat else "")


def parse_run_name(name: str) -> dict | None:
  """{init, fraction, fold, repeat} or {init, shots, draw, fold, repeat} of a run folder's name
  (run_name's arguments), or None for another name."""
  m = RUN_NAME.match(name)
  if not m or (m["percent"] and m["draw"]):
    return None
  labels = ({"fraction": int(m["percent"]) / 100} if m["percent"] else
            {"shots": int(m["shots"]), "draw": int(m["draw"] or 0)})
  return {"init": m["init"], **labels, "fold": int(m["fold"]), "repeat": int(m["repeat"] or 0)}


def splittable(config, table: downstream.Table) -> list:
  """protocol_splits, or the reason the cases cannot be split so, with the numbers and the
  settings to change (scikit-learn's own message names neither)."""
  try:
    return protocol_splits(config, table)
  except ValueError as e:
    p = config.protocol
    classes = np.unique(stratification_labels(table), return_counts=True)
    counts = ", ".join(f"class {c}: {n}" for c, n in zip(*classes))
    groups = len(np.unique(table.groups)) if table.groups is not None else len(table)
    folds = "the CSV's folds" if table.folds is not None else f"{p.folds} folds"
    raise config_lib.ConfigError(
        f"{config.data.csv}: {len(table)} cases ({counts}; {groups} groups) cannot be split into "
        f"{folds} with a {p.val_fraction:.0%} validation hold-out in each: "
        f"{str(e).rstrip('.')}. Lower "
        "config.protocol.folds, raise config.protocol.val_fraction, or use more cases") from e


def shot_subsets(config, table: downstream.Table, fold: int,
                 train) -> list[tuple[dict, np.ndarray]]:
  """[({shots, draw}, subset of `train`)] of config.protocol.shots in one fold: N cases per
  class (stratification_labels) or, for segmentation, N images; a ConfigError naming the
  classes and counts where the fold's training cases are too few."""
  p = config.protocol
  labels = stratification_labels(table) if tasks.of(config).per_class_shots else None
  try:
    draws = [splits.shots(train, labels, tuple(p.shots), seed=(config.seed, fold, draw))
             for draw in range(p.shot_draws)]
  except ValueError as e:
    raise config_lib.ConfigError(
        f"config.protocol.shots={tuple(p.shots)}: fold {fold}'s training cases are too few: "
        f"{e}{' (class -1: no positive label)' if config.finetune.multilabel else ''}. Lower "
        "config.protocol.shots or config.protocol.folds, or use more cases") from e
  return [({"shots": n, "draw": draw}, subset)
          for draw, subsets in enumerate(draws) for n, subset in subsets.items()]


def training_subsets(config, table: downstream.Table, fold: int,
                     train) -> list[tuple[dict, np.ndarray]]:
  """[(where the subset stands: {fraction} or {shots, draw}, subset of `train`)] of one fold."""
  fractions = splits.label_fractions(train, stratification_labels(table),
                                     tuple(config.protocol.fractions), seed=config.seed + fold)
  return [({"fraction": f}, subset) for f, subset in fractions.items()] + (
      shot_subsets(config, table, fold, train) if config.protocol.shots else [])


def plan(config, table: downstream.Table) -> list[dict]:
  """Every run of the protocol: name, fold, fraction (or shots and draw), init, repeat and its
  train/val/test cases."""
  inits = report.INITS if (config.finetune.pretrained and config.protocol.compare_random) else (
      ("pretrained",) if config.finetune.pretrained else ("random",))
  return [{"name": run_name(init, fold, repeat, **labels),
           "fold": fold, **labels, "init": init, "repeat": repeat,
           "train": subset, "val": val, "test": test}
          for fold, train, val, test in splittable(config, table)
          for labels, subset in training_subsets(config, table, fold, train)
          for init in inits
          for repeat in range(config.protocol.repeats)]


def run_all(config, workdir: str, mesh, runs: list[dict], examples: dict,
            distance_scale) -> list[dict]:
  """Every planned run's result: the finished ones read back, the others trained and scored
  in turn, with progress."""
  results, todo = [], []
  for r in runs:
    path = _run_path(workdir, r["name"], "result.json")
    if all(os.path.exists(_run_path(workdir, r["name"], f)) for f in run_outputs(config)):
      with open(path) as f:
        results.append(_labelled(json.load(f), r))
    else:
      todo.append(r)
  if results:
    logging.info("reusing %d finished runs of %d from %s", len(results), len(runs), workdir)
  # Progress over the runs still to do: a bar on a terminal, a log line after every run.
  bar = tqdm.tqdm(total=len(todo), desc=f"{config.finetune.kind} runs", unit="run",
                  disable=None if jax.process_index() == 0 else True)
  start = time.perf_counter()
  for done, r in enumerate(todo, start=1):
    logging.info("run %s: %d train, %d val, %d test cases", r["name"], len(r["train"]),
                 len(r["val"]), len(r["test"]))
    run_config = config.copy_and_resolve_references()
    run_config.seed = config.seed + r["repeat"]  # new layers, data order, augmentation
    result = run_one(run_config, r, workdir, mesh, examples, distance_scale)
    results.append(_labelled(result, r))
    per_run = (time.perf_counter() - start) / done
    logging.info("run %d/%d done, %s: %s %.4f; %.0f s per run, %.0f s to go", done, len(todo),
                 r["name"], tasks.of(config).metric, result["metric"], per_run,
                 per_run * (len(todo) - done))
    bar.set_postfix_str(f"{r['name']}: {result['metric']:.3f}")
    bar.update()
  bar.close()
  return results


def run(config, workdir: str, mesh) -> dict:
  """The whole protocol of `config` on `mesh`; returns the summary (also written as the
  report)."""
  # The config was validated at the entry point; what can be wrong with the weights and the
  # data fails here, before the workdir is touched.
  finetune.check_pretrained(config)
  examples, table, skipped = finetune.read_labelled(config, config.data.csv)
  for row in skipped[:5]:
    logging.warning("%s line %d left out: %s", config.data.csv, row["line"], row["problem"])
  if skipped:
    logging.warning("%d of %d rows of %s left out (unreadable); the report lists them",
                    len(skipped), len(skipped) + len(table), config.data.csv)
  splits_made = describe_splits(config, table)
  logging.info("splits: %s; %s", splits_made["folds"], splits_made["groups"])
  if table.groups is None and config.data.group_column:
    logging.warning("%s is %s", config.data.csv, splits_made["groups"])
  distance_scale = (table.pixel_sizes if config_lib.volumetric(config) else
                    table.distance_scale(config.input.image_size))
  runs = plan(config, table)

  with locks.hold(workdir, "protocol", primary=jax.process_index() == 0):  # one writer
    check_same_config(config, workdir)
    if not jax.config.jax_compilation_cache_dir:  # every run compiles the same step: once
      jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "compile_cache"))
    results = run_all(config, workdir, mesh, runs, examples, distance_scale)
  summary = {**report.summarize(config, results), "splits": splits_made,
             "skipped_rows": skipped,
             "feature_reuse": feature_reuse(config, runs, workdir, mesh, examples)}
  if jax.process_index() == 0:
    paths = report.write_report(config, workdir, summary)
    if tasks.of(config).saves_predictions:
      paths["overlays"] = report.write_overlays(
          config, workdir, results, examples, lambda name: saved_predictions(workdir, name))
    print("Report: " + " | ".join(f"{k}: {v}" for k, v in paths.items()), flush=True)
  return summary
