r"""Step time and images/s of the SwinMAE pretraining step (forward, backward, AdamW).

  python benchmarks/train_throughput.py --preset=release --batch=8 --image_size=224 \
      --dtype=float32 --json=/tmp/train_throughput.json

Times the same jitted, sharded, donated step that training runs, on synthetic uint8 batches
already on the device (input pipeline excluded: see data_throughput.py). `--devices=N` on a CPU
forces N host devices. On a GPU it also reports model FLOPs utilisation (MFU) from XLA's cost
analysis of the step lowered for the CPU (model FLOPs, the same on every backend: the GPU
compiled step's analysis misses the matmuls XLA hands to cuBLAS) against the device's peak.
`--profile=DIR` traces three more steps of each mode into DIR/mode<i> (TensorBoard /
Perfetto) and, on a GPU, adds their device time per kernel category (trace_categories.py).
`--baseline=torch` also times the release's PyTorch step (same architecture, batch and size;
needs the [torch] extra) in the same run, so the ratio is measured under the same machine load.
`--compare=random,uniform` times the release's dense masking and the sparse one (models/mae.py)
side by side, one step of each in turn, and adds each mode's FLOPs per image, its encoder's
alone, and both ratios to the first mode's; `uniform+1-1-1` also gives the decoder one block per
stage, and `random@model.attention=cudnn` sets config fields. Each mode also gets the optimised
step's transpose and copy count and XLA's bytes accessed. Prints one summary line; `--json`
holds every mode under `modes`.
"""
import ast
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import time

import ml_collections
from absl import app, flags

import flops  # benchmarks/flops.py
import output  # benchmarks/output.py
import trace_categories  # benchmarks/trace_categories.py


# Dense peak FLOP/s per device by compute dtype, for MFU (vendor datasheets, no sparsity).
PEAK_FLOPS = {
    "H100": {"bfloat16": 989e12, "float32": 67e12},
    "H200": {"bfloat16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float32": 19.5e12},
}
PROFILED_STEPS = 3


flags.DEFINE_enum("preset", "release", ["release", "sample", "tiny"],
                  "release: the published SwinMAE; sample/tiny: the config variants")
flags.DEFINE_integer("batch", 8, "global batch")
flags.DEFINE_integer("image_size", 224, "input side in pixels")
flags.DEFINE_integer("in_chans", 0, "0: the preset's")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype")
flags.DEFINE_bool("remat", False, "recompute blocks in the backward pass")
flags.DEFINE_integer("fsdp", 1, "devices on the FSDP mesh axis")
flags.DEFINE_integer("devices", 0, "CPU only: force this many host devices")
flags.DEFINE_integer("steps", 5, "timed steps")
flags.DEFINE_integer("warmup", 2, "untimed steps after compilation")
flags.DEFINE_enum("baseline", "", ["", "torch"],
                  "also time the PyTorch step side by side (CPU threads = all cores)")
flags.DEFINE_string("json", "", "write the results here")
flags.DEFINE_string("profile", "", "trace a few more steps of each mode into DIR/mode<i> and "
                    "add each mode's device time per kernel category (trace_categories.py)")
flags.DEFINE_list("compare", ["random"], "maskings (config.mae.masking) timed side by side, "
                  "round robin; each may add lighter decoder depths after '+', e.g. "
                  "random,uniform,uniform+1-1-1, and config overrides after '@', e.g. "
                  "random@model.attention=xla; ratios are against the first")
flags.DEFINE_bool("flops_only", False, "internal: print each mode's CPU FLOPs only "
                  "(see model_flops)")


def time_torch_step(config, batch: int, steps: int, warmup: int) -> list[float]:
  """Seconds per PyTorch training step (forward, backward, AdamW) of the same SwinMAE."""
  import torch

  from vismae_jax.convert import torch_models

  torch.manual_seed(0)
  m, size = config.model, config.input.image_size
  model = torch_models.SwinMAE(size, m.in_chans, m.patch_size, m.embed_dim, m.depths,
                               m.decoder_depths, m.num_heads, m.window, m.drop_path).train()
  opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                          betas=(0.9, 0.95), weight_decay=0.05)
  images = torch.rand(batch, size, size, m.in_chans)
  grid, units = size // m.patch_size, size // config.mae.mask_unit
  per_unit = grid // units
  n_keep = int(units * units * (1 - config.mae.mask_ratio))
  times = []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    rank = torch.rand(batch, units * units).argsort(1).argsort(1)
    unit_mask = (rank >= n_keep).view(batch, units, units)
    token_mask = unit_mask.repeat_interleave(per_unit, 1).repeat_interleave(per_unit, 2)
    pred = model(images, token_mask)
    target = images.view(batch, grid, m.patch_size, grid, m.patch_size, m.in_chans).permute(
        0, 1, 3, 2, 4, 5).reshape(batch, grid, grid, -1)
    per_token = ((pred - target) ** 2).mean(-1)
    loss = (per_token * token_mask).sum() / token_mask.sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  return times


