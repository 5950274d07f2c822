r"""SelfMedMAE's 3-D claim on real MRI: ViT-MAE self-pretraining, then UNETR-3D, against random;
and SwinUNETR-3D on the same folds (--model=swinunetr), from SMIT's self-pretraining (--smit).

  python benchmarks/experiments/volume_protocol.py --variant=cpu --json=/tmp/hippocampus.json
  python benchmarks/experiments/volume_protocol.py --model=swinunetr --variant=cpu \
      --json=/tmp/hippocampus_swinunetr.json
  python benchmarks/experiments/volume_protocol.py --model=swinunetr --smit --variant=cpu \
      --json=/tmp/hippocampus_smit.json

The commands a user runs, timed, on the Decathlon hippocampus of `--datasets` (by default
../shared/datasets/msd_hippocampus beside the checkout: 260 labelled T1 MRI volumes of about
35x50x36 voxels at 1 mm, labels anterior and posterior hippocampus):
1. `python -m data_pipelines.volume_ingest` of imagesTr (images only) into volume shards;
2. `python -m vismae_jax.main --config=configs/vit_mae3d.py:VARIANT` on them (self-pretraining
   on the target data, as SelfMedMAE does);
3. `python -m vismae_jax.main --config=configs/unetr3d.py:VARIANT` on the Decathlon folder: k-fold
   cross-validation at each label fraction, from the pretrained encoder and from random
   initialisation, whole volumes predicted by sliding windows.
One summary line; `--json` writes per fraction each initialisation's mean Dice with its CI, Dice
per structure with CIs, HD95 in mm, the paired t-test's p-value across folds (`p_value`) and
Wilcoxon's case by case (`case_test`), and each stage's seconds.
Every stage resumes: rerun with the same `--scratch`. With --model=swinunetr step 3 runs
configs/swin_unetr3d.py, from random initialisation, or from --pretrained (a Swin pretraining
workdir or a MONAI checkpoint) against random, or with --smit after step 2 pretrains SMIT
(configs/smit3d.py) instead of ViT-MAE; the folds are the same (the protocol draws them from
the data and config.seed).

Variants: `cpu` (the configs' cpu variants: crops of 32x48x32, a 0.5M-parameter ViT, UNETR
feature size 8), `tiny` (a check that every stage runs; the numbers mean nothing).
"""
import json
import os
import subprocess
import sys
import time

from absl import app, flags

BENCHMARKS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(BENCHMARKS)
sys.path.insert(0, BENCHMARKS)
import output  # noqa: E402  benchmarks/output.py

HIPPOCAMPUS = os.path.join(os.path.dirname(ROOT), "shared", "datasets", "msd_hippocampus")

flags.DEFINE_enum("model", "unetr", ["unetr", "swinunetr"], "UNETR-3D from a ViT-MAE-3D "
                  "self-pretraining, or SwinUNETR-3D (configs/swin_unetr3d.py).")
flags.DEFINE_string("pretrained", "", "--model=swinunetr: the weights to start from (empty: "
                    "random initialisation only, unless --smit).")
flags.DEFINE_bool("smit", False, "--model=swinunetr: self-pretrain with SMIT (configs/smit3d.py) "
                  "on the volumes first and fine-tune from its teacher, against random.")
flags.DEFINE_enum("variant", "cpu", ["cpu", "tiny"], "The configs' variant.")
flags.DEFINE_string("datasets", HIPPOCAMPUS, "A Decathlon folder (dataset.json, imagesTr/, "
                    "labelsTr/).")
flags.DEFINE_string("scratch", "/tmp/volume_protocol", "Shards, checkpoints and reports.")
flags.DEFINE_integer("pretrain_steps", 0, "ViT-MAE or SMIT steps (0: the variant's schedule).")
flags.DEFINE_integer("finetune_steps", 0, "Steps of every fine-tuning run (0: the variant's).")
flags.DEFINE_list("fractions", ["0.1", "1.0"], "Label fractions.")
flags.DEFINE_integer("folds", 5, "Cross-validation folds.")
flags.DEFINE_integer("max_folds", 0, "Run only the first N folds (0: all).")
flags.DEFINE_bool("compare_random", True, "Also fine-tune from random initialisation (the "
                  "paired test); --nocompare_random runs the pretrained start only.")
flags.DEFINE_integer("num_classes", 3, "Classes, background included.")
flags.DEFINE_list("overrides", [], "More --config.KEY=VALUE settings of the fine-tuning runs, "
                  "without the --config. prefix (e.g. input.roi=(32,48,32)).")
flags.DEFINE_string("json", "", "Write the result here.")


