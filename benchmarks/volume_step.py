r"""Training-step time of the 3D segmentation models against MONAI's, side by side in one run.

  python benchmarks/volume_step.py --models=unetr,swin_unetr --roi=64,64,64 --batch=1 \
      --json=/tmp/volume_step.json

For each model, our jitted step (forward, backward, AdamW update; softmax cross-entropy on
random labels) and MONAI's PyTorch step (same architecture, shapes, batch, dtype float32,
torch.optim.AdamW) on the same random volume, interleaved one step of each in turn after
warm-up, so the ratio is measured under the same machine load. Prints one summary line;
`--json` has each model's seconds per step (median), volumes/s and ours / MONAI's speed.

Models (MONAI's class and our config's model): `unetr`, UNETR-B (patch 16, width 768, 12
blocks, feature size 16); `swin_unetr`, SwinUNETR (patch 2, feature size `--feature_size`,
depths 2,2,2,2, heads 3,6,12,24, window 7). Needs the [monai] extra.

`--convolutions=16:16,96:48` also times 3x3x3 convolutions (input:output channels) over the
crop, forward and both gradients, as flax's nn.Conv (XLA's 3D convolution), as
conv_blocks.Conv (the same parameters, 2D convolutions over the depth slices) and as
PyTorch's Conv3d (oneDNN, what MONAI runs), in GFLOP/s: where the step's time goes.
"""
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

import output  # benchmarks/output.py

flags.DEFINE_list("models", ["unetr", "swin_unetr"], "Which models to time.")
flags.DEFINE_list("roi", ["64", "64", "64"], "The crop, voxels per axis.")
flags.DEFINE_integer("batch", 1, "Volumes per step.")
flags.DEFINE_integer("feature_size", 48, "SwinUNETR's feature size (MONAI's; 48 for BTCV).")
flags.DEFINE_integer("classes", 3, "Output classes.")
flags.DEFINE_integer("steps", 5, "Timed steps of each, after two warm-up steps.")
flags.DEFINE_list("convolutions", [], "Also time 3x3x3 convolutions of these input:output "
                  "channels three ways.")
flags.DEFINE_string("json", "", "Write the figures here.")


def models(name: str, roi, feature_size: int, classes: int):
  """(our Flax model, MONAI's torch module) of `name`."""
  from monai.networks import nets

  from vismae_jax.models import swin_unetr, unetr
  if name == "unetr":
    ours = unetr.UNETR(patch_size=16, embed_dim=768, depth=12, num_heads=12, feature_size=16,
                       num_classes=classes)
    theirs = nets.UNETR(in_channels=1, out_channels=classes, img_size=roi, feature_size=16,
                        qkv_bias=True)
  else:
    ours = swin_unetr.SwinUNETR(embed_dim=feature_size, num_classes=classes)
    theirs = nets.SwinUNETR(in_channels=1, out_channels=classes, feature_size=feature_size)
  return ours, theirs