def mode_config(args, mode: str):
  """The preset's config for one `--compare` entry: a masking, optionally '+' decoder depths,
  then any '@key=value' config overrides."""
  from vismae_jax.train import methods
  mode, *overrides = mode.split("@")
  masking, _, decoder = mode.partition("+")
  config = methods.pretrain_config("mae", variant="" if args.preset == "release" else args.preset)
  config.batch_size, config.input.image_size, config.dtype = args.batch, args.image_size, args.dtype
  config.model.remat = args.remat
  config.mesh.data, config.mesh.fsdp = -1, args.fsdp
  config.mae.masking = masking
  if decoder:
    config.model.decoder_depths = tuple(int(d) for d in decoder.split("-"))
  if args.in_chans:
    config.model.in_chans = args.in_chans
  config.data.source = "sample"
  for assignment in overrides:
    key, _, value = assignment.partition("=")
    *parents, leaf = key.split(".")
    node = functools.reduce(getattr, parents, config)
    current = getattr(node, leaf)
    setattr(node, leaf, value if isinstance(current, str) else ast.literal_eval(value))
  if args.flops_only:  # model FLOPs, counted in a CPU process, where cuDNN is not
    config.model.attention = "einsum"
  return config


def model_flops(config, tx, schedule, state, batch) -> dict:
  """FLOPs of one training step and of the encoder's forward pass alone, as XLA's CPU cost
  analysis counts them with the einsum attention, whatever the backend and attention
  (--flops_only runs this in a CPU-only child)."""
  import jax

  from vismae_jax.models import mae
  from vismae_jax.train import loop, masked_image, pretrain

  config = ml_collections.ConfigDict(config)
  config.model.attention = "einsum"
  model = pretrain.build_model(config)

  def encoder(params, images_u8):
    x, token_mask, kept = masked_image.model_inputs(config, images_u8, jax.random.PRNGKey(0), False)
    return masked_image.build_model(config, mae.SwinMAEEncoder).apply(
        {"params": params}, x, token_mask, True, kept)

  step = loop.make_train_step(masked_image.make_loss_fn(model, config), tx)
  return {"step_flops": flops.xla_flops(step, state, batch, schedule),
          "encoder_flops": flops.xla_flops(encoder, state["params"], batch)}


def hlo_stats(compiled) -> dict:
  """What the layout levers change, readable on any backend: the optimised step's transpose
  and copy instructions (fused ones included) and the bytes XLA counts it accessing."""
  text = compiled.as_text()
  return {"hlo_transposes": len(re.findall(r"[ =]transpose\(", text)),
          "hlo_copies": len(re.findall(r" copy\(", text)),
          "bytes_accessed": flops.cost(compiled, "bytes accessed")}


