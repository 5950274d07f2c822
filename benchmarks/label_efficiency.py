r"""The paper's central claim on open data: self-pretraining helps most when labels are few.

  python benchmarks/label_efficiency.py --variant=cpu --json=/tmp/label_efficiency.json

1. Ingest the BUSI ultrasound and chest X-ray images of `--datasets` (by default
   ../shared/datasets beside the checkout; images only, no labels) into shards and pretrain a
   SwinMAE on them.
2. Fine-tune BUSI lesion segmentation (Swin-UNet) and BUSI benign-vs-malignant classification
   (Swin classifier; normal images left out) at label fractions 10, 25, 50 and 100% with 5-fold
   cross-validation, from the pretrained weights and from random initialisation, through the same
   protocol as `python -m vismae_jax.main --config=configs/finetune_seg.py` (protocol.py).
3. Print one summary line; `--json` writes, for `busi_seg` (Dice) and `busi_cls` (ROC AUC), the
   fractions and per fraction each initialisation's mean, 95% CI and per-fold values, plus the
   paired t-test p-value; `stage_seconds` times ingest, pretraining and each task.
`--tasks=busi_cls` runs one task only; `--repeats=3` trains each fold three times with
different seeds and averages them (the per-fold values are then those means);
`--freeze_encoder` trains only what follows the encoder (linear probing; in
`<scratch>/busi_cls_frozen`), which measures the pretrained representation itself against
random features; `--probe_first=0.25` holds the encoders for the first quarter
of each run and then fine-tunes everything (LP-FT; in `<scratch>/busi_cls_probe0.25`).

Variants:
- `cpu`: 64 px grey inputs and the 0.42M-parameter SwinMAE of `configs/generic.py:sample`
  (embed 16, depths 2,1,1,1, window 4, 8 px mask units), 6,000 pretraining steps of batch 16,
  the fine-tuning `cpu` variant (segmentation 30 epochs, classification 40 with layer-wise lr
  decay 0.65, each run at least 400 steps): about an hour on 2 cores; the measured runs are in
  benchmarks/results/README.md.
- `full`: the paper's models at 224 px with one input channel and bf16 compute (release
  SwinMAE at batch 256, Swin-UNet 2,2,6,2 filled from it, Swin classifier), 800 pretraining
  epochs, the release's fine-tuning recipes: for a GPU. `--pretrain_epochs` and
  `--finetune_epochs=busi_seg:30` shorten them (the fine-tuning warm-up keeps its share);
  `benchmarks/gpu_label_efficiency.sh` runs it so in one 10-minute GPU session
  (benchmarks/results/label_efficiency_gpu/PLAN.md).
- `tiny`: the configs' `tiny` variants (cpu models, 20 pretraining and 40 fine-tuning steps): a
  check that every stage runs and the JSON is complete (the tests run it on a sixth of BUSI,
  one fraction and two folds); the numbers mean nothing.
`--export` also writes the pretrained weights as PyTorch files, in a CPU process while the
fine-tuning runs.
Pretraining draws ultrasound and X-ray images equally (`data.mixture`), so that the 780 BUSI
images are not drowned by the 3,957 chest X-rays. Every stage resumes: rerun the same command
with the same `--scratch` after an interruption.
"""
import contextlib
import csv
import json
import os
import subprocess
import sys
import time

from absl import app, flags

import output  # benchmarks/output.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DATASETS = os.path.join(os.path.dirname(ROOT), "shared", "datasets")
# The config variants (configs/*.py:<variant>) that each benchmark variant starts from.
PRETRAIN_VARIANT = {"cpu": "sample", "full": "", "tiny": "tiny"}
FINETUNE_VARIANT = {"cpu": "cpu", "full": "", "tiny": "tiny"}
TASKS = ("busi_seg", "busi_cls")


flags.DEFINE_enum("variant", "cpu", list(PRETRAIN_VARIANT), "cpu, full (a GPU) or tiny (tests)")
flags.DEFINE_string("datasets", DATASETS, "folder with busi/ and chest_xray_pneumonia/")
flags.DEFINE_string("scratch", "/tmp/vismae_label_efficiency", "working folder; a rerun resumes")
flags.DEFINE_list("fractions", ["0.1", "0.25", "0.5", "1.0"], "label fractions")
flags.DEFINE_integer("folds", 5, "cross-validation folds")
flags.DEFINE_integer("max_folds", 0, "run only the first N folds (0: all)")
flags.DEFINE_integer("pretrain_steps", 0, "0: the variant's, or --pretrain_epochs")
flags.DEFINE_float("pretrain_epochs", 0.0, "0: the variant's length; its warm-up epochs stay")
flags.DEFINE_integer("pretrain_batch", 0, "global pretraining batch (0: the variant's, 16 or "
                     "256); smaller for accelerators with less memory")
