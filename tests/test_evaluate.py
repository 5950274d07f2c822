"""Scoring fine-tuned models on a labelled set: the protocol's numbers reproduced on the same
cases, and initialisations compared on the same cases."""
import csv
import json
import os

import pytest

from vismae_jax import config_lib, evaluate, parallel, protocol


@pytest.fixture(scope="module")
def finished_protocol(tmp_path_factory, sample_segmentation_csv):
  """A tiny segmentation protocol on the sample's images: one fold, pretrained (from random
  weights saved as a PyTorch file) against random."""
  from helpers import plausible_params
  from safetensors import numpy as safetensors_numpy

  from vismae_jax.convert import torch_names
  from vismae_jax.train import finetune
  folder = tmp_path_factory.mktemp("evaluated")
  config = config_lib.finetune("segmentation", "tiny")
  weights = str(folder / "start.safetensors")
  safetensors_numpy.save_file(torch_names.to_torch(plausible_params(
      finetune.build_model(config), 64, seed=5)), weights)
  config.data.csv = sample_segmentation_csv
  config.finetune.pretrained = weights
  config.protocol.update(max_folds=1, compare_random=True)
  config.total_steps = 6
  workdir = str(folder / "protocol")
  protocol.run(config, workdir, parallel.make_mesh(config.mesh))
  return config, workdir, folder


def test_evaluating_a_run_on_its_test_cases_reproduces_the_protocols_numbers(finished_protocol):
  config, workdir, folder = finished_protocol
  run = os.path.join(workdir, "runs", "random_labels100_fold0")
  with open(os.path.join(run, "result.json")) as f:
    result = json.load(f)
  with open(config.data.csv, newline="") as f:
    rows = list(csv.DictReader(f))
  # Beside the protocol's CSV, so that its relative mask paths still hold.
  test_csv = os.path.join(os.path.dirname(config.data.csv), "fold0_test.csv")
  with open(test_csv, "w", newline="") as f:
    writer = csv.DictWriter(f, rows[0].keys())
    writer.writeheader()
    writer.writerows(rows[i] for i in result["test"])
  evaluated = config.copy_and_resolve_references()
  evaluated.task, evaluated.finetune.pretrained = "evaluate", ""
  evaluated.predict.update(input=str(test_csv), output=str(folder / "report"))
  summary = evaluate.run(evaluated, run, parallel.make_mesh(config.mesh))
  (model,) = summary["models"]
  assert model["name"] == "random_labels100_fold0"
  assert model["metric"] == pytest.approx(result["metric"], abs=1e-6)
  assert model["hd95"] == pytest.approx(result["hd95"], rel=1e-5, nan_ok=True)
  assert os.path.exists(folder / "report" / "report.md")


def test_a_protocols_initialisations_are_compared_on_the_same_cases(finished_protocol):
  config, workdir, folder = finished_protocol
  evaluated = config.copy_and_resolve_references()
  evaluated.task = "evaluate"
  evaluated.finetune.pretrained = ""  # the pretraining file is not one of the models
  evaluated.predict.update(input=config.data.csv, output=str(folder / "all"))
  summary = evaluate.run(evaluated, workdir, parallel.make_mesh(config.mesh))
  names = [m["name"] for m in summary["models"]]
  assert names == ["pretrained_labels100_fold0", "random_labels100_fold0"]
  (comparison,) = summary["comparisons"]
  assert comparison["test"] == "wilcoxon" and 0 <= comparison["p_value"] <= 1
  assert comparison["difference"] == pytest.approx(
      summary["models"][0]["metric"] - summary["models"][1]["metric"])
  for m in summary["models"]:
    assert m["ci95"][0] <= m["metric"] <= m["ci95"][1]
  markdown = open(folder / "all" / "report.md").read()
  assert "| pretrained_labels100_fold0 | random_labels100_fold0 |" in markdown