def main(argv):
  del argv
  args = flags.FLAGS
  if args.devices:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}")
  import jax
  import numpy as np

  from vismae_jax import config_checks, config_lib, parallel
  from vismae_jax.train import loop, masked_image, optim, pretrain

  modes = {}
  for mode in args.compare:
    config = mode_config(args, mode)
    config_checks.validate(config, jax.device_count(), jax.process_count())
    modes[mode] = {"config": config}
  first_config = modes[args.compare[0]]["config"]  # mesh and schedule: the same for every mode
  mesh = parallel.make_mesh(first_config.mesh)
  total = args.warmup + args.steps + 1
  schedule = jax.device_put(optim.schedule(first_config, steps_per_epoch=1.0, total_steps=total),
                            parallel.replicated(mesh))
  rng = np.random.default_rng(0)
  local = rng.integers(0, 256, (args.batch // jax.process_count(), args.image_size,
                                args.image_size), np.uint8)
  batch = parallel.global_batch(local, parallel.batch_sharding(mesh))

  flops_in_child = jax.default_backend() != "cpu" and not args.flops_only
  for mode, m in modes.items():
    config = m["config"]
    tx = optim.make_optimizer(config)
    model = pretrain.build_model(config)
    task = loop.Task(**masked_image.task_fields(model, config), dataset=None, num_examples=0)
    init_state = loop.make_state_initializer(tx, config.seed)
    abstract_state = jax.eval_shape(init_state, loop.abstract_params(task))
    if not flops_in_child:
      m.update(model_flops(config, tx, schedule, abstract_state, batch))
    if args.flops_only:
      continue
    shardings = parallel.state_shardings(abstract_state, mesh, config.mesh.fsdp_min_mb)
    m["state"] = loop.initial_state(task, init_state, shardings, config.seed)
    step = loop.compile_train_step(task, tx, shardings, mesh)
    t0 = time.perf_counter()
    with parallel.activation_sharding(mesh):  # as loop.train traces it
      m["compiled"] = step.lower(m["state"], batch, schedule).compile()
    m["compile_s"] = time.perf_counter() - t0
    m.update(hlo_stats(m["compiled"]))
  if args.flops_only:
    print(json.dumps({mode: {k: m[k] for k in ("step_flops", "encoder_flops")}
                      for mode, m in modes.items()}))
    return
  if flops_in_child:
    child = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--flops_only"],
        env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True)
    counted = json.loads(child.stdout.splitlines()[-1]) if child.returncode == 0 else {}
    for mode, m in modes.items():
      m.update(counted.get(mode, {"step_flops": 0.0, "encoder_flops": 0.0}))

  # Round-robin over the modes, one step each, so that machine load hits them alike.
  for i in range(args.warmup + args.steps):
    for m in modes.values():
      t0 = time.perf_counter()
      m["state"], metrics = m["compiled"](m["state"], batch, schedule)
      jax.block_until_ready(metrics["loss"])
      if i >= args.warmup:
        m.setdefault("times", []).append(time.perf_counter() - t0)
      m["loss"] = float(metrics["loss"])
  # Traced apart from the timed steps, so that the profiler's overhead stays out of the times.
  for i, m in enumerate(modes.values() if args.profile else ()):
    trace_dir = os.path.join(args.profile, f"mode{i}")
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(PROFILED_STEPS):
      m["state"], metrics = m["compiled"](m["state"], batch, schedule)
    jax.block_until_ready(metrics["loss"])
    jax.profiler.stop_trace()
    m["profile"] = trace_categories.breakdown(trace_dir)

  device = jax.devices()[0]
  kind = next((k for k in PEAK_FLOPS if k in device.device_kind), None)
  results = {}
  for mode, m in modes.items():
    step_s = statistics.median(m["times"])
    mfu = None
    if kind and m["step_flops"]:  # XLA's flops are for the whole (global) step
      mfu = m["step_flops"] / step_s / (PEAK_FLOPS[kind][args.dtype] * jax.device_count())
    results[mode] = {
        "masking": m["config"].mae.masking,
        "decoder_depths": list(m["config"].model.decoder_depths),
        "attention": m["config"].model.attention,
        "remat_policy": config_lib.remat_policy(m["config"].model),
        "img_per_s": args.batch / step_s, "step_s_median": step_s, "step_s_all": m["times"],
        "compile_s": m["compile_s"], "step_flops": m["step_flops"],
        "gflop_per_img": m["step_flops"] / args.batch / 1e9,
        "encoder_gflop_per_img": m["encoder_flops"] / args.batch / 1e9,
        "mfu": mfu, "loss": m["loss"],
        **{k: m[k] for k in ("hlo_transposes", "hlo_copies", "bytes_accessed")},
        "profile": m.get("profile")}
  first, *others = args.compare
  base = results[first]
  for mode in others:
    r = results[mode]
    r["vs_" + first] = {
        "speedup": base["step_s_median"] / r["step_s_median"],
        "flops_ratio": r["step_flops"] / base["step_flops"] if base["step_flops"] else None,
        "encoder_flops_ratio": (r["encoder_gflop_per_img"] / base["encoder_gflop_per_img"]
                                if base["encoder_gflop_per_img"] else None)}
  result = {
      **base, "preset": args.preset, "batch": args.batch, "image_size": args.image_size,
      "in_chans": first_config.model.in_chans, "dtype": args.dtype,
      "remat": args.remat, "fsdp": args.fsdp, "devices": jax.device_count(),
      "backend": jax.default_backend(), "device_kind": device.device_kind, "modes": results}
  summary = (f"train_throughput: {args.preset} batch {args.batch} at {args.image_size} px "
             f"{args.dtype} on {jax.device_count()} x {device.device_kind}: " + "; ".join(
                 f"{mode} {r['img_per_s']:.2f} images/s, median step {r['step_s_median']:.3f} s, "
                 f"{r['gflop_per_img']:.3g} GFLOP/image"
                 + (f", MFU {r['mfu']:.1%}" if r["mfu"] is not None else "")
                 + (f" ({r['vs_' + first]['speedup']:.2f}x {first}'s speed, "
                    f"{r['vs_' + first]['flops_ratio']:.2f}x its FLOPs, encoder "
                    f"{r['vs_' + first]['encoder_flops_ratio']:.2f}x)"
                    if mode != first and base["step_flops"] else "")
                 for mode, r in results.items()))
  if args.baseline == "torch":
    import torch
    torch.set_num_threads(os.cpu_count())
    torch_times = time_torch_step(first_config, args.batch, args.steps, args.warmup)
    torch_s = statistics.median(torch_times)
    result["baseline"] = {"framework": f"torch {torch.__version__}", "step_s_median": torch_s,
                          "step_s_all": torch_times, "img_per_s": args.batch / torch_s,
                          "threads": torch.get_num_threads()}
    result["speedup_vs_baseline"] = torch_s / base["step_s_median"]
    summary += f"; PyTorch {torch_s:.3f} s, {first} speed-up {torch_s / base['step_s_median']:.2f}x"
  output.write(summary, result, args.json)


if __name__ == "__main__":
  app.run(main)
