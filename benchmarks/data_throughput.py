r"""Input pipeline speed: grain over ArrayRecord shards against PNG files through a DataLoader.

  python benchmarks/data_throughput.py --images=2048 --batch=256 --workers=0 \
      --ingest_files=1000,5000 --json=/tmp/data_throughput.json

Builds, in a scratch folder, the same `--images` 224x224 grey images (real chest X-rays from
../shared/datasets when present, else the bundled sample, cycled) two ways: a folder of PNG files
and ArrayRecord shards written by data_pipelines.ingest. Then, in one run under the same load:
- grain: the pretraining pipeline (shuffle, decode, batch) into global jax.Arrays;
- baseline: the release's way, a PyTorch DataLoader over a Dataset that opens each PNG with PIL
  (needs the [torch] extra), each batch then moved into a jax.Array;
- ingest: files/s of the Beam pipeline (its local default, one thread per core) on copies of a
  real CT DICOM from pydicom-data, and its peak resident memory for each `--ingest_files` count,
  to show memory stays flat as the number of files grows.
Prints one summary line; `--json` writes the figures.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image

import output  # benchmarks/output.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
CXR = os.path.join(os.path.dirname(ROOT), "shared", "datasets", "chest_xray_pneumonia", "images")


flags.DEFINE_integer("images", 2048, "images in the PNG folder and the shards")
flags.DEFINE_integer("batch", 256, "batch of both pipelines")
flags.DEFINE_integer("image_size", 224, "image side in pixels")
flags.DEFINE_integer("workers", 0, "grain and DataLoader worker processes")
flags.DEFINE_integer("epochs", 2, "passes timed per pipeline")
flags.DEFINE_list("ingest_files", ["1000"], "DICOM file counts for the ingest runs ('' skips)")
flags.DEFINE_string("scratch", "", "working folder (default: a temporary one)")
flags.DEFINE_string("json", "", "write the results here")


def source_images(n: int, size: int):
  """n grey size x size images: real chest X-rays if available, else the bundled sample."""
  from data_pipelines import readers, sample
  if os.path.isdir(CXR):
    paths = [os.path.join(d, f) for d, _, fs in sorted(os.walk(CXR)) for f in sorted(fs)]
  else:
    paths = [os.path.join(d, f) for d, _, fs in sorted(os.walk(sample.SAMPLE_DIR))
             for f in sorted(fs) if f.endswith((".png", ".jpeg"))]
  for i in range(n):
    with Image.open(paths[i % len(paths)]) as img:
      yield readers.letterbox(np.asarray(img.convert("L")), size)


def write_png_folder(folder: str, n: int, size: int):
  os.makedirs(folder, exist_ok=True)
  for i, image in enumerate(source_images(n, size)):
    Image.fromarray(image).save(os.path.join(folder, f"{i:06d}.png"))


def time_grain(shard_dir: str, batch: int, workers: int, epochs: int, n: int) -> float:
  import jax
  import ml_collections
  from data_pipelines import pretrain_input
  from vismae_jax import parallel
  mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}))
  sharding = parallel.batch_sharding(mesh)
  ds = pretrain_input.pretrain_dataset(shard_dir, modalities=(), seed=0, per_host_batch=batch,
                                       process_index=0, process_count=1)
  it = pretrain_input.make_iterator(ds, workers)
  jax.block_until_ready(parallel.global_batch(next(it), sharding))  # warm-up
  steps = epochs * n // batch
  t0 = time.perf_counter()
  for _ in range(steps):
    jax.block_until_ready(parallel.global_batch(next(it), sharding))
  return steps * batch / (time.perf_counter() - t0)


def time_png_dataloader(folder: str, batch: int, workers: int, epochs: int) -> float:
  import jax
  import torch
  from torch.utils.data import DataLoader, Dataset

  class PngFolder(Dataset):
    def __init__(self):
      self.paths = sorted(os.path.join(folder, f) for f in os.listdir(folder))

    def __len__(self):
      return len(self.paths)

    def __getitem__(self, i):
      with Image.open(self.paths[i]) as img:
        return torch.from_numpy(np.asarray(img.convert("L")).copy())

  loader = DataLoader(PngFolder(), batch_size=batch, shuffle=True, num_workers=workers,
                      drop_last=True)
  count, t0 = 0, None
  for epoch in range(epochs + 1):  # the first epoch warms up
    if epoch == 1:
      t0 = time.perf_counter()
    for images in loader:
      jax.block_until_ready(jax.device_put(images.numpy()))
      count += images.shape[0] if epoch else 0
  return count / (time.perf_counter() - t0)


def time_ingest(scratch: str, n_files: int, size: int) -> dict:
  """Beam ingest of n_files CT DICOM copies in a child process: files/s and peak RSS (MB)."""
  from pydicom.data import get_testdata_file
  raw, out = os.path.join(scratch, f"dicom_{n_files}"), os.path.join(scratch, f"ingest_{n_files}")
  shutil.rmtree(out, ignore_errors=True)
  if not os.path.isdir(raw):
    ct = get_testdata_file("693_UNCR.dcm")
    for i in range(n_files):
      sub = os.path.join(raw, "CT", f"{i // 1000:03d}")
      os.makedirs(sub, exist_ok=True)
      shutil.copy(ct, os.path.join(sub, f"{i:06d}.dcm"))
  # The ingest command line, run as `python -m data_pipelines.ingest` would run it, timed and
  # measured (peak RSS of the process and its Beam workers) from inside the child.
  command = [sys.executable, "-c", (
      "import resource, runpy, sys, time; t = time.perf_counter()\n"
      "try:\n  runpy.run_module('data_pipelines.ingest', run_name='__main__')\n"
      "except SystemExit as e:\n  assert not e.code, e.code\n"
      "print('SECONDS', time.perf_counter() - t); "
      "print('RSS_KB', max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
      "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))"),
      f"--input={raw}", f"--output={out}", "--salt=benchmark", f"--size={size}",
      "--files_per_shard=256"]
  proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                        env=dict(os.environ, PYTHONPATH=ROOT))
  if proc.returncode:
    raise RuntimeError(f"ingest failed:\n{proc.stderr[-3000:]}")
  values = dict(line.split() for line in proc.stdout.splitlines()
                if line.startswith(("SECONDS", "RSS_KB")))
  return {"files": n_files, "files_per_s": n_files / float(values["SECONDS"]),
          "peak_rss_mb": int(values["RSS_KB"]) / 1024}


def main(argv):
  del argv
  args = flags.FLAGS
  from data_pipelines import ingest
  scratch = args.scratch or tempfile.mkdtemp(prefix="vismae_data_throughput_")
  png_dir, shard_dir = os.path.join(scratch, "png", "xr"), os.path.join(scratch, "shards")
  if not os.path.isdir(png_dir):
    write_png_folder(png_dir, args.images, args.image_size)
  t0 = time.perf_counter()
  ingest.ingest(ingest.IngestConfig(input=os.path.dirname(png_dir), output=shard_dir,
                                    salt="benchmark", size=args.image_size,
                                    files_per_shard=1024))
  png_ingest_s = time.perf_counter() - t0

  grain_rate = time_grain(shard_dir, args.batch, args.workers, args.epochs, args.images)
  png_rate = time_png_dataloader(png_dir, args.batch, args.workers, args.epochs)
  ingests = [time_ingest(scratch, int(n), args.image_size)
             for n in filter(None, args.ingest_files)]
  import jax
  result = {"grain_img_per_s": grain_rate, "png_img_per_s": png_rate,
            "speedup_vs_png": grain_rate / png_rate,
            "ingest_files_per_s": ingests[-1]["files_per_s"] if ingests else None,
            "ingest_runs": ingests, "png_ingest_files_per_s_in_process": args.images / png_ingest_s,
            "batch": args.batch, "image_size": args.image_size, "workers": args.workers,
            "images": args.images, "cpus": os.cpu_count(), "backend": jax.default_backend()}
  summary = (f"data_throughput: grain {grain_rate:.0f} images/s vs PNG DataLoader "
             f"{png_rate:.0f} images/s ({grain_rate / png_rate:.1f}x), batch {args.batch} at "
             f"{args.image_size} px, {args.workers} workers")
  if ingests:
    summary += "; DICOM ingest " + ", ".join(
        f"{r['files']} files {r['files_per_s']:.0f}/s peak {r['peak_rss_mb']:.0f} MB"
        for r in ingests)
  output.write(summary, result, args.json)
  if not args.scratch:
    shutil.rmtree(scratch)


if __name__ == "__main__":
  app.run(main)
