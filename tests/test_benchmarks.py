"""Benchmarks keep their contract: one summary line and the documented JSON fields."""
import gzip
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT, main_env, shared_dataset, synthetic_decathlon

TORCH_BASELINE = ["--baseline=torch"] if importlib.util.find_spec("torch") else []


def run_benchmark(tmp_path, script, *args, timeout=600) -> tuple[str, dict]:
  """benchmarks/<script> with --json: its one summary line and its JSON."""
  out = tmp_path / "result.json"
  proc = subprocess.run([sys.executable, f"benchmarks/{script}", *args, f"--json={out}"],
                        cwd=ROOT, env=main_env(), capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [line for line in proc.stdout.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stdout
  return lines[0], json.loads(out.read_text())


def test_trace_categories_sort_device_kernels_only(tmp_path):
  """A GPU trace's shape: device kernels by category, host events left out."""
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import trace_categories
  events = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}}]
  kernels = {"sm90_xmma_gemm_bf16bf16_bf16f32": ("gemm", 40),
             "cudnn_generated_fort_native_sdpa_sm90_flash_fprop": ("attention", 25),
             "loop_transpose_fusion": ("transpose/copy", 15),
             "input_reduce_fusion": ("reduction", 12),
             "loop_multiply_fusion": ("elementwise", 8)}
  for name, (_, microseconds) in kernels.items():
    events.append({"ph": "X", "pid": 1, "tid": 7, "name": name, "dur": microseconds * 1000})
  events.append({"ph": "X", "pid": 2, "tid": 1, "name": "PjitFunction(step)", "dur": 10 ** 9})
  path = tmp_path / "plugins" / "profile" / "run" / "host.trace.json.gz"
  path.parent.mkdir(parents=True)
  with gzip.open(path, "wt") as f:
    json.dump({"traceEvents": events}, f)
  result = trace_categories.breakdown(str(tmp_path))
  assert result["device_ms"] == 100
  assert {name: c["ms"] for name, c in result["categories"].items()} == {
      category: ms for category, ms in kernels.values()}
  assert result["top_kernels"][0] == ["sm90_xmma_gemm_bf16bf16_bf16f32", 40]
  assert trace_categories.breakdown(str(tmp_path / "plugins" / "none")) is None


@pytest.mark.slow
def test_train_throughput(tmp_path):
  line, result = run_benchmark(tmp_path, "train_throughput.py", "--preset=tiny", "--batch=8",
                               "--image_size=64", "--steps=2", "--warmup=0", "--devices=2",
                               "--compare=random,uniform,uniform+0-0-0,"
                               "random@model.attention=xla", f"--profile={tmp_path / 'trace'}",
                               *TORCH_BASELINE)
  assert line.startswith("train_throughput: tiny batch 8 at 64 px")
  modes = result["modes"]
  assert list(modes) == ["random", "uniform", "uniform+0-0-0", "random@model.attention=xla"]
  for mode in modes.values():
    assert {"img_per_s", "step_s_median", "gflop_per_img", "encoder_gflop_per_img",
            "hlo_transposes", "bytes_accessed"} <= set(mode)
    assert mode["img_per_s"] > 0 and mode["gflop_per_img"] > 0 and mode["bytes_accessed"] > 0
    assert mode["profile"] is None  # a CPU trace has no kernels to sort
  assert len(list((tmp_path / "trace").glob("mode3/**/*.trace.json.gz"))) == 1
  # The same model and data under another attention: the same model FLOPs and loss.
  fused = modes["random@model.attention=xla"]
  assert fused["gflop_per_img"] == modes["random"]["gflop_per_img"]
  assert abs(fused["loss"] - modes["random"]["loss"]) < 1e-4
  assert modes["uniform+0-0-0"]["decoder_depths"] == [0, 0, 0]
  ratios = modes["uniform"]["vs_random"]
  assert ratios["encoder_flops_ratio"] < 0.5 and ratios["flops_ratio"] < 1
  assert modes["uniform+0-0-0"]["vs_random"]["flops_ratio"] < ratios["flops_ratio"]
  assert {"img_per_s", "step_s_median", "batch", "image_size", "dtype", "devices",
          "backend"} <= set(result)
  assert result["devices"] == 2 and result["backend"] == "cpu" and result["batch"] == 8
  assert result["img_per_s"] > 0 and len(result["step_s_all"]) == 2
  if TORCH_BASELINE:
    assert result["baseline"]["img_per_s"] > 0 and result["speedup_vs_baseline"] > 0