def run(command: list[str]) -> float:
  """Runs one stage's command from the checkout; its seconds. Its output streams through, on
  stderr: stdout is the summary line's."""
  start = time.perf_counter()
  subprocess.run(command, cwd=ROOT, check=True, env=dict(os.environ, PYTHONPATH=ROOT),
                 stdout=sys.stderr)
  return time.perf_counter() - start


def main(argv):
  del argv
  args = flags.FLAGS
  shards = os.path.join(args.scratch, "volume_shards")
  smit = args.model == "swinunetr" and args.smit
  pretrain = os.path.join(args.scratch, "pretrain_smit" if smit else "pretrain")
  # One protocol workdir per recipe: the pretraining is shared, the runs of a recipe resumed.
  steps = [f"steps{args.finetune_steps}"] if args.finetune_steps else []
  recipe = "_".join([args.variant, *steps, *args.overrides]).replace("=", "-").replace("/", "-")
  finetune = os.path.join(args.scratch, f"{args.model}3d_{'smit_' if smit else ''}{recipe}")
  main_py = [sys.executable, "-m", "vismae_jax.main"]
  seconds = {}
  if args.model == "unetr" or smit:
    seconds["ingest"] = run([sys.executable, "-m", "data_pipelines.volume_ingest",
                             f"--input={os.path.join(args.datasets, 'imagesTr')}",
                             f"--output={shards}", "--salt=volume-protocol", "--modality=MR"])
    steps = [f"--config.total_steps={args.pretrain_steps}"] if args.pretrain_steps else []
    method = "smit3d.py" if smit else "vit_mae3d.py"
    seconds["pretrain"] = run([*main_py, f"--config=configs/{method}:{args.variant}",
                               f"--workdir={pretrain}", f"--config.data.path={shards}", *steps])
  config_file, pretrained = {"unetr": ("unetr3d.py", pretrain),
                             "swinunetr": ("swin_unetr3d.py",
                                           pretrain if smit else args.pretrained)}[args.model]
  steps = [f"--config.total_steps={args.finetune_steps}"] if args.finetune_steps else []
  fractions = ",".join(args.fractions)
  seconds["finetune"] = run([
      *main_py, f"--config=configs/{config_file}:{args.variant}", f"--workdir={finetune}",
      f"--config.data.csv={args.datasets}", f"--config.finetune.pretrained={pretrained}",
      f"--config.finetune.num_classes={args.num_classes}", f"--config.protocol.folds={args.folds}",
      f"--config.protocol.max_folds={args.max_folds}",
      f"--config.protocol.fractions=({fractions},)",
      f"--config.protocol.compare_random={args.compare_random and bool(pretrained)}", *steps,
      *(f"--config.{o}" for o in args.overrides)])
  with open(os.path.join(finetune, "report.json")) as f:
    report = json.load(f)
  with open(os.path.join(args.datasets, "dataset.json")) as f:
    names = json.load(f)["labels"]
  structures = [names[str(c)] for c in range(1, args.num_classes)]
  result = {"model": args.model, "pretraining": "smit" if smit else (
                "vit_mae" if args.model == "unetr" else args.pretrained),
            "variant": args.variant, "structures": structures,
            "stage_seconds": seconds,
            "hd95_unit": report["units"]["hd95"], "by_fraction": {}}
  parts = []
  for fraction, entry in report["by_fraction"].items():
    result["by_fraction"][fraction] = {
        **{init: {"mean": e["mean"], "ci95": e["ci95"], "per_fold": e["per_fold"],
                  "hd95": e["hd95"],
                  "structures": dict(zip(structures, e["class_dice"]))}
           for init, e in entry.items() if isinstance(e, dict) and "mean" in e},
        "p_value": entry.get("p_value"), "case_test": entry.get("wilcoxon")}
    r = result["by_fraction"][fraction]
    first = "pretrained" if "pretrained" in r else "random"
    p = lambda v: "-" if v is None else f"{v:.3g}"  # one fold has no test across folds
    versus = (f" vs random {r['random']['mean']:.3f} (p={p(r['p_value'])} across folds, "
              f"{p((r['case_test'] or {}).get('p_value'))} case by case)"
              if first == "pretrained" and "random" in r else "")
    parts.append(f"{float(fraction):.0%}: {first} {r[first]['mean']:.3f}{versus}")
  name = {"unetr": "UNETR-3D", "swinunetr": "SwinUNETR-3D"}[args.model]
  output.write(f"hippocampus {name} Dice, {args.folds} folds: " + "; ".join(parts)
               + f"; stages {', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())}",
               result, args.json)


if __name__ == "__main__":
  app.run(main)