flags.DEFINE_integer("repeats", 1, "fine-tuning runs per fold and fraction with different "
                     "seeds, averaged")
flags.DEFINE_list("finetune_epochs", [], "N for every task or TASK:N (busi_seg:30) for one, "
                  "the warm-up keeping its share of the run; else the variant's")
flags.DEFINE_multi_enum("tasks", list(TASKS), list(TASKS), "the tasks to run")
flags.DEFINE_bool("encoder_only", False, "load the pretrained encoder only (the Swin-UNet's "
                  "decoder starts random; in <task>_encoder_only)")
flags.DEFINE_bool("freeze_encoder", False, "train only what follows the encoder (linear "
                  "probing of the classifier)")
flags.DEFINE_float("probe_first", 0.0, "LP-FT: train only what follows the encoder for this "
                   "share of each run first")
flags.DEFINE_enum("masking", "random", ["random", "uniform"], "pretraining masking "
                  "(config.mae.masking); uniform pretrains in <scratch>/pretrain_uniform and "
                  "fine-tunes in <task>_uniform")
flags.DEFINE_float("secondary_ratio", 0.25, "uniform masking: config.mae.secondary_ratio (other "
                   "values add _secondary<ratio> to those folder names)")
flags.DEFINE_bool("compare_random", True, "also fine-tune from random initialisation")
flags.DEFINE_string("versus", "", "a JSON this script wrote on the same folds: paired t-tests "
                    "of this run's pretrained fold values against that run's, and its random "
                    "runs where this one has none (--nocompare_random)")
flags.DEFINE_bool("export", False, "also export the pretrained weights to PyTorch files "
                  "(<pretraining>/export/model.safetensors and .pth, by --config.task=export) in "
                  "a CPU-only process beside the fine-tuning")
flags.DEFINE_string("json", "", "write the results here")


def epochs_by_task(entries) -> dict:
  """--finetune_epochs as {task, or "" for every task: epochs}."""
  epochs = {}
  for task, _, n in (entry.rpartition(":") for entry in entries):
    if task not in ("",) + TASKS or not n.replace(".", "", 1).isdigit():
      raise flags.ValidationError(f"--finetune_epochs={','.join(entries)}: give N or TASK:N "
                                  f"with a TASK of {TASKS}")
    epochs[task] = float(n)
  return epochs


flags.register_validator("finetune_epochs", lambda entries: epochs_by_task(entries) is not None)


def link_images(datasets: str, farm: str):
  """A folder tree ingest reads as US (BUSI) and XR (chest X-ray) without copying pixels."""
  for name, modality in (("busi", "us"), ("chest_xray_pneumonia", "xr")):
    with open(os.path.join(datasets, name, "labels.csv"), newline="") as f:
      for row in csv.DictReader(f):
        link = os.path.join(farm, modality, row["image"].replace("/", "_"))
        if not os.path.exists(link):
          os.makedirs(os.path.dirname(link), exist_ok=True)
          os.symlink(os.path.abspath(os.path.join(datasets, name, row["image"])), link)


def malignancy_csv(busi: str, path: str) -> str:
  """BUSI benign (0) vs malignant (1), normal images left out, paths absolute."""
  with open(os.path.join(busi, "labels.csv"), newline="") as f:
    rows = [r for r in csv.DictReader(f) if r["class"] != "normal"]
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["image", "label"])
    w.writerows([os.path.join(busi, r["image"]), r["malignant"]] for r in rows)
  return path


def pretrain_config(args, shards: str):
  from vismae_jax import config_lib
  config = config_lib.pretrain(variant=PRETRAIN_VARIANT[args.variant])
  config.data.source, config.data.path = "shards", shards
  config.data.mixture.update(US=1.0, XR=1.0)
  if args.variant == "cpu":
    config.total_steps, config.checkpoint_every = 6000, 1000
  elif args.variant == "full":
    config.model.in_chans, config.dtype, config.batch_size = 1, "bfloat16", 256
  config.mae.masking, config.mae.secondary_ratio = args.masking, args.secondary_ratio
  if args.pretrain_epochs:
    config.num_epochs, config.total_steps = args.pretrain_epochs, 0
  config.total_steps = args.pretrain_steps or config.total_steps
  config.batch_size = args.pretrain_batch or config.batch_size
  return config


def pretrain(args, shards: str, workdir: str, mesh):
  """Pretrains (or resumes) in `workdir`; returns the config."""
  from vismae_jax.train import loop, pretrain as pretrain_task
  config = pretrain_config(args, shards)
  loop.train(pretrain_task.make_task(config, workdir, mesh), config, workdir, mesh)
  return config


