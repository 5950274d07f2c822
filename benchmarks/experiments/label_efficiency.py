r"""The paper's central claim on open data: self-pretraining helps most when labels are few.

  python benchmarks/experiments/label_efficiency.py --variant=cpu --json=/tmp/label_efficiency.json

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

BENCHMARKS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(BENCHMARKS)
sys.path[:0] = [BENCHMARKS, ROOT]  # output.py beside the timers; the project
import compare_methods  # noqa: E402  benchmarks/experiments/compare_methods.py
import output  # noqa: E402  benchmarks/output.py

DATASETS = os.path.join(os.path.dirname(ROOT), "shared", "datasets")
# The config variants (configs/*.py:<variant>) that each benchmark variant starts from.
PRETRAIN_VARIANT = {"cpu": "sample", "full": "", "tiny": "tiny"}
FINETUNE_VARIANT = {"cpu": "cpu", "full": "", "tiny": "tiny"}
TASKS = ("busi_seg", "busi_cls")
# methods.REGISTRY' config files, for the export.
CONFIG_FILES = {"mae": "generic.py", "simmim": "simmim.py", "simclr": "simclr.py",
                "dino": "dino.py", "vit_mae": "vit_mae2d.py"}
# Steps of the short run that times a method's step for --pretrain_seconds; the log's rate of
# the last TIMING_LOG of them (compilation and the first steps left out) is what counts.
TIMING_STEPS, TIMING_LOG = 60, 20


flags.DEFINE_enum("variant", "cpu", list(PRETRAIN_VARIANT), "cpu, full (a GPU) or tiny (tests)")
flags.DEFINE_string("datasets", DATASETS, "folder with busi/ and chest_xray_pneumonia/")
flags.DEFINE_string("scratch", "", "working folder; a rerun resumes (default: "
                    "/tmp/vismae_label_efficiency_<variant>, one per variant, since a workdir "
                    "resumes only under the config that made it)")
flags.DEFINE_list("fractions", ["0.1", "0.25", "0.5", "1.0"], "label fractions")
flags.DEFINE_integer("folds", 5, "cross-validation folds")
flags.DEFINE_integer("max_folds", 0, "run only the first N folds (0: all)")
flags.DEFINE_list("methods", ["mae"], "pretraining methods (config.method: mae, simmim, "
                  "simclr, dino, vit_mae), each pretrained on the same images (in "
                  "<scratch>/pretrain, or pretrain_<method> for all but mae) and fine-tuned on "
                  "the same folds, fractions and seeds (in <task>_<method>); the first method's "
                  "protocols also run the random initialisation that every method is tested "
                  "against, and vit_mae's its own (UNETR-2D and the ViT classifier: another "
                  "model)")
flags.DEFINE_float("pretrain_seconds", 0.0, "pretrain every method for this wall-clock time: "
                   "its steps are these seconds over its step time, measured in a short run "
                   "first (in <pretraining>_timing); 0: the variant's steps")
flags.DEFINE_integer("pretrain_steps", 0, "0: the variant's, or --pretrain_epochs")
flags.DEFINE_float("pretrain_epochs", 0.0, "0: the variant's length; its warm-up epochs stay")
flags.DEFINE_integer("pretrain_batch", 0, "global pretraining batch (0: the variant's, 16 or "
                     "256); smaller for accelerators with less memory")
flags.DEFINE_integer("repeats", 1, "fine-tuning runs per fold and fraction with different "
                     "seeds, averaged")
flags.DEFINE_list("shots", [], "also fine-tune on N labelled cases per class (classification) "
                  "or N images (segmentation) of each fold, for each N (config.protocol.shots)")
flags.DEFINE_integer("shot_draws", 1, "draws of the few-shot cases per fold and N, averaged")
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
flags.DEFINE_integer("mask_unit", 0, "SwinMAE's mask unit in px (config.mae.mask_unit; 0: the "
                     "variant's; others add _unit<N> to those folder names)")
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
flags.register_validator("methods", lambda methods: methods and set(methods) <= set(CONFIG_FILES),
                         f"--methods: a comma-separated list of {tuple(CONFIG_FILES)}")


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


def pretrain_config(args, shards: str, method: str):
  from vismae_jax.train import methods
  options = {"ndim": 2} if method == "vit_mae" else {}
  config = methods.pretrain_config(method, variant=PRETRAIN_VARIANT[args.variant], **options)
  config.data.source, config.data.path = "shards", shards
  config.data.mixture.update(US=1.0, XR=1.0)
  if args.variant == "cpu":
    config.total_steps, config.checkpoint_every = 6000, 1000
  elif args.variant == "full":
    config.model.in_chans, config.dtype, config.batch_size = 1, "bfloat16", 256
  if method == "mae":
    config.mae.masking, config.mae.secondary_ratio = args.masking, args.secondary_ratio
    config.mae.mask_unit = args.mask_unit or config.mae.mask_unit
  if args.pretrain_epochs:
    config.num_epochs, config.total_steps = args.pretrain_epochs, 0
  config.total_steps = args.pretrain_steps or config.total_steps
  config.batch_size = args.pretrain_batch or config.batch_size
  return config


def step_seconds(config, workdir: str, mesh) -> float:
  """Seconds per step of `config`'s pretraining here: TIMING_STEPS steps in `workdir` (a rerun
  reads the finished run's log), timed over the last TIMING_LOG."""
  from vismae_jax.train import loop, pretrain as pretrain_task
  timing = config.copy_and_resolve_references()
  timing.total_steps, timing.log_every = TIMING_STEPS, TIMING_LOG
  timing.checkpoint_every = TIMING_STEPS
  loop.train(pretrain_task.make_task(timing, workdir, mesh), timing, workdir, mesh)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rate = [json.loads(line) for line in f][-1]["images_per_s"]
  return config.batch_size / rate


