"""Fine-tuning end to end on real BUSI images: the protocol, its report, and its errors."""
import csv
import json
import os

import pytest

from conftest import read_metrics, run_main, shared_dataset

SEG = "configs/finetune_seg.py:tiny"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A tiny SwinMAE pretrained on the bundled sample (same widths as the tiny fine-tuning)."""
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  run_main(workdir)
  return workdir


def test_fine_tuning_improves_validation_dice_over_its_first_evaluation(tmp_path):
  csv_path = os.path.join(shared_dataset("busi"), "labels.csv")
  # 0.01 epochs is under one step: min_steps sets the length (250 steps, 10 evaluations).
  run_main(str(tmp_path), f"--config.data.csv={csv_path}", "--config.protocol.max_folds=1",
           "--config.total_steps=0", "--config.num_epochs=0.01", "--config.min_steps=250",
           "--config.checkpoint_every=25", config=SEG)
  run_dir = os.path.join(str(tmp_path), "runs", "random_labels100_fold0")
  dice = [m["val_dice"] for m in read_metrics(run_dir) if "val_dice" in m]
  assert len(dice) == 10 and max(dice[1:]) > dice[0] + 0.03, dice
  with open(os.path.join(run_dir, "best", "best.json")) as f:
    assert json.load(f)["val_dice"] == pytest.approx(max(dice))


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


def test_protocol_compares_initialisations_and_writes_the_report(tmp_path, pretrained):
  csv_path = busi_with_bad_rows(tmp_path)
  workdir = str(tmp_path / "protocol")
  args = (f"--config.data.csv={csv_path}", "--config.protocol.max_folds=2",
          "--config.total_steps=20", f"--config.finetune.pretrained={pretrained}",
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


def test_freeze_encoder_trains_only_what_follows_the_encoder(tmp_path, pretrained):
  """Linear probing from the command line: the classifier's encoder ends as it was loaded."""
  import jax
  import numpy as np
  from vismae_jax import checkpoint, config_lib
  from vismae_jax.models import torch_names
  from vismae_jax.train import finetune
  csv_path = os.path.join(shared_dataset("busi"), "labels.csv")  # label: 3 classes
  run_main(str(tmp_path), f"--config.data.csv={csv_path}", "--config.finetune.num_classes=3",
           f"--config.finetune.pretrained={pretrained}", "--config.finetune.freeze_encoder=True",
           "--config.protocol.max_folds=1", "--config.total_steps=20",
           config="configs/finetune_cls.py:tiny")
  source = torch_names.to_torch(checkpoint.load_params(pretrained), image_size=64)
  tuned = torch_names.to_torch(checkpoint.load_params(
      os.path.join(str(tmp_path), "runs", "pretrained_labels100_fold0")))
  encoder = [n for n in tuned if n.startswith(("patch_embed.", "layers.")) and n in source]
  assert len(encoder) > 20
  for name in encoder:
    np.testing.assert_array_equal(tuned[name], source[name], err_msg=name)
  # The head learnt: it moved away from the random initialisation the run started from.
  config = config_lib.finetune("classification", "tiny")
  config.finetune.num_classes = 3
  init = finetune.functions(config).init_params(
      jax.random.split(jax.random.PRNGKey(config.seed))[0])
  initial = torch_names.to_torch(jax.device_get(init))
  assert np.abs(tuned["head.weight"] - initial["head.weight"]).max() > 1e-3


def test_a_checkpoint_that_does_not_fit_fails_with_the_mismatches(tmp_path, pretrained):
  csv_path = os.path.join(shared_dataset("busi"), "labels.csv")
  proc = run_main(str(tmp_path), f"--config.data.csv={csv_path}",
                  f"--config.finetune.pretrained={pretrained}", "--config.model.embed_dim=32",
                  "--config.model.num_heads=(1,2,2,4)", config=SEG, check=False)
  assert proc.returncode == 1
  assert "does not fit the model" in proc.stderr
  assert "patch_embed.proj.weight: checkpoint (16, 1, 4, 4) vs model (32, 1, 4, 4)" in proc.stderr


def test_bad_finetune_config_fails_before_any_work(tmp_path):
  proc = run_main(str(tmp_path), "--config.data.csv=/nonexistent.csv",
                  "--config.protocol.fractions=(0.0,1.0)", "--config.min_steps=-1",
                  "--config.finetune.freeze_encoder=True", "--config.finetune.probe_first=0.5",
                  config=SEG, check=False)
  assert proc.returncode == 1
  assert "config.data.csv='/nonexistent.csv' does not exist" in proc.stderr
  assert "label fractions must be in (0, 1]" in proc.stderr
  assert "config.min_steps=-1: must be >= 0" in proc.stderr
  assert "config.finetune.probe_first=0.5: must be in [0, 1), and 0 with freeze_encoder" in proc.stderr
  assert not os.listdir(tmp_path)


def test_the_runs_of_a_protocol_share_one_trace_of_the_step_and_of_predict(tmp_path):
  """Runs differ in data, length and seed only (the schedule is an argument): one trace serves
  all. Each fold's repeats are averaged."""
  import jax
  import numpy as np
  from vismae_jax import checkpoint, config_lib, evaluate

  traced = []

  def listener(event, duration, fun_name="", **kwargs):
    if event == "/jax/core/compile/jaxpr_trace_duration":
      traced.append(fun_name)

  config = config_lib.finetune("segmentation", "tiny")
  config.data.csv = os.path.join(shared_dataset("busi"), "labels.csv")
  config.protocol.update(max_folds=2, fractions=(0.5, 1.0), repeats=2)
  config.total_steps, config.min_steps, config.num_epochs = 0, 0, 0.05  # 1 step at 50%, 3 at 100%
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    summary = evaluate.run(config, str(tmp_path))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  steps = {json.load(open(os.path.join(tmp_path, "runs", run, "best", "best.json")))["step"]
           for run in os.listdir(os.path.join(tmp_path, "runs"))}
  assert len(steps) == 2 and len(summary["by_fraction"]["1.0"]["random"]["per_fold"]) == 2
  for fold in range(2):
    runs = [os.path.join(tmp_path, "runs", f"random_labels100_fold{fold}{suffix}")
            for suffix in ("", "_seed1")]
    seeds = [checkpoint.saved_config(checkpoint.manager(r, 1), 3)["seed"] for r in runs]
    assert seeds == [0, 1]
    metrics = [json.load(open(os.path.join(r, "result.json")))["metric"] for r in runs]
    random = summary["by_fraction"]["1.0"]["random"]
    assert random["per_fold_repeats"][fold] == pytest.approx(metrics)
    assert random["per_fold"][fold] == pytest.approx(np.mean(metrics))
  assert traced.count("step") == 1 and traced.count("predict") == 1, traced