def start_export(args, workdir: str, log_path: str) -> subprocess.Popen:
  """`--config.task=export` of the pretraining in `workdir`, on the CPU: it needs no accelerator,
  and so takes none of its memory or time from the fine-tuning that runs meanwhile."""
  variant = PRETRAIN_VARIANT[args.variant]
  with open(log_path, "w") as log:
    return subprocess.Popen(
        [sys.executable, "-m", "vismae_jax.main",
         "--config=configs/generic.py" + (f":{variant}" if variant else ""),
         f"--workdir={workdir}", "--config.task=export"],
        cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=log,
        stderr=subprocess.STDOUT)


def finish_export(process: subprocess.Popen, workdir: str) -> dict:
  """The export's exit status and its files' sizes."""
  folder = os.path.join(workdir, "export")
  out = {"returncode": process.wait()}
  if out["returncode"] == 0:
    out["files"] = {name: os.path.getsize(os.path.join(folder, name))
                    for name in sorted(os.listdir(folder))}
  return out


@contextlib.contextmanager
def timed(seconds: dict, stage: str):
  """seconds[stage]: the wall-clock seconds of the block."""
  start = time.perf_counter()
  yield
  seconds[stage] = time.perf_counter() - start


def masking_suffix(args) -> str:
  """What tells a sparse pretraining's folders apart from the release masking's."""
  if args.masking == "random":
    return ""
  return "_uniform" + (f"_secondary{args.secondary_ratio:g}" if args.secondary_ratio != 0.25
                       else "")


def finetune_config(args, name: str, kind: str, csv_path: str, pretrained: str):
  from vismae_jax import config_lib
  config = config_lib.finetune(kind, variant=FINETUNE_VARIANT[args.variant])
  if args.variant == "full":
    config.model.in_chans, config.dtype = 1, "bfloat16"
    config.finetune.fill_deeper = kind == "segmentation"
  config.data.csv = csv_path
  config.data.fold_column = ""  # drawn folds, as in the recorded runs (not BUSI's fold column)
  config.finetune.pretrained = pretrained
  config.finetune.freeze_encoder = args.freeze_encoder
  config.finetune.encoder_only = args.encoder_only
  config.finetune.probe_first = args.probe_first
  config.protocol.update(folds=args.folds, max_folds=args.max_folds,
                         compare_random=args.compare_random,
                         repeats=args.repeats,
                         fractions=tuple(float(f) for f in args.fractions))
  epochs = epochs_by_task(args.finetune_epochs)
  epochs = epochs.get(name, epochs.get("", 0.0))
  if epochs:
    # A shorter run of the same recipe: the release's segmentation warm-up alone (40 epochs)
    # would outlast a 30-epoch run.
    config.optim.warmup_epochs *= epochs / config.num_epochs
    config.num_epochs = epochs
  return config


def task_result(summary: dict) -> dict:
  out = {"metric": summary["metric"], "fractions": summary["fractions"],
         "pretrained": {}, "random": {}, "p_values": {}}
  for fraction in summary["fractions"]:
    entry = summary["by_fraction"][str(fraction)]
    for init in ("pretrained", "random"):
      if init in entry:
        out[init][str(fraction)] = {k: entry[init][k] for k in ("mean", "ci95", "per_fold")}
    out["p_values"][str(fraction)] = entry.get("p_value")
  return out


def compare_with(result: dict, other: dict, path: str):
  """Paired t-tests of `result`'s pretrained fold values against `other`'s (another pretraining
  on the same folds); `other`'s random runs stand in for missing ones of `result`."""
  from vismae_jax import metrics
  for name in TASKS:
    if name not in result or name not in other:
      continue
    mine, theirs = result[name], other[name]
    if not mine["random"]:
      mine["random"] = theirs["random"]
      mine["random_from"] = path
    versus = {"path": path, "masking": other.get("masking", "random"), "pretrained": {},
              "difference": {}, "p_values": {}}
    for fraction in mine["fractions"]:
      f = str(fraction)
      a = mine["pretrained"][f]["per_fold"]
      b = theirs["pretrained"][f]["per_fold"]
      if len(a) != len(b):
        sys.exit(f"{path}: {len(b)} folds at {fraction} against {len(a)} here: not the same folds")
      versus["pretrained"][f] = theirs["pretrained"][f]
      versus["difference"][f] = float(sum(a) - sum(b)) / len(a)
      versus["p_values"][f] = metrics.paired_test(a, b)["p_value"] if len(a) > 1 else None
      if mine.get("random_from"):
        random = mine["random"][f]["per_fold"]
        mine["p_values"][f] = metrics.paired_test(a, random)["p_value"] if len(a) > 1 else None
    mine["versus"] = versus


