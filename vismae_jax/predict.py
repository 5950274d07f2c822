r"""Applying a fine-tuned model to new images.

  python -m vismae_jax.main --config=configs/finetune_seg.py --workdir=RUN --config.task=predict \
      --config.predict.input=FOLDER_OR_CSV --config.predict.output=OUT

RUN is one fine-tuning run (a protocol's `runs/<name>`: its best checkpoint), unless
`finetune.pretrained` names a PyTorch file (ours exported, or another fine-tuned Swin-UNet or
classifier in the published layout), which is then used instead. The input is a folder (every
PNG, JPEG and DICOM file under it) or a CSV with an `image` column. Every image is read as
ingest reads it (DICOM window/level, MONOCHROME1, each frame of a multi-frame file), letterboxed
as fine-tuning saw it, predicted in batches split over every device (with predict.tta also
flipped, the probabilities averaged), and mapped back to its own size:

- segmentation: one label map per input at the input's size and orientation (the letterbox
  undone, nearest neighbours), a PNG for a PNG or JPEG, a NIfTI (`.nii.gz`, the DICOM's pixel
  grid and geometry in its affine, frames along the third axis) for a DICOM; with
  predict.probabilities also `<name>_probabilities.npy` (float16, (height, width, classes),
  frames first for a multi-frame DICOM);
  `overlays.png` shows the first inputs with their outlines.
- classification: `predictions.csv`, one row per input (and frame) with every class's (or
  label's) probability and the prediction.

NIfTI rather than DICOM SEG for DICOM inputs: a SEG object must copy the source's patient and
study modules, so every output would carry the patient's name and ID; a NIfTI carries the
geometry and nothing else, and viewers (3D Slicer, ITK-SNAP) overlay it on the DICOM. Output
names repeat the input names, and no header field is copied. Unreadable inputs are skipped and
listed with the reason in `errors.csv`.
"""
import csv
import os
import time

import jax
import numpy as np
import tqdm
from absl import logging

from data_pipelines import ingest, readers
from vismae_jax import config_lib, figures, inference, parallel, tasks
from vismae_jax.convert import weights
from vismae_jax.train import finetune

OVERLAY_INPUTS = 8
LOG_EVERY_S = 30.0  # progress lines for logs; a terminal also gets a bar
READ = readers.ReadOptions(modality="any")


def fine_tuned_params(config, workdir: str):
  """The parameters to apply: `finetune.pretrained` when it names a PyTorch file, else the
  best checkpoint of the run in `workdir`; checked tensor by tensor against the config's model
  (a checkpoint of another model fails, listing what differs)."""
  like = jax.eval_shape(finetune.functions(config).init_params, jax.random.PRNGKey(0))
  if weights.is_file(config.finetune.pretrained):
    return weights.load_exact(config.finetune.pretrained, like)
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise FileNotFoundError(
        f"{workdir}: not a fine-tuning run (no checkpoints/): name one run of a protocol, "
        f"e.g. {os.path.join(workdir, 'runs', '<run>')}, or a PyTorch file with "
        "--config.finetune.pretrained")
  return weights.load_exact(workdir, like, tasks.of(config).best_metric)


def list_inputs(path: str) -> list[tuple[str, str]]:
  """(name relative to the input, absolute path) of every image: the files under a folder in
  sorted order, or the `image` column of a CSV (paths relative to the CSV's folder)."""
  if os.path.isdir(path):
    return [(rel, os.path.join(path, rel)) for rel in ingest.walk_files(path)]
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows or "image" not in rows[0]:
    raise config_lib.ConfigError(f"{path}: expected a CSV with an image column")
  root = os.path.dirname(os.path.abspath(path))
  return [(r["image"], os.path.join(root, r["image"])) for r in rows]


def read_input(rel: str, path: str) -> list[np.ndarray]:
  """The frames of one input at its own size (uint8), as ingest reads them."""
  if rel.lower().endswith(readers.NIFTI_EXTENSIONS):
    raise readers.UnreadableFile("NIfTI volumes are not predicted here: give DICOM, PNG or "
                                 "JPEG images")
  return [frame.image for frame in readers.read_frames(path, rel, READ)]


def output_path(output: str, rel: str, suffix: str) -> str:
  """Where an input's output goes: its relative name with `suffix` for its extension."""
  stem = rel[:-len(".nii.gz")] if rel.lower().endswith(".nii.gz") else os.path.splitext(rel)[0]
  path = os.path.join(output, stem + suffix)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  return path


class Writer:
  """Writes each input's outputs as its frames' predictions arrive (process 0 only); the kind's
  writer (WRITERS) decides what."""

  def __init__(self, config, output: str):
    self.config, self.output = config, output

  def close(self, errors: list[dict]) -> dict:
    """Writes errors.csv and what the kind writes at the end; returns {what: path}."""
    paths = {"outputs": self.output, "errors": os.path.join(self.output, "errors.csv")}
    with open(paths["errors"], "w", newline="") as f:
      w = csv.DictWriter(f, ("input", "reason"))
      w.writeheader()
      w.writerows(errors)
    return {**paths, **self.finish()}


