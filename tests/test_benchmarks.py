"""Benchmarks keep their contract: one summary line and the documented JSON fields."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT, main_env, shared_dataset

TRAIN_THROUGHPUT_FIELDS = {"img_per_s", "step_s_median", "batch", "image_size", "dtype",
                           "devices", "backend"}


@pytest.mark.slow
def test_train_throughput_prints_one_line_and_writes_json(tmp_path):
  out = tmp_path / "tp.json"
  baseline = ["--baseline=torch"] if importlib.util.find_spec("torch") else []
  proc = subprocess.run(
      [sys.executable, "benchmarks/train_throughput.py", "--preset=tiny", "--batch=8",
       "--image_size=64", "--steps=2", "--warmup=0", "--devices=2", f"--json={out}", *baseline],
      cwd=ROOT, env=main_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [line for line in proc.stdout.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("train_throughput: tiny batch 8 at 64 px")
  result = json.loads(out.read_text())
  assert TRAIN_THROUGHPUT_FIELDS <= set(result)
  assert result["devices"] == 2 and result["backend"] == "cpu" and result["batch"] == 8
  assert result["img_per_s"] > 0 and len(result["step_s_all"]) == 2
  if baseline:
    assert result["baseline"]["img_per_s"] > 0 and result["speedup_vs_baseline"] > 0


DATA_THROUGHPUT_FIELDS = {"grain_img_per_s", "png_img_per_s", "ingest_files_per_s", "batch",
                          "image_size", "workers"}


@pytest.mark.slow
def test_data_throughput_prints_one_line_and_writes_json(tmp_path):
  if not importlib.util.find_spec("torch") or not importlib.util.find_spec("apache_beam"):
    pytest.skip("the PNG baseline needs the [torch] extra and ingest the [ingest] extra")
  out = tmp_path / "dt.json"
  proc = subprocess.run(
      [sys.executable, "benchmarks/data_throughput.py", "--images=64", "--batch=16",
       "--image_size=64", "--epochs=1", "--ingest_files=20", f"--json={out}"],
      cwd=ROOT, env=main_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [line for line in proc.stdout.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("data_throughput: grain"), proc.stdout
  result = json.loads(out.read_text())
  assert DATA_THROUGHPUT_FIELDS <= set(result)
  assert result["grain_img_per_s"] > 0 and result["png_img_per_s"] > 0
  assert result["ingest_runs"][0]["files"] == 20 and result["ingest_files_per_s"] > 0


def subset_datasets(root, every: dict) -> str:
  """../shared/datasets cut down to every n-th row of each labels.csv, images linked."""
  for name, n in every.items():
    source = shared_dataset(name)
    os.makedirs(root / name)
    with open(os.path.join(source, "labels.csv")) as f:
      lines = f.readlines()
    (root / name / "labels.csv").write_text("".join([lines[0], *lines[1::n]]))
    for folder in ("images", "masks"):
      if os.path.isdir(os.path.join(source, folder)):
        os.symlink(os.path.join(source, folder), root / name / folder)
  return str(root)


@pytest.mark.slow
def test_label_efficiency_prints_one_line_and_writes_the_documented_json(tmp_path):
  """Every stage (ingest, pretraining, both protocols) on a sixth of BUSI: about 2.5 minutes."""
  if not importlib.util.find_spec("apache_beam"):
    pytest.skip("ingest needs the [ingest] extra")
  datasets = subset_datasets(tmp_path / "datasets", {"busi": 6, "chest_xray_pneumonia": 40})
  out = tmp_path / "le.json"
  proc = subprocess.run(
      [sys.executable, "benchmarks/label_efficiency.py", "--variant=tiny", "--max_folds=2",
       "--fractions=1.0", f"--datasets={datasets}", f"--scratch={tmp_path / 'scratch'}",
       f"--json={out}"],
      cwd=ROOT, env=main_env(), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [line for line in proc.stdout.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("label_efficiency (tiny, pretrained vs random)")
  result = json.loads(out.read_text())
  assert result["variant"] == "tiny" and result["image_size"] == 64
  for task, metric in (("busi_seg", "dice"), ("busi_cls", "roc_auc")):
    r = result[task]
    assert r["metric"] == metric and r["fractions"] == [1.0]
    for init in ("pretrained", "random"):
      entry = r[init]["1.0"]
      assert len(entry["per_fold"]) == 2 and all(0 <= v <= 1 for v in entry["per_fold"])
      assert entry["ci95"][0] <= entry["mean"] <= entry["ci95"][1]
    assert 0 <= r["p_values"]["1.0"] <= 1