def pretrain(args, shards: str, workdir: str, mesh, method: str):
  """Pretrains (or resumes) `method` in `workdir`; returns the config and what it cost."""
  from vismae_jax.train import loop, pretrain as pretrain_task
  config = pretrain_config(args, shards, method)
  cost = {}
  if args.pretrain_seconds:
    cost["step_seconds"] = step_seconds(config, workdir + "_timing", mesh)
    config.total_steps = max(1, round(args.pretrain_seconds / cost["step_seconds"]))
  start = time.perf_counter()
  last = loop.train(pretrain_task.make_task(config, workdir, mesh), config, workdir, mesh)
  cost.update(total_steps=config.total_steps, seconds=time.perf_counter() - start,
              final_loss=last.get("loss"))
  return config, cost


def start_export(args, method: str, workdir: str, log_path: str) -> subprocess.Popen:
  """`--config.task=export` of the pretraining in `workdir`, on the CPU: it needs no accelerator,
  and so takes none of its memory or time from the fine-tuning that runs meanwhile."""
  variant = PRETRAIN_VARIANT[args.variant]
  with open(log_path, "w") as log:
    return subprocess.Popen(
        [sys.executable, "-m", "vismae_jax.main",
         f"--config=configs/{CONFIG_FILES[method]}" + (f":{variant}" if variant else ""),
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


def method_suffix(args, method: str) -> str:
  """What tells a method's folders (pretrain<suffix>, <task><suffix>) apart from the release's
  SwinMAE's: the method's name, or for SwinMAE its sparse masking and mask unit."""
  if method != "mae":
    return f"_{method}"
  masking = "" if args.masking == "random" else "_uniform" + (
      f"_secondary{args.secondary_ratio:g}" if args.secondary_ratio != 0.25 else "")
  return masking + (f"_unit{args.mask_unit}" if args.mask_unit else "")


def finetune_config(args, name: str, kind: str, csv_path: str, pretrained: str,
                    compare_random: bool, method: str = "mae"):
  """The fine-tuning protocol of `name` from `pretrained`: the Swin-UNet or classifier, or for
  vit_mae UNETR-2D or the ViT classifier."""
  from vismae_jax import config_lib
  variant = FINETUNE_VARIANT[args.variant]
  vit = method == "vit_mae"
  config = (config_lib.vit_finetune(kind, 2, variant) if vit else
            config_lib.finetune(kind, variant=variant))
  if args.variant == "full":
    config.model.in_chans, config.dtype = 1, "bfloat16"
    config.finetune.fill_deeper = kind == "segmentation" and not vit
  config.data.csv = csv_path
  config.data.fold_column = ""  # drawn folds, as in the recorded runs (not BUSI's fold column)
  config.finetune.pretrained = pretrained
  config.finetune.freeze_encoder = args.freeze_encoder
  config.finetune.encoder_only = args.encoder_only
  config.finetune.probe_first = args.probe_first
  config.protocol.update(folds=args.folds, max_folds=args.max_folds,
                         compare_random=compare_random, repeats=args.repeats,
                         fractions=tuple(float(f) for f in args.fractions),
                         shots=tuple(int(n) for n in args.shots), shot_draws=args.shot_draws)
  epochs = epochs_by_task(args.finetune_epochs)
  epochs = epochs.get(name, epochs.get("", 0.0))
  if epochs:
    # A shorter run of the same recipe: the release's segmentation warm-up alone (40 epochs)
    # would outlast a 30-epoch run.
    config.optim.warmup_epochs *= epochs / config.num_epochs
    config.num_epochs = epochs
  return config


def task_result(summary: dict) -> dict:
  """A protocol's summary as this script reports it: per setting (a fraction's str, or
  "N shots"), each initialisation's mean, CI and per-fold values and the paired p-value."""
  out = {"metric": summary["metric"], "fractions": summary["fractions"],
         "shots": summary.get("shots", []), "settings": [],
         "pretrained": {}, "random": {}, "p_values": {}}
  entries = [(str(f), summary["by_fraction"][str(f)]) for f in summary["fractions"]] + [
      (f"{n} shots", summary["by_shots"][str(n)]) for n in summary.get("shots", [])]
  for key, entry in entries:
    out["settings"].append(key)
    for init in ("pretrained", "random"):
      if init in entry:
        out[init][key] = {k: entry[init][k] for k in ("mean", "ci95", "per_fold")}
    out["p_values"][key] = entry.get("p_value")
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
    for f in mine["settings"]:
      a = mine["pretrained"][f]["per_fold"]
      b = theirs["pretrained"][f]["per_fold"]
      if len(a) != len(b):
        sys.exit(f"{path}: {len(b)} folds at {f} against {len(a)} here: not the same folds")
      versus["pretrained"][f] = theirs["pretrained"][f]
      versus["difference"][f] = float(sum(a) - sum(b)) / len(a)
      versus["p_values"][f] = metrics.paired_test(a, b)["p_value"] if len(a) > 1 else None
      if mine.get("random_from"):
        random = mine["random"][f]["per_fold"]
        mine["p_values"][f] = metrics.paired_test(a, random)["p_value"] if len(a) > 1 else None
    mine["versus"] = versus


def main(argv):
  """The benchmark; a scratch folder made under other settings is refused in one line."""
  del argv
  from vismae_jax import config_lib
  try:
    run(flags.FLAGS)
  except config_lib.ConfigError as e:
    sys.exit(f"error: {e}")


def run(args):
  names = args.tasks
  datasets = os.path.abspath(args.datasets)
  scratch = os.path.abspath(args.scratch or f"/tmp/vismae_label_efficiency_{args.variant}")
  import jax
  from data_pipelines import ingest
  from vismae_jax import checkpoint, parallel, protocol
  from vismae_jax.train import methods

  busi = os.path.join(datasets, "busi")
  if not os.path.exists(os.path.join(busi, "labels.csv")):
    sys.exit(f"{busi} not found: this benchmark needs the real images (--datasets)")
  os.makedirs(scratch, exist_ok=True)
  # Every stage's and every rerun's executables, the small ones too (the default keeps only
  # those that took a second to compile): a rerun or another --max_folds starts compiled.
  jax.config.update("jax_compilation_cache_dir", os.path.join(scratch, "compile_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  log = open(os.path.join(scratch, "runs.log"), "a")  # the runs' own closing lines
  mesh = parallel.make_mesh(methods.pretrain_config().mesh)  # the configs' default: every device
  t0 = time.perf_counter()
  seconds = {}  # per stage
  size = 224 if args.variant == "full" else 64
  farm, shards = os.path.join(scratch, "images"), os.path.join(scratch, "shards")
  with timed(seconds, "ingest"):
    link_images(datasets, farm)
    ingest.ingest(ingest.IngestConfig(input=farm, output=shards, salt="label-efficiency",
                                      size=size))
  methods = args.methods
  pretrained = {m: os.path.join(scratch, "pretrain" + method_suffix(args, m)) for m in methods}
  pretraining = {}
  with timed(seconds, "pretraining"), contextlib.redirect_stdout(log):
    for m in methods:
      pretraining[m] = pretrain(args, shards, pretrained[m], mesh, m)
  # The protocols name the step they fine-tune from, so that a rerun after longer pretraining
  # refuses the old protocol's runs (protocol.check_same_config) instead of reusing them.
  weights = {m: os.path.join(*map(str, checkpoint.chosen_step(pretrained[m]))) for m in methods}
  exporters = {m: start_export(args, m, pretrained[m], os.path.join(pretrained[m], "export.log"))
               for m in (methods if args.export else ())}

  tasks = {"busi_seg": ("segmentation", os.path.join(busi, "labels.csv")),
           "busi_cls": ("classification",
                        malignancy_csv(busi, os.path.join(scratch, "busi_malignancy.csv")))}
  first = pretraining[methods[0]][0]
  result = {"variant": args.variant, "image_size": size, "folds": args.folds,
            "max_folds": args.max_folds, "repeats": args.repeats,
            "freeze_encoder": args.freeze_encoder, "probe_first": args.probe_first,
            "encoder_only": args.encoder_only,
            "masking": args.masking, "secondary_ratio": args.secondary_ratio,
            "mask_unit": first.mae.get("mask_unit"),
            "pretraining": {k: first[k] for k in ("batch_size", "num_epochs", "total_steps")},
            "methods": {m: cost for m, (_, cost) in pretraining.items()},
            "pretrain_seconds": args.pretrain_seconds}
  # Each recipe its own protocol workdir beside the plain fine-tuning one.
  recipe = ("_frozen" if args.freeze_encoder else "") + (
      "_encoder_only" if args.encoder_only else "") + (
      f"_probe{args.probe_first:g}" if args.probe_first else "")
  titles = {"busi_seg": "BUSI Dice", "busi_cls": "malignancy AUC"}
  for name in names:
    kind, csv_path = tasks[name]
    by_method = {}
    with timed(seconds, name), contextlib.redirect_stdout(log):
      for i, m in enumerate(methods):  # the first method's protocol runs the random inits,
        own_random = i == 0 or m == "vit_mae"  # and the ViT's its own: another model
        config = finetune_config(args, name, kind, csv_path, weights[m],
                                 compare_random=args.compare_random and own_random, method=m)
        by_method[m] = task_result(protocol.run(
            config, os.path.join(scratch, name + recipe + method_suffix(args, m)), mesh))
    result[name] = {**by_method[methods[0]], "epochs": config.num_epochs}
    if len(methods) > 1:
      comparison = compare_methods.compare(by_method)
      stem = os.path.join(scratch, f"{name}{recipe}_methods")
      with open(stem + ".md", "w") as f:
        f.write("\n".join(compare_methods.table(comparison, titles[name])))
      comparison["files"] = [stem + ".md", compare_methods.figure(
          comparison, stem + ".png", f"{titles[name]}, {', '.join(methods)} and random")]
      result[name]["methods"] = comparison
  if exporters:
    with timed(seconds, "export_wait"):
      result["export"] = {m: {"log": os.path.join(pretrained[m], "export.log"),
                              **finish_export(p, pretrained[m])} for m, p in exporters.items()}
  result["seconds"] = time.perf_counter() - t0
  result["stage_seconds"] = seconds
  if args.versus:
    with open(args.versus) as f:
      compare_with(result, json.load(f), args.versus)

  def line(name):
    r = result[name]
    if "methods" in r:
      c = r["methods"]
      return ", ".join(compare_methods.setting_label(s) + " " + " ".join(
          f"{m} {means[s]['mean']:.3f}" for m, means in c["means"].items())
          for s in c["settings"])
    versus = r.get("versus")
    return ", ".join(
        f"{compare_methods.setting_label(s)} {r['pretrained'][s]['mean']:.3f} vs "
        f"{r['random'][s]['mean']:.3f} (p={r['p_values'][s] or 1:.2g})"
        + (f", {versus['masking']} masking {versus['pretrained'][s]['mean']:.3f} "
           f"(p={versus['p_values'][s] or 1:.2g})" if versus else "")
        for s in r["settings"])
  how = f", {args.masking} masking" + (", frozen encoders" if args.freeze_encoder else "") + (
      ", encoders only" if args.encoder_only else "") + (
      f", the first {args.probe_first:.0%} frozen" if args.probe_first else "")
  what = ("pretrained vs random" if len(methods) == 1 else
          f"{', '.join(methods)}, random; tables in <task>_methods.md")
  output.write(f"label_efficiency ({args.variant}{how}, {what}): "
               + "; ".join(f"{titles[n]} {line(n)}" for n in names), result, args.json)

if __name__ == "__main__":
  app.run(main)
