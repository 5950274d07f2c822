"""ArrayRecord shards plus the index and manifest that describe them.

A dataset directory holds `shard-NNNNN.array_record` files, `index.csv` (one row per record, in
global order: shard, offset, modality and the de-identified keys) and `dataset.json` (the shard
list, counts per modality and pixel statistics). data_pipelines.ingest writes them. The global
position of a record is its row in `index.csv`, which is also its index in an
ArrayRecordDataSource over the manifest's shards.
"""
import csv
import json
import os

MANIFEST = "dataset.json"
INDEX = "index.csv"
INDEX_FIELDS = ("shard", "offset", "modality", "patient_key", "study_hash", "series_hash",
                "source_hash")


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
