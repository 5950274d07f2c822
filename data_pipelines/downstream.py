"""Labelled datasets for fine-tuning: image + mask (segmentation), image + label(s)
(classification).

A dataset is a CSV whose `image` column (and `mask` column, for segmentation) holds paths
relative to the CSV's folder, and whose `label` column holds a class index or, for multi-label
tasks, 0/1 flags separated by `|` (e.g. the 14 NIH chest X-ray findings). Optional columns:
`patient_key` (keeps a patient's images in one fold), `fold`, `split`. This covers
(a) the release's convention, one CSV per split and fold (`{train,val,test}_fold{N}.csv`:
release_fold_tables), and (b) any folder + CSV, which tfds_builders turns into a TFDS dataset.

`ExampleSource` reads and letterboxes examples on demand: a random-access source for grain.
A row whose image or mask cannot be read (missing, corrupt, a mask of another size than its
image) raises `UnreadableExample` naming the file; `load_readable` leaves such rows out and
lists them, so that one bad file among thousands does not stop a protocol.
"""
import csv
import dataclasses
import os

import numpy as np
import tqdm
from PIL import Image

from data_pipelines import readers


@dataclasses.dataclass(frozen=True)
class Table:
  images: list          # absolute paths
  masks: list | None    # absolute paths (segmentation) or None
  labels: np.ndarray    # (N,) int class, or (N, C) float32 multi-label flags
  groups: np.ndarray | None  # patient keys where known
  folds: np.ndarray | None
  splits: np.ndarray | None

  def __len__(self):
    return len(self.images)

  def subset(self, indices) -> "Table":
    pick = lambda a: None if a is None else (np.asarray(a)[indices] if isinstance(a, np.ndarray)
                                             else [a[i] for i in indices])
    return Table(pick(self.images), pick(self.masks), self.labels[indices], pick(self.groups),
                 pick(self.folds), pick(self.splits))


def parse_label(text: str):
  return [float(v) for v in text.split("|")] if "|" in text else int(text)


def read_table(csv_path: str) -> Table:
  """Reads a dataset CSV; paths resolve against the CSV's folder. Fails naming the column."""
  root = os.path.dirname(os.path.abspath(csv_path))
  with open(csv_path, newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows:
    raise ValueError(f"{csv_path}: no rows")
  columns = rows[0].keys()
  if "image" not in columns or not {"mask", "label"} & set(columns):
    raise ValueError(f"{csv_path}: expected columns image,mask (segmentation) or image,label "
                     f"(classification); found {sorted(columns)}")
  column = lambda name, cast=str: (np.array([cast(r[name]) for r in rows])
                                   if name in columns else None)
  labels = ([parse_label(r["label"]) for r in rows] if "label" in columns
            else [int(np.any(np.asarray(Image.open(os.path.join(root, r["mask"]))) > 127))
                  for r in rows])  # segmentation without labels: lesion present or not
  return Table(
      images=[os.path.join(root, r["image"]) for r in rows],
      masks=[os.path.join(root, r["mask"]) for r in rows] if "mask" in columns else None,
      labels=np.array(labels, np.float32 if isinstance(labels[0], list) else np.int64),
      groups=column("patient_key"), folds=column("fold", int), splits=column("split"))


def release_fold_tables(folder: str, fold: int) -> dict[str, Table]:
  """The release's `{train,val,test}_fold{N}.csv` files of one fold."""
  return {split: read_table(os.path.join(folder, f"{split}_fold{fold}.csv"))
          for split in ("train", "val", "test")}


def read_grey(path: str) -> np.ndarray:
  """(H, W) uint8 pixels at the file's resolution."""
  with Image.open(path) as img:
    return np.asarray(img.convert("L"))


class UnreadableExample(Exception):
  """A row whose image or mask cannot be used; the message names the file and the problem."""


class ExampleSource:
  """Random-access examples {"image", "label"[, "mask"]} at size x size, uint8 pixels."""

  def __init__(self, table: Table, size: int):
    self.table, self.size = table, size

  def __len__(self):
    return len(self.table)

  def __getitem__(self, i):
    i = int(i)
    path = self.table.images[i]
    try:
      image = read_grey(path)
      example = {"image": readers.letterbox(image, self.size), "label": self.table.labels[i]}
      if self.table.masks is not None:
        path = self.table.masks[i]
        mask = (read_grey(path) > 127).astype(np.uint8)
        if mask.shape != image.shape:
          raise ValueError(f"the mask is {mask.shape[1]}x{mask.shape[0]} pixels, its image "
                           f"{image.shape[1]}x{image.shape[0]}")
        # Nearest neighbours keep the mask 0/1 and aligned with the letterboxed image.
        example["mask"] = readers.letterbox(mask, self.size, Image.NEAREST)
    except Exception as e:  # whatever the decoder raises (OSError, SyntaxError, ...)
      raise UnreadableExample(f"{path}: {e or type(e).__name__}") from e
    return example


def load_readable(table: Table, size: int) -> tuple[dict, np.ndarray, list[dict]]:
  """Every readable example in memory, letterboxed (fine-tuning sets are small).

  Returns the stacked examples, the indices of their rows in `table`, and the rows left out as
  {"line": CSV line number, "problem": message naming the file}. Fails when no row is readable,
  which is a wrong path rather than a bad file.
  """
  source, rows, kept, skipped = ExampleSource(table, size), [], [], []
  for i in tqdm.trange(len(table), desc="reading examples", unit="image", leave=False):
    try:
      rows.append(source[i])
      kept.append(i)
    except UnreadableExample as e:
      skipped.append({"line": i + 2, "problem": str(e)})  # line 1 is the header
  if not rows:
    raise ValueError(f"none of the {len(table)} rows could be read; the first: "
                     f"{skipped[0]['problem']}")
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}, np.array(kept), skipped
