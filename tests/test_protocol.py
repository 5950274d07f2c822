"""Fine-tuning protocols: one trace for all runs, the report, resuming, and their errors."""
import csv
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import picture, run_main, shared_dataset
from data_pipelines import downstream
from vismae_jax import checkpoint, config_lib, parallel, protocol, report
from vismae_jax.train import finetune

SEG = "configs/finetune_seg.py:tiny"


def test_the_runs_of_a_protocol_share_one_trace_and_repeats_average_within_folds(
    tmp_path, sample_segmentation_csv, caplog):
  """Runs differ in data, length and seed only (the schedule is an argument): one trace of
  the step and of predict serves all, a few-shot run of 2 images in batches of 8 too. Each run
  keeps only its best checkpoint."""
  traced = []

  def listener(event, duration, fun_name="", **kwargs):
    if event == "/jax/core/compile/jaxpr_trace_duration":
      traced.append(fun_name)

  config = config_lib.finetune("segmentation", "tiny")
  config.data.csv = sample_segmentation_csv
  config.protocol.update(max_folds=1, fractions=(0.5, 1.0), repeats=2, shots=(2,))
  # 2 steps at 50%, 3 at 100%, 1 at 2 shots
  config.total_steps, config.min_steps, config.num_epochs = 0, 0, 1.0
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
  assert len(steps) == 3 and all(len(s) == 1 for s in steps), steps  # three lengths, one kept
  random = summary["by_fraction"]["1.0"]["random"]
  names = ["random_labels100_fold0", "random_labels100_fold0_seed1"]
  seeds = [checkpoint.saved_config(checkpoint.manager(os.path.join(runs, n), 1),
                                   checkpoint.chosen_step(os.path.join(runs, n))[1])["seed"]
           for n in names]
  assert seeds == [0, 1]
  metrics = [json.load(open(os.path.join(runs, n, "result.json")))["metric"] for n in names]
  assert random["per_fold_repeats"] == [pytest.approx(metrics)]
  assert random["per_fold"] == [pytest.approx(np.mean(metrics))]
  with open(os.path.join(runs, "random_shots002_fold0_seed1", "result.json")) as f:
    assert json.load(f)["train_size"] == 2
  assert len(summary["by_shots"]["2"]["random"]["per_fold_repeats"][0]) == 2
  for name in ("report.json", "report.csv", "report.md", "label_efficiency.png", "overlays.png",
               "feature_reuse.md", "feature_reuse.png"):
    assert os.path.getsize(os.path.join(tmp_path, name)) > 0
  assert picture(os.path.join(tmp_path, "overlays.png"))["lime"] > 1e-4  # the boxes' outlines
  # Feature reuse: the first seed's run with all the labels, a CKA in [0, 1] per encoder stage.
  reuse = summary["feature_reuse"]
  assert reuse["runs"] == {"random": "random_labels100_fold0"} and reuse["fraction"] == 1.0
  cka = reuse["cka"]["random"]
  assert list(cka) == ["patch_embed", *(f"layers_{i}" for i in range(len(config.model.depths)))]
  with open(os.path.join(tmp_path, "feature_reuse.md")) as f:
    row = next(line for line in f if line.startswith("| random |"))
  assert [float(v) for v in row.strip(" |\n").split("|")[1:]] == pytest.approx(
      list(cka.values()), abs=5e-4)
  assert all(0 <= v <= 1 for v in cka.values())
  assert row in open(os.path.join(tmp_path, "report.md")).read()
  assert summary["splits"]["groups"].startswith("grouped by the CSV's 'patient_key' column")
  assert summary["units"] == {"hd95": "px"}
  # Run again: every run is reused, none trains, and the log says so.
  with caplog.at_level("INFO"):
    again = protocol.run(config, str(tmp_path), mesh)
  assert "reusing 6 finished runs of 6" in caplog.text and "run 1/" not in caplog.text
  assert again["by_fraction"] == summary["by_fraction"]
  assert again["by_shots"] == summary["by_shots"]
  assert again["feature_reuse"]["cka"]["random"] == pytest.approx(cka)  # the same start
  # A run without its predictions (an older version's) is run again, not reused.
  os.remove(os.path.join(runs, names[1], protocol.PREDICTIONS))
  caplog.clear()
  with caplog.at_level("INFO"):
    protocol.run(config, str(tmp_path), mesh)
  assert "reusing 5 finished runs of 6" in caplog.text and f"run 1/1 done, {names[1]}" in (
      caplog.text)
  assert os.path.exists(os.path.join(runs, names[1], protocol.PREDICTIONS))


def frames_of_subjects(folder, with_folds: bool) -> str:
  """A CSV of 120 frames of 30 subjects (4 each), labels by subject, optionally a fold column;
  the files need not exist to be split."""
  rows = ["image,label,subject_id" + (",fold" if with_folds else "")]
  for frame in range(120):
    subject = frame // 4
    rows.append(f"f{frame}.png,{subject % 3},s{subject}" + (f",{subject % 5}" if with_folds
                                                             else ""))
  (folder / "labels.csv").write_text("\n".join(rows) + "\n")
  return str(folder / "labels.csv")


def splits_of(csv_path, **data):
  config = config_lib.finetune("classification", "tiny")
  config.data.update(csv=csv_path, **data)
  table = downstream.read_table(csv_path, finetune.columns(config))
  return table, protocol.protocol_splits(config, table), protocol.describe_splits(config, table)


