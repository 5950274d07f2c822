"""Fine-tuning protocols: one trace for all runs, the report, resuming, and their errors."""
import csv
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import run_main, shared_dataset
from vismae_jax import checkpoint, config_lib, parallel, protocol

SEG = "configs/finetune_seg.py:tiny"


def test_the_runs_of_a_protocol_share_one_trace_and_repeats_average_within_folds(
    tmp_path, sample_segmentation_csv):
  """Runs differ in data, length and seed only (the schedule is an argument): one trace of
  the step and of predict serves all. Each run keeps only its best checkpoint."""
  traced = []

  def listener(event, duration, fun_name="", **kwargs):
    if event == "/jax/core/compile/jaxpr_trace_duration":
      traced.append(fun_name)

  config = config_lib.finetune("segmentation", "tiny")
  config.data.csv = sample_segmentation_csv
  config.protocol.update(max_folds=1, fractions=(0.5, 1.0), repeats=2)
  config.total_steps, config.min_steps, config.num_epochs = 0, 0, 1.0  # 2 steps at 50%, 3 at 100%
  mesh = parallel.make_mesh(config.mesh)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    summary = protocol.run(config, str(tmp_path), mesh)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert traced.count("step") == 1 and traced.count("predict") == 1, traced
  runs = os.path.join(tmp_path, "runs")
  steps = {tuple(ocp.CheckpointManager(os.path.join(runs, run, "checkpoints")).all_steps())
           for run in os.listdir(runs)}
  assert len(steps) == 2 and all(len(s) == 1 for s in steps), steps  # two lengths, one kept
  random = summary["by_fraction"]["1.0"]["random"]
  names = ["random_labels100_fold0", "random_labels100_fold0_seed1"]
  seeds = [checkpoint.saved_config(checkpoint.manager(os.path.join(runs, n), 1),
                                   checkpoint.chosen_step(os.path.join(runs, n))[1])["seed"]
           for n in names]
  assert seeds == [0, 1]
  metrics = [json.load(open(os.path.join(runs, n, "result.json")))["metric"] for n in names]
  assert random["per_fold_repeats"] == [pytest.approx(metrics)]
  assert random["per_fold"] == [pytest.approx(np.mean(metrics))]
  for name in ("report.json", "report.csv", "report.md", "label_efficiency.png", "overlays.png"):
    assert os.path.getsize(os.path.join(tmp_path, name)) > 0


def busi_with_bad_rows(folder) -> str:
  """BUSI's CSV (paths made absolute) with a truncated image and a missing mask appended."""
  busi = shared_dataset("busi")
  with open(os.path.join(busi, "labels.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  for row in rows:
    row["image"], row["mask"] = (os.path.join(busi, row[k]) for k in ("image", "mask"))
  with open(rows[0]["image"], "rb") as f:
    (folder / "truncated.png").write_bytes(f.read()[:5000])
  rows += [{**rows[0], "image": "truncated.png"}, {**rows[1], "mask": "missing_mask.png"}]
  with open(folder / "labels.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, rows[0].keys())
    writer.writeheader()
    writer.writerows(rows)
  return str(folder / "labels.csv")


@pytest.mark.slow
def test_protocol_compares_initialisations_and_writes_the_report(tmp_path, tiny_pretrained):
  csv_path = busi_with_bad_rows(tmp_path)
  workdir = str(tmp_path / "protocol")
  args = (f"--config.data.csv={csv_path}", "--config.protocol.max_folds=2",
          "--config.total_steps=20", f"--config.finetune.pretrained={tiny_pretrained}",
          "--config.finetune.fill_deeper=True", "--config.protocol.compare_random=True",
          "--config.optim.layer_decay=0.75")
  proc = run_main(workdir, *args, config=SEG)
  assert "Report: json:" in proc.stdout
  assert "segmentation runs: 100%" in proc.stderr and "| 4/4 [" in proc.stderr  # progress
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  assert report["metric"] == "dice" and report["fractions"] == [1.0]
  entry = report["by_fraction"]["1.0"]
  for init in ("pretrained", "random"):
    assert len(entry[init]["per_fold"]) == 2
    low, high = entry[init]["ci95"]
    assert low <= entry[init]["mean"] <= high and 0 <= entry[init]["mean"] <= 1
    assert {"hd95", "precision", "recall"} <= set(entry[init])
  assert entry["p_value"] is not None and 0 <= entry["p_value"] <= 1
  for name in ("report.csv", "report.md", "label_efficiency.png", "overlays.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  with open(os.path.join(workdir, "report.md")) as f:
    assert "| hd95 |" in f.read()
  # The two bad rows are left out, named in the log and listed in the report.
  assert [row["line"] for row in report["skipped_rows"]] == [782, 783]
  assert "truncated.png: image file is truncated" in report["skipped_rows"][0]["problem"]
  assert "missing_mask.png" in report["skipped_rows"][1]["problem"]
  assert "2 of 782 rows of" in proc.stderr and "line 783 left out" in proc.stderr
  again = run_main(workdir, *args, config=SEG)  # a finished protocol is not trained again
  assert "Done:" not in again.stdout and "Report: json:" in again.stdout
  # Another recipe in the same workdir fails instead of reporting the old runs.
  other = run_main(workdir, *args, "--config.finetune.freeze_encoder=True", config=SEG,
                   check=False)
  assert other.returncode == 1 and "was made with another config" in other.stderr
  assert "finetune.freeze_encoder=True here, False there" in other.stderr


@pytest.mark.slow
def test_a_checkpoint_that_does_not_fit_fails_with_the_mismatches(tmp_path, tiny_pretrained,
                                                                 sample_segmentation_csv):
  proc = run_main(str(tmp_path), f"--config.data.csv={sample_segmentation_csv}",
                  f"--config.finetune.pretrained={tiny_pretrained}", "--config.model.embed_dim=32",
                  "--config.model.num_heads=(1,2,2,4)", config=SEG, check=False)
  assert proc.returncode == 1
  assert "does not fit the model" in proc.stderr
  assert "patch_embed.proj.weight: checkpoint (16, 1, 4, 4) vs model (32, 1, 4, 4)" in proc.stderr


@pytest.mark.slow
def test_bad_finetune_config_fails_before_any_work(tmp_path):
  proc = run_main(str(tmp_path), "--config.data.csv=/nonexistent.csv",
                  "--config.protocol.fractions=(0.0,1.0)", "--config.min_steps=-1",
                  "--config.finetune.freeze_encoder=True", "--config.finetune.probe_first=0.5",
                  config=SEG, check=False)
  assert proc.returncode == 1
  assert "config.data.csv='/nonexistent.csv' does not exist" in proc.stderr
  assert "label fractions must be in (0, 1]" in proc.stderr
  assert "config.min_steps=-1: must be >= 0" in proc.stderr
  assert "config.finetune.probe_first=0.5: must be in [0, 1), and 0 with freeze_encoder" in (
      proc.stderr)
  assert not os.listdir(tmp_path)
