r"""Images/s of prediction with a fine-tuned model, end to end and the model alone, against the
release's PyTorch model on the same weights.

  python benchmarks/predict_throughput.py --model=segmentation --images=64 --batch=8 \
      --image_size=224 --baseline=torch --json=/tmp/predict_throughput.json

The published Swin-UNet (or the classifier), its random initialisation saved as a PyTorch
file, applied as `--config.task=predict` applies a model:
- end to end: predict.run over a folder of `--images` PNGs (the bundled ultrasound images,
  cycled): reading, letterboxing, batches over every device, the way back to each image's
  size, writing masks (or predictions.csv);
- model: the jitted prediction of one batch already in memory, median of `--steps`;
- baseline (`--baseline=torch`): our PyTorch module of the same model in eval mode with the
  same weights and batch, `torch.no_grad()`, every CPU core (needs the [torch] extra; one
  pass per image, so compare it without `--tta`).
Prints one summary line; `--json` writes the figures.
"""
import contextlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image

import output  # benchmarks/output.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

flags.DEFINE_enum("model", "segmentation", ["segmentation", "classification"],
                  "the Swin-UNet or the Swin classifier")
flags.DEFINE_integer("images", 64, "images predicted end to end")
flags.DEFINE_integer("batch", 8, "batch of the model (config.eval_batch_size)")
flags.DEFINE_integer("image_size", 224, "model input side")
flags.DEFINE_bool("tta", False, "also average over flips (4 model passes per image)")
flags.DEFINE_integer("steps", 5, "timed model batches")
flags.DEFINE_enum("baseline", "", ["", "torch"], "also time the PyTorch model on the same batch")
flags.DEFINE_string("json", "", "write the results here")


def weights(config, path: str) -> dict:
  """The model's random initialisation, saved as a PyTorch file as a fine-tuned model would be."""
  import jax
  from safetensors import numpy as safetensors_numpy

  from vismae_jax.convert import torch_names
  from vismae_jax.train import finetune
  params = jax.device_get(jax.jit(finetune.functions(config).init_params)(
      jax.random.PRNGKey(0)))
  safetensors_numpy.save_file(torch_names.to_torch(params), path)
  return params


def input_folder(folder: str, n: int) -> str:
  from data_pipelines import sample
  names = sorted(f for f in os.listdir(os.path.join(sample.SAMPLE_DIR, "us"))
                 if f.endswith(".png"))
  os.makedirs(folder, exist_ok=True)
  for i in range(n):
    shutil.copy(os.path.join(sample.SAMPLE_DIR, "us", names[i % len(names)]),
                os.path.join(folder, f"{i:05d}.png"))
  return folder


def time_torch(config, params, batch: np.ndarray, steps: int) -> list[float]:
  import torch

  from vismae_jax.convert import torch_models, torch_names
  m = config.model
  cls = {"segmentation": torch_models.SwinUNet,
         "classification": torch_models.SwinClassifier}[config.finetune.kind]
  model = cls(num_classes=config.finetune.num_classes, in_chans=m.in_chans,
              patch_size=m.patch_size, embed_dim=m.embed_dim, depths=tuple(m.depths),
              num_heads=tuple(m.num_heads), window=m.window, drop_path=0.0).eval()
  torch_models.load_numpy_state(model, torch_names.to_torch(params))
  torch.set_num_threads(os.cpu_count())
  x = torch.from_numpy(np.repeat(batch[..., None].astype(np.float32) / 255.0, m.in_chans, -1))
  times = []
  with torch.no_grad():
    for i in range(steps + 1):
      t0 = time.perf_counter()
      model(x)
      if i:  # the first call warms up
        times.append(time.perf_counter() - t0)
  return times


def main(argv):
  del argv
  args = flags.FLAGS
  import jax

  from vismae_jax import config_lib, inference, parallel, predict
  from vismae_jax.train import finetune
  config = config_lib.finetune(args.model)
  config.task, config.eval_batch_size, config.input.image_size = ("predict", args.batch,
                                                                  args.image_size)
  config.predict.tta = args.tta
  scratch = tempfile.mkdtemp(prefix="vismae_predict_throughput_")
  try:
    config.finetune.pretrained = os.path.join(scratch, "model.safetensors")
    params = weights(config, config.finetune.pretrained)
    config.predict.update(input=input_folder(os.path.join(scratch, "in"), args.images),
                          output=os.path.join(scratch, "out"))
    mesh = parallel.make_mesh(config.mesh)

    # The model alone on one batch in memory (compiled by the first call).
    batch = np.stack([np.asarray(Image.open(os.path.join(config.predict.input, f)).convert("L")
                                 .resize((args.image_size, args.image_size)))
                      for f in sorted(os.listdir(config.predict.input))[:args.batch]])
    device_params = jax.device_put(params, parallel.replicated(mesh))
    run_batch = lambda: inference.predict_all(finetune.functions(config).predict,
                                             device_params, batch, args.batch, mesh)
    run_batch()
    times = []
    for _ in range(args.steps):
      t0 = time.perf_counter()
      run_batch()
      times.append(time.perf_counter() - t0)
    model_s = statistics.median(times)

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # its closing line: ours is the summary
      predict.run(config, scratch, mesh)  # compiled already: the same function and shapes
    end_to_end_s = time.perf_counter() - t0
  finally:
    shutil.rmtree(scratch)
  result = {"model": args.model, "image_size": args.image_size, "batch": args.batch,
            "tta": args.tta, "images": args.images, "devices": jax.device_count(),
            "backend": jax.default_backend(), "end_to_end_img_per_s": args.images / end_to_end_s,
            "model_img_per_s": args.batch / model_s, "model_s_all": times}
  summary = (f"predict_throughput: {args.model} at {args.image_size} px, batch {args.batch}"
             f"{', TTA' if args.tta else ''} on {jax.device_count()} x "
             f"{jax.devices()[0].device_kind}: {result['end_to_end_img_per_s']:.1f} images/s "
             f"end to end, model {result['model_img_per_s']:.1f} images/s")
  if args.baseline == "torch":
    torch_times = time_torch(config, params, batch, args.steps)
    result["baseline"] = {"framework": "torch", "img_per_s": args.batch /
                          statistics.median(torch_times), "s_all": torch_times}
    summary += f"; PyTorch model {result['baseline']['img_per_s']:.1f} images/s"
  output.write(summary, result, args.json)


if __name__ == "__main__":
  app.run(main)
