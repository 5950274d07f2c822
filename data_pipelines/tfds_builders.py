"""TFDS builders for labelled folder + CSV datasets (BUSI, chest X-ray, any other), no TensorFlow.

  python -m data_pipelines.tfds_builders --name=busi --csv=/data/busi/labels.csv \
      --data_dir=~/tensorflow_datasets [--size=224]

Examples are stored letterboxed to size x size as uint8 `tfds.features.Tensor`s in ArrayRecord
files, so `tfds.data_source(...)` (or `load_source` below) feeds grain with random access and no
TensorFlow. Features: `image`, `orig_size` (height, width before letterboxing), `label` (class
index, or multi-label flags), `mask` when the CSV has one, `patient_key` (hashed as in ingest
when the CSV has one, else the image's own key), `fold` (-1 when absent). Splits come from the
CSV's `split` column, else everything is `train`.
A row whose image or mask cannot be read is left out with a warning naming the file.
"""
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags, logging

from data_pipelines import downstream, records

KNOWN = {"busi": "Breast ultrasound (Al-Dhabyani et al. 2020, CC0): lesion masks, "
                 "benign / malignant / normal",
         "chest_xray_pneumonia": "Pediatric chest X-rays (Kermany et al. 2018, CC BY 4.0): "
                                 "normal / pneumonia"}


class FolderCsvConfig(tfds.core.BuilderConfig):
  def __init__(self, *, csv_path: str, size: int = 224, salt: str = "", **kwargs):
    super().__init__(**kwargs)
    self.csv_path, self.size, self.salt = csv_path, size, salt


class FolderCsv(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """One builder class; the config names the CSV and the stored size (built by path, not name)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    table = downstream.read_table(self.builder_config.csv_path)
    size = self.builder_config.size
    features = {"image": tfds.features.Tensor(shape=(size, size), dtype=np.uint8),
                "orig_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
                "patient_key": tfds.features.Text(), "fold": np.int32}
    if table.labels is not None and table.labels.ndim == 2:
      features["label"] = tfds.features.Tensor(shape=table.labels.shape[1:], dtype=np.float32)
    else:
      features["label"] = np.int64
    if table.masks is not None:
      features["mask"] = tfds.features.Tensor(shape=(size, size), dtype=np.uint8)
    return self.dataset_info_from_configs(
        description=self.builder_config.description,
        features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    table = downstream.read_table(self.builder_config.csv_path)
    names = table.splits if table.splits is not None else np.array(["train"] * len(table))
    return {str(s): self._generate_examples(table, np.flatnonzero(names == s))
            for s in np.unique(names)}

  def _generate_examples(self, table, indices):
    source = downstream.ExampleSource(table, self.builder_config.size)
    for i in indices:
      try:
        example = source[i]
      except downstream.UnreadableExample as e:
        logging.warning("%s line %d left out: %s", self.builder_config.csv_path, i + 2, e)
        continue
      patient = table.groups[i] if table.groups is not None else table.images[i]
      example["patient_key"] = records.salted_hash(str(patient), self.builder_config.salt)
      example["fold"] = int(table.folds[i]) if table.folds is not None else -1
      yield int(i), example


def builder(name: str, csv_path: str, data_dir: str, size: int = 224, salt: str = ""):
  config = FolderCsvConfig(name=f"{name}_{size}", csv_path=csv_path, size=size, salt=salt,
                           description=KNOWN.get(name, f"{name} from {csv_path}"))
  return FolderCsv(config=config, data_dir=data_dir, file_format="array_record")


def load_source(name: str, csv_path: str, data_dir: str, split: str = "train", size: int = 224):
  """Builds once (offline, from the CSV's folder), then returns a random-access source."""
  b = builder(name, csv_path, data_dir, size)
  b.download_and_prepare()
  return b.as_data_source(split=split)


def define_flags():
  """The command line's flags, defined only when this module runs as the program."""
  flags.DEFINE_string("name", None, "dataset name (busi and chest_xray_pneumonia are described)",
                      required=True)
  flags.DEFINE_string("csv", None, "CSV with image,mask or image,label columns", required=True)
  flags.DEFINE_string("data_dir", os.path.expanduser("~/tensorflow_datasets"),
                      "where TFDS keeps the built dataset")
  flags.DEFINE_integer("size", 224, "stored side (letterboxed square)", lower_bound=16)


def main(argv):
  del argv
  f = flags.FLAGS
  b = builder(f.name, f.csv, f.data_dir, f.size)
  b.download_and_prepare()
  print(f"tfds: {f.name} at {b.data_dir}: " +
        ", ".join(f"{k} {v.num_examples}" for k, v in b.info.splits.items()))


if __name__ == "__main__":
  # TFDS resolves builders by their package: run the importable module, not __main__.
  from data_pipelines import tfds_builders
  tfds_builders.define_flags()
  app.run(tfds_builders.main)