def test_a_named_group_column_keeps_every_subject_on_one_side(tmp_path):
  table, folds, described = splits_of(frames_of_subjects(tmp_path, False),
                                      group_column="subject_id")
  assert described["groups"].startswith("grouped by the CSV's 'subject_id' column: 30 groups")
  assert described["folds"] == "5 folds drawn, stratified by label"
  assert len(folds) == 5
  for _, train, val, test in folds:
    sides = [set(table.groups[part]) for part in (train, val, test)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
  # The default column is absent here: nothing groups the frames, and the report says so.
  table, folds, described = splits_of(frames_of_subjects(tmp_path, False))
  assert table.groups is None and described["groups"].startswith("not grouped")
  with pytest.raises(ValueError, match="no group column 'subject'; its columns are"):
    splits_of(frames_of_subjects(tmp_path, False), group_column="subject")


def test_the_csv_fold_column_makes_the_folds_unless_told_otherwise(tmp_path):
  csv_path = frames_of_subjects(tmp_path, True)
  table, folds, described = splits_of(csv_path, group_column="subject_id")
  assert described["folds"].startswith("the CSV's 'fold' column (5 folds")
  for k, _, _, test in folds:
    np.testing.assert_array_equal(test, np.flatnonzero(table.folds == k))
  _, drawn, described = splits_of(csv_path, group_column="subject_id", fold_column="")
  assert described["folds"] == "5 folds drawn, stratified by label"
  assert any(not np.array_equal(a[3], b[3]) for a, b in zip(folds, drawn))


def test_shot_runs_draw_n_per_class_from_the_training_cases_whatever_else_runs(tmp_path):
  csv_path = frames_of_subjects(tmp_path, False)
  config = config_lib.finetune("classification", "tiny")
  config.data.update(csv=csv_path, group_column="subject_id")
  config.protocol.update(max_folds=2, fractions=(0.5, 1.0), shots=(2, 4), shot_draws=2,
                         repeats=2)
  table = downstream.read_table(csv_path, finetune.columns(config))
  runs = {r["name"]: r for r in protocol.plan(config, table)}
  assert len(runs) == 2 * (2 + 2 * 2) * 2  # folds x (fractions + shots x draws) x repeats
  assert {"random_labels050_fold0", "random_labels100_fold1_seed1", "random_shots002_fold0",
          "random_shots004_fold1_draw1_seed1"} <= set(runs)
  for name, r in runs.items():
    assert protocol.parse_run_name(name) == {k: r[k] for k in ("init", *report.PLACEMENT)
                                             if k in r}
    assert protocol.run_name(**protocol.parse_run_name(name)) == name
    assert not set(r["train"]) & (set(r["val"]) | set(r["test"]))
    if "shots" in r:
      assert np.bincount(table.labels[r["train"]]).tolist() == [r["shots"]] * 3
      assert set(r["train"]) <= set(runs[f"random_labels100_fold{r['fold']}"]["train"])
  assert set(runs["random_shots002_fold1_draw1"]["train"]) < set(
      runs["random_shots004_fold1_draw1"]["train"])  # nested across N
  assert set(runs["random_shots004_fold1"]["train"]) != set(
      runs["random_shots004_fold1_draw1"]["train"])
  # Other fractions and shots: the same draws, so a protocol reuses its finished runs.
  config.protocol.update(fractions=(0.25,), shots=(4, 6))
  again = [r for r in protocol.plan(config, table) if r["name"] in runs]
  assert sorted(r["name"] for r in again) == sorted(n for n in runs if "shots004" in n)
  for r in again:
    np.testing.assert_array_equal(r["train"], runs[r["name"]]["train"])


def test_too_few_training_cases_for_the_shots_fail_naming_the_class(tmp_path,
                                                                     sample_segmentation_csv):
  config = config_lib.finetune("classification", "tiny")
  config.data.update(csv=frames_of_subjects(tmp_path, False), group_column="subject_id")
  config.protocol.shots = (2, 30)
  table = downstream.read_table(config.data.csv, finetune.columns(config))
  with pytest.raises(config_lib.ConfigError, match=r"^config.protocol.shots=\(2, 30\): fold 0's "
                     r"training cases are too few: 30 cases per class wanted, only \d+ of class 0"):
    protocol.plan(config, table)
  config = config_lib.finetune("segmentation", "tiny")
  config.data.csv, config.protocol.shots = sample_segmentation_csv, (40,)
  _, table, _ = finetune.read_labelled(config, sample_segmentation_csv)
  with pytest.raises(config_lib.ConfigError, match=r"40 cases in all wanted, only 3\d\. Lower "
                     "config.protocol.shots"):
    protocol.plan(config, table)


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


@pytest.mark.data
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
  assert "run 4/4 done, random_labels100_fold1: dice" in proc.stderr  # progress: a log line
  assert "s to go" in proc.stderr
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
  assert picture(os.path.join(workdir, "overlays.png"))["lime"] > 1e-4  # the lesions' outlines
  assert picture(os.path.join(workdir, "label_efficiency.png"))["grey_std"] > 5
  with open(os.path.join(workdir, "report.md")) as f:
    assert "| hd95 (px) |" in f.read()  # pixels of the original images: BUSI has no sizes
  # The two bad rows are left out, named in the log and listed in the report.
  assert [row["line"] for row in report["skipped_rows"]] == [782, 783]
  assert "truncated.png: image file is truncated" in report["skipped_rows"][0]["problem"]
  assert "missing_mask.png" in report["skipped_rows"][1]["problem"]
  assert "2 of 782 rows of" in proc.stderr and "line 783 left out" in proc.stderr
  again = run_main(workdir, *args, config=SEG)  # a finished protocol is not trained again
  assert "Done:" not in again.stdout and "Report: json:" in again.stdout
  assert "reusing 4 finished runs of 4" in again.stderr and "run 1/" not in again.stderr
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
