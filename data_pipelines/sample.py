"""The bundled sample (data_pipelines/sample, see its ATTRIBUTION.md) as pretraining shards.

A minimal writer for the quick start and the tests; `data_pipelines.ingest` is the general one.
"""
import hashlib
import os

import numpy as np
from PIL import Image

from data_pipelines import records, shards

SAMPLE_DIR = os.path.join(os.path.dirname(__file__), "sample")
SAMPLE_MODALITIES = {"us": "US", "xr": "XR"}


def load_square(path: str, size: int) -> tuple[np.ndarray, tuple[int, int]]:
  """Grey image, zero-padded to a centred square (aspect kept), resized to size x size."""
  with Image.open(path) as img:
    img = img.convert("L")
    w, h = img.size
    side = max(w, h)
    square = Image.new("L", (side, side), 0)
    square.paste(img, ((side - w) // 2, (side - h) // 2))
    return np.asarray(square.resize((size, size), Image.LANCZOS), np.uint8), (h, w)


def patient_of(file_name: str) -> str:
  """Chest X-ray names start with the patient (IM-0115-0001.jpeg); BUSI has no patient ids."""
  stem = os.path.splitext(file_name)[0]
  return stem.rsplit("-", 1)[0] if stem.startswith("IM-") else stem


def sample_records(size: int, salt: str):
  for folder, modality in sorted(SAMPLE_MODALITIES.items()):
    for name in sorted(os.listdir(os.path.join(SAMPLE_DIR, folder))):
      image, orig_size = load_square(os.path.join(SAMPLE_DIR, folder, name), size)
      yield records.ImageRecord(
          image=image, modality=modality,
          patient_key=records.salted_hash(patient_of(name), salt),
          source_hash=hashlib.sha256(f"{folder}/{name}".encode()).hexdigest()[:16],
          orig_size=orig_size)


def write_sample_shards(out_dir: str, size: int = 224, salt: str = "") -> str:
  """Writes the sample once into out_dir (reused when its manifest exists); returns out_dir."""
  if not os.path.exists(os.path.join(out_dir, shards.MANIFEST)):
    shards.write_dataset(sample_records(size, salt), out_dir, records_per_shard=64)
  return out_dir