class MaskWriter(Writer):
  """Segmentation: a label map per input at its own size, and overlays of the first inputs."""

  def __init__(self, config, output: str):
    super().__init__(config, output)
    self.overlays = []

  def add(self, rel: str, path: str, frames: list[np.ndarray], probabilities: np.ndarray):
    """probabilities: the frames' model outputs, (F, size, size, C)."""
    maps = tasks.label_maps(probabilities)
    masks = [readers.unletterbox(m, f.shape) for m, f in zip(maps, frames)]
    if readers.is_dicom(path):
      import nibabel  # the [ingest] extra, as for reading DICOM
      volume = np.stack(masks, -1).transpose(1, 0, 2)  # (columns, rows, frames)
      nibabel.save(nibabel.Nifti1Image(volume, readers.nifti_affine(path)),
                   output_path(self.output, rel, ".nii.gz"))
    else:
      from PIL import Image
      Image.fromarray(masks[0]).save(output_path(self.output, rel, ".png"))
    if self.config.predict.probabilities:
      maps = [readers.unletterbox(p.astype(np.float32), f.shape, readers.Image.BILINEAR)
              for p, f in zip(probabilities, frames)]
      maps = np.stack(maps).astype(np.float16)
      np.save(output_path(self.output, rel, "_probabilities.npy"),
              maps if len(maps) > 1 else maps[0])
    if len(self.overlays) < OVERLAY_INPUTS:
      self.overlays.append((rel, frames[0], masks[0]))

  def finish(self) -> dict:
    if not self.overlays:
      return {}
    rels, images, masks = zip(*self.overlays)
    return {"overlays": figures.segmentation_overlays(
        images, None, {"prediction": [(m, None) for m in masks]}, list(rels),
        os.path.join(self.output, "overlays.png"), title="predictions (red)")}


class TableWriter(Writer):
  """Classification: predictions.csv, a row per input and frame."""

  def __init__(self, config, output: str):
    super().__init__(config, output)
    self.rows = []

  def add(self, rel: str, path: str, frames: list[np.ndarray], probabilities: np.ndarray):
    """probabilities: the frames' model outputs, (F, C)."""
    del path, frames
    for k, p in enumerate(probabilities):
      self.rows.append([rel, k, *(f"{v:.6f}" for v in p), self._prediction(p)])

  def _prediction(self, probabilities: np.ndarray) -> str:
    if self.config.finetune.multilabel:
      return "|".join(str(int(v >= 0.5)) for v in probabilities)
    return str(int(np.argmax(probabilities)))

  def finish(self) -> dict:
    path = os.path.join(self.output, "predictions.csv")
    with open(path, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["input", "frame",
                  *(f"probability_{c}" for c in range(self.config.finetune.num_classes)),
                  "prediction"])
      w.writerows(self.rows)
    return {"predictions": path}


WRITERS = {tasks.Segmentation.name: MaskWriter, tasks.Classification.name: TableWriter}


def run(config, workdir: str, mesh) -> dict:
  """task=predict: every input of config.predict.input through the model into
  config.predict.output; returns {what: path}."""
  params = jax.device_put(fine_tuned_params(config, workdir), parallel.replicated(mesh))
  inputs = list_inputs(config.predict.input)
  if not inputs:
    raise FileNotFoundError(f"{config.predict.input}: no images to predict")
  primary = jax.process_index() == 0
  output = config.predict.output
  os.makedirs(output, exist_ok=True)
  writer, errors = WRITERS[config.finetune.kind](config, output), []
  predict = finetune.functions(config).predict
  batch, size = config.eval_batch_size, config.input.image_size
  bar = tqdm.tqdm(total=len(inputs), unit="image", desc="predict",
                  disable=None if primary else True)
  start = last_log = time.perf_counter()
  pending = []

  def flush():
    """Predicts the pending inputs' frames in batches over the mesh and writes them."""
    frames = [f for _, _, fs in pending for f in fs]
    if frames:
      boxed = np.stack([readers.letterbox(f, size) for f in frames])
      probabilities = inference.predict_all(predict, params, boxed, batch, mesh)
      offset = 0
      for rel, path, fs in pending:
        if primary:
          writer.add(rel, path, fs, probabilities[offset:offset + len(fs)])
        offset += len(fs)
    bar.update(len(pending))
    pending.clear()

  for done, (rel, path) in enumerate(inputs, start=1):
    try:
      pending.append((rel, path, read_input(rel, path)))
    except (readers.UnreadableFile, OSError) as e:
      errors.append({"input": rel, "reason": str(e) or type(e).__name__})
      logging.warning("%s skipped: %s", rel, errors[-1]["reason"])
    if sum(len(fs) for _, _, fs in pending) >= batch or done == len(inputs):
      flush()
      now = time.perf_counter()
      if now - last_log > LOG_EVERY_S or done == len(inputs):
        rate, last_log = done / (now - start), now
        logging.info("predicted %d/%d inputs, %.1f inputs/s, %.0f s to go", done, len(inputs),
                     rate, (len(inputs) - done) / rate)
  bar.close()
  paths = writer.close(errors) if primary else {}
  if primary:
    print(f"Predicted {len(inputs) - len(errors)} of {len(inputs)} inputs: " +
          " | ".join(f"{k}: {v}" for k, v in paths.items()), flush=True)
  return paths