def main(argv):
  del argv
  args = flags.FLAGS
  names = args.tasks
  datasets, scratch = os.path.abspath(args.datasets), os.path.abspath(args.scratch)
  import jax
  from data_pipelines import ingest
  from vismae_jax import config_lib, parallel, protocol

  busi = os.path.join(datasets, "busi")
  if not os.path.exists(os.path.join(busi, "labels.csv")):
    sys.exit(f"{busi} not found: this benchmark needs the real images (--datasets)")
  os.makedirs(scratch, exist_ok=True)
  # Every stage's and every rerun's executables, the small ones too (the default keeps only
  # those that took a second to compile): a rerun or another --max_folds starts compiled.
  jax.config.update("jax_compilation_cache_dir", os.path.join(scratch, "compile_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  log = open(os.path.join(scratch, "runs.log"), "a")  # the runs' own closing lines
  mesh = parallel.make_mesh(config_lib.pretrain().mesh)  # the configs' default: every device
  t0 = time.perf_counter()
  seconds = {}  # per stage
  size = 224 if args.variant == "full" else 64
  farm, shards = os.path.join(scratch, "images"), os.path.join(scratch, "shards")
  with timed(seconds, "ingest"):
    link_images(datasets, farm)
    ingest.ingest(ingest.IngestConfig(input=farm, output=shards, salt="label-efficiency",
                                      size=size))
  pretrained = os.path.join(scratch, "pretrain" + masking_suffix(args))
  with timed(seconds, "pretraining"), contextlib.redirect_stdout(log):
    pretraining = pretrain(args, shards, pretrained, mesh)
  export_log = os.path.join(scratch, "export.log")
  exporter = start_export(args, pretrained, export_log) if args.export else None

  tasks = {"busi_seg": ("segmentation", os.path.join(busi, "labels.csv")),
           "busi_cls": ("classification",
                        malignancy_csv(busi, os.path.join(scratch, "busi_malignancy.csv")))}
  result = {"variant": args.variant, "image_size": size, "folds": args.folds,
            "max_folds": args.max_folds, "repeats": args.repeats,
            "freeze_encoder": args.freeze_encoder, "probe_first": args.probe_first,
            "encoder_only": args.encoder_only,
            "masking": args.masking, "secondary_ratio": args.secondary_ratio,
            "pretraining": {k: pretraining[k]
                            for k in ("batch_size", "num_epochs", "total_steps")}}
  # Each recipe its own protocol workdir beside the plain fine-tuning one.
  recipe = ("_frozen" if args.freeze_encoder else "") + (
      "_encoder_only" if args.encoder_only else "") + (
      f"_probe{args.probe_first:g}" if args.probe_first else "") + (
      masking_suffix(args))
  for name in names:
    kind, csv_path = tasks[name]
    config = finetune_config(args, name, kind, csv_path, pretrained)
    with timed(seconds, name), contextlib.redirect_stdout(log):
      result[name] = task_result(protocol.run(config, os.path.join(scratch, name + recipe), mesh))
    result[name]["epochs"] = config.num_epochs
  if exporter:
    with timed(seconds, "export_wait"):
      result["export"] = {"log": export_log, **finish_export(exporter, pretrained)}
  result["seconds"] = time.perf_counter() - t0
  result["stage_seconds"] = seconds
  if args.versus:
    with open(args.versus) as f:
      compare_with(result, json.load(f), args.versus)

  def line(name):
    r = result[name]
    versus = r.get("versus")
    return ", ".join(
        f"{float(f):.0%} {r['pretrained'][str(f)]['mean']:.3f} vs "
        f"{r['random'][str(f)]['mean']:.3f} (p={r['p_values'][str(f)] or 1:.2g})"
        + (f", {versus['masking']} masking {versus['pretrained'][str(f)]['mean']:.3f} "
           f"(p={versus['p_values'][str(f)] or 1:.2g})" if versus else "")
        for f in r["fractions"])
  titles = {"busi_seg": "BUSI Dice", "busi_cls": "malignancy AUC"}
  how = f", {args.masking} masking" + (", frozen encoders" if args.freeze_encoder else "") + (
      ", encoders only" if args.encoder_only else "") + (
      f", the first {args.probe_first:.0%} frozen" if args.probe_first else "")
  output.write(f"label_efficiency ({args.variant}{how}, pretrained vs random): "
               + "; ".join(f"{titles[n]} {line(n)}" for n in names), result, args.json)


if __name__ == "__main__":
  app.run(main)