def our_step(model, x, labels):
  """(jitted step, its state): AdamW on the mean cross-entropy, parameters donated."""
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  tx = optax.adamw(1e-4)

  def loss_fn(p):
    logits = model.apply({"params": p}, x, deterministic=False,
                         rngs={"dropout": jax.random.PRNGKey(1)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def step(state):
    p, opt = state
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt = tx.update(grads, opt, p)
    return (optax.apply_updates(p, updates), opt), loss

  return step, (params, tx.init(params))


def monai_step(net, x, labels):
  import torch
  net.train()
  opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
  xt = torch.from_numpy(np.moveaxis(np.asarray(x), -1, 1).copy())
  yt = torch.from_numpy(np.asarray(labels).astype(np.int64))
  loss_fn = torch.nn.CrossEntropyLoss()

  def step():
    opt.zero_grad()
    loss = loss_fn(net(xt), yt)
    loss.backward()
    opt.step()
    return float(loss)
  return step


def time_model(name: str, args) -> dict:
  roi = tuple(int(r) for r in args.roi)
  x = jax.random.normal(jax.random.PRNGKey(2), (args.batch, *roi, 1))
  labels = jax.random.randint(jax.random.PRNGKey(3), (args.batch, *roi), 0, args.classes)
  ours, theirs = models(name, roi, args.feature_size, args.classes)
  step, state = our_step(ours, x, labels)
  theirs_step = monai_step(theirs, x, labels)
  times = {"ours": [], "monai": []}
  for i in range(args.steps + 2):  # two warm-up steps each (compilation, allocator)
    start = time.perf_counter()
    state, loss = step(state)
    jax.block_until_ready(loss)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    theirs_step()
    monai_s = time.perf_counter() - start
    if i >= 2:
      times["ours"].append(ours_s)
      times["monai"].append(monai_s)
  result = {k: {"seconds_per_step": statistics.median(v), "volumes_per_s":
                args.batch / statistics.median(v), "all_seconds": v} for k, v in times.items()}
  result["speed_vs_monai"] = (result["ours"]["volumes_per_s"]
                              / result["monai"]["volumes_per_s"])
  return result


def median_seconds(run, steps: int) -> float:
  """The median of `steps` timed calls of run() after one untimed one."""
  run()  # warm-up: compilation, allocator
  seconds = []
  for _ in range(steps):
    start = time.perf_counter()
    run()
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds)


def time_convolution(args, in_channels: int, out_channels: int) -> dict:
  """GFLOP/s of a 3x3x3 convolution's forward pass and both gradients: flax's, ours, PyTorch's."""
  import flax.linen as nn
  import torch

  from vismae_jax.models import conv_blocks
  roi = tuple(int(r) for r in args.roi)
  x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, *roi, in_channels))
  flop = 3 * 2 * 27 * in_channels * out_channels * x.size // in_channels
  result = {}
  for name, layer in (("flax_nn_conv", nn.Conv(out_channels, (3, 3, 3), use_bias=False)),
                      ("conv_blocks_conv", conv_blocks.Conv(out_channels))):
    params = layer.init(jax.random.PRNGKey(1), x)
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(layer.apply(p, x) ** 2), argnums=(0, 1)))
    result[name] = median_seconds(lambda: jax.block_until_ready(grad(params, x)), args.steps)
  conv = torch.nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False)
  xt = torch.from_numpy(np.moveaxis(np.asarray(x), -1, 1).copy()).requires_grad_()

  def torch_pass():
    conv.zero_grad()
    xt.grad = None
    (conv(xt) ** 2).sum().backward()
  result["torch_conv3d"] = median_seconds(torch_pass, args.steps)
  return {name: {"seconds": s, "gflop_per_s": flop / s / 1e9} for name, s in result.items()}


def main(argv):
  del argv
  import torch
  args = flags.FLAGS
  result = {"roi": [int(r) for r in args.roi], "batch": args.batch,
            "feature_size": args.feature_size, "torch_threads": torch.get_num_threads(),
            "backend": jax.default_backend(), "models": {}}
  for name in args.models:
    result["models"][name] = time_model(name, args)
  result["convolutions"] = {
      c: time_convolution(args, *(int(n) for n in c.split(":"))) for c in args.convolutions}
  parts = [
      f"{name}: ours {r['ours']['seconds_per_step']:.2f} s/step, MONAI "
      f"{r['monai']['seconds_per_step']:.2f} s/step ({r['speed_vs_monai']:.2f}x MONAI's speed)"
      for name, r in result["models"].items()]
  for channels, ways in result["convolutions"].items():
    parts.append(f"3x3x3 convolution {channels}: " + ", ".join(
        f"{k} {v['gflop_per_s']:.0f} GFLOP/s" for k, v in ways.items()))
  line = "; ".join(parts)
  output.write(f"3D training step, {'x'.join(args.roi)} voxels, batch {args.batch}: {line}",
               result, args.json)


if __name__ == "__main__":
  app.run(main)
