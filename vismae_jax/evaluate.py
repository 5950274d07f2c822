r"""Scoring fine-tuned models on a labelled test set, e.g. one from another site, without
retraining.

  python -m vismae_jax.main --config=configs/finetune_seg.py --workdir=RUN_OR_PROTOCOL \
      --config.task=evaluate --config.predict.input=LABELS_CSV --config.predict.output=OUT

The CSV is read as fine-tuning reads one (the same columns and options; unreadable rows are
left out and listed). The models: the run in the workdir, a PyTorch file named by
`finetune.pretrained`, or every run of a protocol's workdir. Each is scored with the
protocol's metrics and a bootstrap CI over the cases; runs of a protocol that differ only in
their initialisation (the same fold, label fraction or shots and draw, and seed) are compared
on the same cases, by DeLong's test for a binary AUC and the Wilcoxon signed-rank test on
per-image Dice. OUT gets report.json, report.csv and report.md.
"""
import os

import jax
import numpy as np
from absl import logging

from vismae_jax import inference, parallel, predict, protocol, report, tasks
from vismae_jax.convert import weights
from vismae_jax.train import finetune


def models(config, workdir: str) -> list[dict]:
  """[{name, workdir[, init, fraction or shots and draw, fold, repeat]}] of the models to
  score."""
  if weights.is_file(config.finetune.pretrained):
    return [{"name": os.path.basename(config.finetune.pretrained), "workdir": workdir}]
  runs = os.path.join(workdir, "runs")
  if not os.path.isdir(runs):
    return [{"name": os.path.basename(os.path.normpath(workdir)), "workdir": workdir}]
  found = [{"name": name, "workdir": os.path.join(runs, name), **protocol.parse_run_name(name)}
           for name in sorted(os.listdir(runs)) if protocol.parse_run_name(name)]
  if not found:
    raise FileNotFoundError(f"{runs}: no fine-tuning runs to evaluate")
  return found


def run(config, workdir: str, mesh) -> dict:
  """task=evaluate: every model scored on config.predict.input; returns the summary (also
  written as the report in config.predict.output)."""
  examples, table, skipped = finetune.read_labelled(config, config.predict.input)
  kind = tasks.of(config)
  cases = np.arange(len(table))
  scale = table.distance_scale(config.input.image_size)
  fns = finetune.functions(config)
  results = []
  for model in models(config, workdir):
    params = jax.device_put(predict.fine_tuned_params(config, model["workdir"]),
                            parallel.replicated(mesh))
    predictions = inference.predict_cases(fns.predict, params, examples["image"], config, mesh)
    scored = kind.score(config, predictions, examples, cases, scale)
    logging.info("%s: %s %.4f on %d cases", model["name"], kind.metric,
                 scored["metric"], len(cases))
    results.append({**model, **scored})
  summary = {**report.summarize_evaluation(config, results), "input": config.predict.input,
             "skipped_rows": skipped}
  if jax.process_index() == 0:
    os.makedirs(config.predict.output, exist_ok=True)
    paths = report.write_evaluation(config, config.predict.output, summary)
    print("Report: " + " | ".join(f"{k}: {v}" for k, v in paths.items()), flush=True)
  return summary