@pytest.mark.slow
def test_data_throughput(tmp_path):
  if not TORCH_BASELINE or not importlib.util.find_spec("apache_beam"):
    pytest.skip("the PNG baseline needs the [torch] extra and ingest the [ingest] extra")
  line, result = run_benchmark(tmp_path, "data_throughput.py", "--images=64", "--batch=16",
                               "--image_size=64", "--epochs=1", "--ingest_files=20")
  assert line.startswith("data_throughput: grain")
  assert {"grain_img_per_s", "png_img_per_s", "ingest_files_per_s", "batch", "image_size",
          "workers"} <= set(result)
  assert result["grain_img_per_s"] > 0 and result["png_img_per_s"] > 0
  assert result["ingest_runs"][0]["files"] == 20 and result["ingest_files_per_s"] > 0


@pytest.mark.slow
def test_predict_throughput(tmp_path):
  line, result = run_benchmark(tmp_path, "predict_throughput.py", "--model=classification",
                               "--images=8", "--batch=4", "--image_size=64", "--steps=2",
                               *TORCH_BASELINE)
  assert line.startswith("predict_throughput: classification at 64 px")
  assert result["end_to_end_img_per_s"] > 0 and result["model_img_per_s"] > 0
  assert result["images"] == 8 and len(result["model_s_all"]) == 2
  if TORCH_BASELINE:
    assert result["baseline"]["img_per_s"] > 0


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


@pytest.mark.data
@pytest.mark.slow
def test_label_efficiency(tmp_path):
  """Every stage (ingest, pretraining, both protocols) on a sixth of BUSI."""
  if not importlib.util.find_spec("apache_beam"):
    pytest.skip("ingest needs the [ingest] extra")
  datasets = subset_datasets(tmp_path / "datasets", {"busi": 6, "chest_xray_pneumonia": 40})
  line, result = run_benchmark(tmp_path, "experiments/label_efficiency.py", "--variant=tiny",
                               "--max_folds=2", "--fractions=1.0", f"--datasets={datasets}",
                               f"--scratch={tmp_path / 'scratch'}", timeout=900)
  assert line.startswith("label_efficiency (tiny, random masking, pretrained vs random)")
  assert result["variant"] == "tiny" and result["image_size"] == 64
  assert set(result["stage_seconds"]) == {"ingest", "pretraining", "busi_seg", "busi_cls"}
  assert result["pretraining"] == {"batch_size": 8, "num_epochs": 125.0, "total_steps": 20}
  for task, metric in (("busi_seg", "dice"), ("busi_cls", "roc_auc")):
    r = result[task]
    assert r["metric"] == metric and r["fractions"] == [1.0] and r["epochs"] > 0
    assert r["settings"] == ["1.0"] and "methods" not in r
    for init in ("pretrained", "random"):
      entry = r[init]["1.0"]
      assert len(entry["per_fold"]) == 2 and all(0 <= v <= 1 for v in entry["per_fold"])
      assert entry["ci95"][0] <= entry["mean"] <= entry["ci95"][1]
    assert 0 <= r["p_values"]["1.0"] <= 1

  # Sparse pretraining against it: its own pretrained runs, the first run's random ones.
  dense = tmp_path / "dense.json"
  dense.write_text(json.dumps(result))
  line, sparse = run_benchmark(tmp_path, "experiments/label_efficiency.py", "--variant=tiny",
                               "--max_folds=2", "--fractions=1.0", f"--datasets={datasets}",
                               f"--scratch={tmp_path / 'scratch'}", "--masking=uniform",
                               "--nocompare_random", f"--versus={dense}", timeout=900)
  assert line.startswith("label_efficiency (tiny, uniform masking, pretrained vs random)")
  assert os.path.isdir(tmp_path / "scratch" / "pretrain_uniform")
  for task in ("busi_seg", "busi_cls"):
    r = sparse[task]
    assert r["random"] == result[task]["random"] and r["random_from"] == str(dense)
    with open(tmp_path / "scratch" / f"{task}_uniform" / "protocol_config.json") as f:
      assert json.load(f)["finetune"]["pretrained"].endswith("pretrain_uniform/checkpoints/20")
    assert r["versus"]["pretrained"] == result[task]["pretrained"]
    assert 0 <= r["versus"]["p_values"]["1.0"] <= 1 and 0 <= r["p_values"]["1.0"] <= 1
    assert "random masking" in line


