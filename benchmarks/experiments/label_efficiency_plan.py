r"""Device time of a label_efficiency.py run, extrapolated from its FLOPs before any is spent.

  python benchmarks/experiments/label_efficiency_plan.py --variant=full --pretrain_epochs=80 \
      --finetune_epochs=busi_seg:30 --fractions=0.1,1.0 --max_folds=2

Takes label_efficiency.py's flags. Counts on the real splits of `--datasets` the images that each
stage trains on (loop.run_steps times the batch) and evaluates (every validation and the test
set, padded to whole batches, as predict_all runs them), multiplies by the model FLOPs per image
of the stage's jitted function (XLA's cost analysis of its CPU lowering, flops.py) and divides
by an achieved rate: `--tflops`, by default 82.3, the release SwinMAE's pretraining step on one
H100 (2,480 images/s at 33.2 GFLOP, bf16, batch 256: 8.3% of the chip's peak); fine-tuning runs
at `--finetune_share` of it (its batches of 32 and 48 images keep the chip less busy than 256).
Compilation, start-up and checkpoints are not in it: benchmarks/results/label_efficiency_gpu/
PLAN.md adds them. One summary line; `--json` holds every stage's images, GFLOP per image and
seconds, and the seconds per fold.
"""
import csv
import math
import os
import sys
import tempfile

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import flops  # noqa: E402  benchmarks/flops.py
import label_efficiency as le  # noqa: E402  benchmarks/experiments/, and its flags
import output  # noqa: E402  benchmarks/output.py

flags.DEFINE_float("tflops", 82.3, "achieved TFLOP/s of the pretraining step")
flags.DEFINE_float("finetune_share", 0.5, "the fine-tuning steps' rate as a share of it")
KINDS = {"busi_seg": "segmentation", "busi_cls": "classification"}
LOWERED_BATCH = 8  # images in the lowered functions; FLOPs scale with it


def per_image(function, *args) -> float:
  """GFLOP per image of `function(*args)` on a batch of LOWERED_BATCH images."""
  return flops.xla_flops(function, *args) / LOWERED_BATCH / 1e9


def pretraining(args) -> dict:
  import jax
  import jax.numpy as jnp

  from vismae_jax.train import loop, masked_image, optim, pretrain
  config = le.pretrain_config(args, shards="", method="mae")
  images = 0
  for name in ("busi", "chest_xray_pneumonia"):  # every image of both, as link_images
    with open(os.path.join(args.datasets, name, "labels.csv"), newline="") as f:
      images += sum(1 for _ in csv.DictReader(f))
  model, tx = pretrain.build_model(config), optim.make_optimizer(config)
  params = jax.eval_shape(lambda rng: masked_image.init_params(model, config, rng),
                          jax.random.PRNGKey(0))
  state = jax.eval_shape(loop.make_state_initializer(tx, config.seed), params)
  size = config.input.image_size
  step = loop.make_train_step(masked_image.make_loss_fn(model, config), tx)
  gflop = per_image(step, state, jax.ShapeDtypeStruct((LOWERED_BATCH, size, size), jnp.uint8),
                    optim.schedule(config, 1.0, 2))
  steps = loop.run_steps(config, images)
  return {"examples": images, "steps": steps, "images": steps * config.batch_size,
          "gflop_per_image": gflop}


def finetuning(args, name: str, csv_path: str) -> dict:
  """Per fold: the images that its runs train on and evaluate, and each one's GFLOP."""
  import jax
  import jax.numpy as jnp

  from data_pipelines import downstream
  from vismae_jax import protocol
  from vismae_jax.train import finetune, loop, optim
  # Any pretrained path: plan() only asks whether there is one, to run both initialisations.
  config = le.finetune_config(args, name, KINDS[name], csv_path, pretrained="planned",
                             compare_random=True)
  folds = {}
  for run in protocol.plan(config, downstream.read_table(csv_path, finetune.columns(config))):
    steps = loop.run_steps(config, len(run["train"]))
    checks = math.ceil(steps / config.checkpoint_every)  # validations, the last step's included
    padded = lambda n: math.ceil(n / config.eval_batch_size) * config.eval_batch_size
    fold = folds.setdefault(run["fold"], {"train_images": 0, "eval_images": 0})
    fold["train_images"] += steps * config.batch_size
    fold["eval_images"] += checks * padded(len(run["val"])) + padded(len(run["test"]))
  fns, tx = finetune.functions(config), optim.make_optimizer(config)
  params = jax.eval_shape(fns.init_params, jax.random.PRNGKey(0))
  state = jax.eval_shape(loop.make_state_initializer(tx, config.seed), params)
  size = config.input.image_size
  images = jax.ShapeDtypeStruct((LOWERED_BATCH, size, size), jnp.uint8)
  targets = ({"mask": images} if KINDS[name] == "segmentation" else
             {"label": jax.ShapeDtypeStruct((LOWERED_BATCH,), jnp.int32)})
  return {"epochs": config.num_epochs, "folds": list(folds.values()),
          "train_gflop_per_image": per_image(loop.make_train_step(fns.loss_fn, tx), state,
                                             {"image": images, **targets},
                                             optim.schedule(config, 1.0, 2)),
          "eval_gflop_per_image": per_image(fns.predict, params, images)}


def main(argv):
  del argv
  args = flags.FLAGS
  args.datasets = os.path.abspath(args.datasets)
  rate = args.tflops * 1e3  # GFLOP/s
  result = {"variant": args.variant, "tflops": args.tflops,
            "finetune_share": args.finetune_share, "pretraining": pretraining(args)}
  p = result["pretraining"]
  p["seconds"] = p["images"] * p["gflop_per_image"] / rate
  busi = os.path.join(args.datasets, "busi")
  with tempfile.TemporaryDirectory() as tmp:
    csvs = {"busi_seg": os.path.join(busi, "labels.csv"),
            "busi_cls": le.malignancy_csv(busi, os.path.join(tmp, "malignancy.csv"))}
    for name in args.tasks:
      t = result[name] = finetuning(args, name, csvs[name])
      for fold in t["folds"]:
        fold["seconds"] = (fold["train_images"] * t["train_gflop_per_image"] + fold[
            "eval_images"] * t["eval_gflop_per_image"]) / (rate * args.finetune_share)
  per_fold = sum(result[name]["folds"][0]["seconds"] for name in args.tasks)
  folds = len(result[args.tasks[0]]["folds"])
  total = p["seconds"] + sum(f["seconds"] for name in args.tasks for f in result[name]["folds"])
  result.update(seconds_per_fold=per_fold, seconds=total)
  output.write(
      f"label_efficiency_plan ({args.variant}, {folds} folds, {args.tflops:g} TFLOP/s, "
      f"fine-tuning at {args.finetune_share:.0%} of it): pretraining {p['images']:,} images x "
      f"{p['gflop_per_image']:.1f} GFLOP = {p['seconds']:.0f} s; "
      + "; ".join(f"{name} {result[name]['folds'][0]['train_images']:,} training images per fold"
                  f" x {result[name]['train_gflop_per_image']:.1f} GFLOP" for name in args.tasks)
      + f"; {per_fold:.0f} s per fold; {total:.0f} s in all (no compilation, start-up or "
      "checkpoints)", result, args.json)


if __name__ == "__main__":
  app.run(main)
