"""Benchmarks keep their contract: one summary line and the documented JSON fields."""
import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import ROOT, main_env

TRAIN_THROUGHPUT_FIELDS = {"img_per_s", "step_s_median", "batch", "image_size", "dtype",
                           "devices", "backend"}


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