@pytest.mark.data
@pytest.mark.slow
def test_label_efficiency_compares_methods_on_equal_time_and_few_shots(tmp_path):
  """--methods: each method pretrained for the same seconds (its steps from a timed run) and
  fine-tuned on the same folds, with 2-shot runs beside the fractions; one table and figure
  per task, paired tests against random and MAE. The ViT (another model) brings random runs of
  its own and is tested against those."""
  if not importlib.util.find_spec("apache_beam"):
    pytest.skip("ingest needs the [ingest] extra")
  datasets = subset_datasets(tmp_path / "datasets", {"busi": 6, "chest_xray_pneumonia": 40})
  scratch = tmp_path / "scratch"
  line, result = run_benchmark(tmp_path, "experiments/label_efficiency.py", "--variant=tiny",
                               "--methods=mae,vit_mae", "--pretrain_seconds=3",
                               "--tasks=busi_cls", "--shots=2", "--max_folds=2",
                               "--fractions=1.0", f"--datasets={datasets}",
                               f"--scratch={scratch}", timeout=900)
  assert line.startswith("label_efficiency (tiny, random masking, mae, vit_mae, random; "), line
  for method, folder in (("mae", "pretrain"), ("vit_mae", "pretrain_vit_mae")):
    cost = result["methods"][method]
    assert cost["total_steps"] == max(1, round(3 / cost["step_seconds"]))
    assert os.path.isdir(scratch / folder / "checkpoints" / str(cost["total_steps"]))
  r = result["busi_cls"]
  assert r["settings"] == ["1.0", "2 shots"] and r["shots"] == [2]
  c = r["methods"]
  assert c["settings"] == r["settings"]
  assert set(c["means"]) == {"mae", "vit_mae", "random", "random (vit_mae)"}
  assert c["means"]["mae"] == r["pretrained"] and c["means"]["random"] == r["random"]
  for s in c["settings"]:
    assert len(c["means"]["vit_mae"][s]["per_fold"]) == 2
    assert 0 <= c["p_vs_random"]["vit_mae"][s] <= 1 and 0 <= c["p_vs_mae"]["vit_mae"][s] <= 1
  assert set(c["p_vs_mae"]) == {"vit_mae"}
  table, figure = c["files"]
  assert "| 2 shots | vit_mae |" in open(table).read() and os.path.getsize(figure) > 0
  # The Swin's random runs are the first method's; the ViT's protocols run their own.
  with open(scratch / "busi_cls_vit_mae" / "protocol_config.json") as f:
    assert json.load(f)["model"]["arch"] == "vit"
  assert any(n.startswith("random") for n in os.listdir(scratch / "busi_cls_vit_mae" / "runs"))


@pytest.mark.data
@pytest.mark.slow
def test_label_efficiency_plan(tmp_path):
  """The images each stage would train on, counted as the runs count them, times XLA's FLOPs."""
  datasets = subset_datasets(tmp_path / "datasets", {"busi": 6, "chest_xray_pneumonia": 40})
  line, plan = run_benchmark(tmp_path, "experiments/label_efficiency_plan.py", "--variant=tiny",
                             "--max_folds=2", "--fractions=0.1,1.0", f"--datasets={datasets}")
  assert line.startswith("label_efficiency_plan (tiny, 2 folds")
  # 130 + 99 images; the tiny variants' 20 steps of 8, and 40 steps of 8 per run.
  assert plan["pretraining"]["examples"] == 229 and plan["pretraining"]["images"] == 160
  for task in ("busi_seg", "busi_cls"):
    t = plan[task]
    assert len(t["folds"]) == 2 and t["train_gflop_per_image"] > t["eval_gflop_per_image"] > 0
    assert t["folds"][0]["train_images"] == 2 * 2 * 40 * 8  # fractions x initialisations
  assert plan["seconds"] > plan["pretraining"]["seconds"] > 0


