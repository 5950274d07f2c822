"""ArrayRecord shards plus the index and manifest that describe them.

A dataset directory holds `shard-NNNNN.array_record` files, `index.csv` (one row per record, in
global order: shard, offset, modality, patient_key, source_hash) and `dataset.json` (the shard
list, counts per modality and pixel statistics). The global position of a record is its row in
`index.csv`, which is also its index in an ArrayRecordDataSource over the manifest's shards.
"""
import csv
import json
import os

import numpy as np
from array_record.python import array_record_module

from data_pipelines.records import ImageRecord

MANIFEST = "dataset.json"
INDEX = "index.csv"
INDEX_FIELDS = ("shard", "offset", "modality", "patient_key", "source_hash")


def write_dataset(records, out_dir: str, records_per_shard: int = 4096) -> dict:
  """Writes an iterable of ImageRecord as shards + index + manifest; returns the manifest."""
  os.makedirs(out_dir, exist_ok=True)
  shards, rows = [], []
  counts: dict[str, int] = {}
  pixel_sum = pixel_sq_sum = pixel_n = 0.0
  writer = None
  for record in records:
    if writer is None or rows and len(rows) % records_per_shard == 0:
      if writer is not None:
        writer.close()
      shards.append(f"shard-{len(shards):05d}.array_record")
      writer = array_record_module.ArrayRecordWriter(os.path.join(out_dir, shards[-1]),
                                                     "group_size:1")
    writer.write(record.encode())
    rows.append({"shard": shards[-1], "offset": len(rows) % records_per_shard,
                 "modality": record.modality, "patient_key": record.patient_key,
                 "source_hash": record.source_hash})
    counts[record.modality] = counts.get(record.modality, 0) + 1
    pixels = record.image.astype(np.float64) / 255.0
    pixel_sum += pixels.sum()
    pixel_sq_sum += (pixels ** 2).sum()
    pixel_n += pixels.size
  if writer is not None:
    writer.close()
  if not rows:
    raise ValueError(f"no records to write to {out_dir}")
  with open(os.path.join(out_dir, INDEX), "w", newline="") as f:
    w = csv.DictWriter(f, INDEX_FIELDS)
    w.writeheader()
    w.writerows(rows)
  mean = pixel_sum / pixel_n
  manifest = {"shards": shards, "num_records": len(rows), "counts": counts,
              "pixel_mean": mean, "pixel_std": float(np.sqrt(pixel_sq_sum / pixel_n - mean ** 2)),
              "image_shape": list(record.image.shape)}
  with open(os.path.join(out_dir, MANIFEST), "w") as f:
    json.dump(manifest, f, indent=1)
  return manifest


def load_manifest(data_dir: str) -> dict:
  path = os.path.join(data_dir, MANIFEST)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {data_dir} is not a shard directory written by "
                            "data_pipelines (expected dataset.json, index.csv and "
                            "shard-*.array_record)")
  with open(path) as f:
    return json.load(f)


def load_index(data_dir: str) -> list[dict]:
  with open(os.path.join(data_dir, INDEX), newline="") as f:
    return list(csv.DictReader(f))