@pytest.mark.slow
def test_volume_protocol_runs_every_stage_and_the_pretrained_start_alone(tmp_path):
  """Ingest, ViT-MAE-3D pretraining and UNETR-3D's protocol on a Decathlon folder; with
  --nocompare_random no random runs, no paired test. (The settings of test_vit_training's
  volume test: one of the two compiles, the other reads the compilation cache.)"""
  msd = synthetic_decathlon(tmp_path / "msd")
  line, result = run_benchmark(tmp_path, "experiments/volume_protocol.py", "--variant=tiny",
                               f"--datasets={msd}", f"--scratch={tmp_path / 'scratch'}",
                               "--pretrain_steps=40", "--finetune_steps=40", "--folds=2",
                               "--max_folds=1", "--fractions=1.0",
                               "--nocompare_random", "--overrides=protocol.val_fraction=0.25",
                               timeout=900)
  assert line.startswith("hippocampus UNETR-3D Dice, 2 folds: 100%: pretrained ")
  assert "random" not in line
  assert set(result["stage_seconds"]) == {"ingest", "pretrain", "finetune"}
  assert result["structures"] == ["first", "second"] and result["hd95_unit"] == "mm"
  entry = result["by_fraction"]["1.0"]
  assert set(entry) == {"pretrained", "p_value", "case_test"}
  assert entry["p_value"] is None and entry["case_test"] is None
  assert len(entry["pretrained"]["per_fold"]) == 1
  assert set(entry["pretrained"]["structures"]) == {"first", "second"}


@pytest.mark.slow
def test_volume_step_against_monai_and_each_convolution_three_ways(tmp_path):
  pytest.importorskip("monai", reason="needs the [monai] extra")
  line, result = run_benchmark(tmp_path, "volume_step.py", "--models=swin_unetr",
                               "--roi=32,32,64", "--feature_size=12", "--steps=1",
                               "--convolutions=4:8")
  assert line.startswith("3D training step, 32x32x64 voxels, batch 1: swin_unetr: ours ")
  model = result["models"]["swin_unetr"]
  assert model["ours"]["seconds_per_step"] > 0 and model["monai"]["seconds_per_step"] > 0
  assert model["speed_vs_monai"] == pytest.approx(
      model["ours"]["volumes_per_s"] / model["monai"]["volumes_per_s"])
  assert "; 3x3x3 convolution 4:8: flax_nn_conv " in line
  ways = result["convolutions"]["4:8"]
  assert set(ways) == {"flax_nn_conv", "conv_blocks_conv", "torch_conv3d"}
  assert all(c["gflop_per_s"] > 0 for c in ways.values())


@pytest.mark.slow
def test_volume_protocol_runs_swin_unetr_from_smit_against_random_on_the_same_folds(tmp_path):
  """--smit: ingest, SMIT's pretraining and SwinUNETR-3D's protocol from its teacher against
  random initialisation, with CKA per encoder stage in the report."""
  msd = synthetic_decathlon(tmp_path / "msd")
  scratch = tmp_path / "scratch"
  line, result = run_benchmark(tmp_path, "experiments/volume_protocol.py", "--model=swinunetr",
                               "--smit", "--variant=tiny", f"--datasets={msd}",
                               f"--scratch={scratch}", "--pretrain_steps=10",
                               "--finetune_steps=10", "--folds=2", "--max_folds=1",
                               "--fractions=1.0", "--overrides=protocol.val_fraction=0.25",
                               timeout=900)
  assert line.startswith("hippocampus SwinUNETR-3D Dice, 2 folds: 100%: pretrained ")
  assert " vs random " in line
  assert result["model"] == "swinunetr" and result["pretraining"] == "smit"
  assert set(result["stage_seconds"]) == {"ingest", "pretrain", "finetune"}
  assert set(result["by_fraction"]["1.0"]) == {"pretrained", "random", "p_value", "case_test"}
  workdir = next(scratch.glob("swinunetr3d_smit_tiny*"))
  with open(workdir / "report.json") as f:
    reuse = json.load(f)["feature_reuse"]
  assert set(reuse["cka"]) == {"pretrained", "random"}
  assert list(reuse["cka"]["pretrained"]) == ["patch_embed", "layers_0", "layers_1", "layers_2",
                                              "layers_3"]


def _protocol_workdir(folder, runs: dict, reuse=None):
  """A protocol workdir as volume_protocol leaves it: {run name: (test cases, per-case Dice)}."""
  for name, (test, per_case) in runs.items():
    os.makedirs(folder / "runs" / name)
    (folder / "runs" / name / "result.json").write_text(json.dumps(
        {"name": name, "test": test, "metric": float(sum(per_case) / len(per_case)),
         "per_case": per_case, "hd95": 2.0}))
  (folder / "report.json").write_text(json.dumps({"feature_reuse": reuse}))
  return str(folder)


def test_volume_methods_pairs_arms_by_fold_and_case_and_says_what_is_missing(tmp_path):
  """The first arm against the others, fold by fold and case by case, from the protocol
  workdirs; a fraction one arm lacks is named; runs of one fold that scored other cases stop
  the comparison."""
  cases = {0: [0, 1, 2], 1: [3, 4, 5], 2: [6, 7, 8]}
  smit_runs, unetr_runs = {}, {}
  for fold, test in cases.items():
    for pct, gain in (("005", 0.05), ("010", 0.04)):
      smit_runs[f"pretrained_labels{pct}_fold{fold}"] = (test, [0.80 + gain + 0.01 * fold] * 3)
      smit_runs[f"random_labels{pct}_fold{fold}"] = (test, [0.80 + 0.01 * fold, 0.79, 0.81])
    unetr_runs[f"pretrained_labels010_fold{fold}"] = (test, [0.78, 0.77 + 0.01 * fold, 0.79])
  reuse = {"fold": 0, "fraction": 0.1, "cka": {"pretrained": {"patch_embed": 0.9, "layers_0": 0.8},
                                                "random": {"patch_embed": 0.5, "layers_0": 0.4}}}
  smit = _protocol_workdir(tmp_path / "smit", smit_runs, reuse)
  unetr = _protocol_workdir(tmp_path / "unetr", unetr_runs)
  out = tmp_path / "methods"
  arms = [f"--arms=SMIT={smit}:pretrained", f"--arms=random={smit}:random",
          f"--arms=ViT-MAE={unetr}:pretrained"]
  line, result = run_benchmark(tmp_path, "experiments/volume_methods.py", *arms, f"--out={out}")
  assert line.startswith("SMIT Dice by label fraction (p across folds/case by case): 5% 0.860 "
                         "(vs random 0.803 p=")
  assert list(result["fractions"]) == ["0.05", "0.1"]
  assert result["missing"] == {"0.05": ["ViT-MAE"], "0.1": []}
  tests = result["fractions"]["0.1"]["tests"]
  assert tests["ViT-MAE"]["folds"] == [0, 1, 2]
  # SMIT 0.84 + 0.01 fold against random 0.80 + 0.01 fold / 3.
  assert tests["random"]["across_folds"]["mean_difference"] == pytest.approx(0.04 + 0.02 / 3)
  assert tests["ViT-MAE"]["case_by_case"]["cases"] == 9
  text = (tmp_path / "methods.md").read_text()
  assert "| 10% | ViT-MAE | 0.783 (" in text and "Not run: 5%: ViT-MAE" in text
  assert "| smit | pretrained | 10% (fold 0) | 0.900 | 0.800 |" in text
  assert (tmp_path / "methods.png").stat().st_size > 10_000
  bad = tmp_path / "other"
  _protocol_workdir(bad, {"pretrained_labels010_fold0": ([9, 10, 11], [0.7] * 3),
                          "pretrained_labels010_fold1": ([3, 4, 5], [0.7] * 3)})
  methods = lambda *arms: subprocess.run(
      [sys.executable, "benchmarks/experiments/volume_methods.py", *arms, f"--out={out}"],
      cwd=ROOT, env=main_env(), capture_output=True, text=True, timeout=300)
  proc = methods(f"--arms=SMIT={smit}:pretrained", f"--arms=bad={bad}:pretrained")
  assert proc.returncode != 0 and "fold 0 at 0.1: SMIT and bad scored other cases" in proc.stderr
  # An arm joins recipes' workdirs, each with its own fractions, but not one fraction twice.
  longer = _protocol_workdir(tmp_path / "longer", {
      f"pretrained_labels100_fold{fold}": (test, [0.9] * 3) for fold, test in cases.items()})
  line, joined = run_benchmark(tmp_path, "experiments/volume_methods.py",
                               f"--arms=SMIT={smit},{longer}:pretrained", arms[1],
                               f"--out={out}")
  assert list(joined["fractions"]) == ["0.05", "0.1", "1"] and "100% 0.900" in line
  assert joined["missing"]["1"] == ["random"]
  proc = methods(f"--arms=SMIT={smit},{unetr}:pretrained")
  assert proc.returncode != 0 and f"pretrained runs at 0.1 in both {smit} and {unetr}" in (
      proc.stderr)
