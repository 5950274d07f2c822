"""Labelled datasets for fine-tuning: image + mask (segmentation), image + label(s)
(classification).

A dataset is a CSV whose `image` column (and `mask` column, for segmentation) holds paths
relative to the CSV's folder, and whose `label` column holds a class index or, for multi-label
tasks, 0/1 flags separated by `|` (e.g. the 14 NIH chest X-ray findings); a segmentation CSV
without labels takes "the mask has foreground" as its label for stratified splits. Optional
columns, named by the caller (`Columns`): a group (by default `patient_key`: a patient's images
stay in one fold), a fold, a pixel size in mm, and `split`. This covers
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

from data_pipelines import DatasetError, readers


@dataclasses.dataclass(frozen=True)
class Columns:
  """The optional columns a CSV is read with; "" reads none. A group or pixel-size column that
  is named but absent is an error; the default group and fold columns may be absent."""
  group: str = "patient_key"
  fold: str = "fold"
  pixel_size: str = ""


DEFAULT_COLUMNS = Columns()


@dataclasses.dataclass(frozen=True)
class Table:
  images: list          # absolute paths
  masks: list | None    # absolute paths (segmentation) or None
  labels: np.ndarray | None  # (N,) int class, (N, C) float32 multi-label flags; None: from masks
  groups: np.ndarray | None  # group (patient) keys where known
  folds: np.ndarray | None
  splits: np.ndarray | None
  pixel_sizes: np.ndarray | None = None  # mm per pixel of the original image, where known
  sizes: np.ndarray | None = None  # (N, 2) original height and width, once read

  def __len__(self):
    return len(self.images)

  def subset(self, indices) -> "Table":
    def pick(a):
      if a is None:
        return None
      return np.asarray(a)[indices] if isinstance(a, np.ndarray) else [a[i] for i in indices]
    return Table(*(pick(getattr(self, f.name)) for f in dataclasses.fields(self)))

  def distance_scale(self, image_size: int) -> np.ndarray:
    """Per case, what one pixel of the model's size x size input measures: original-image
    pixels (letterboxing scaled the longer side to image_size), times the pixel size in mm
    where the CSV gives one."""
    scale = self.sizes.max(axis=1) / image_size
    return scale * self.pixel_sizes if self.pixel_sizes is not None else scale


def parse_label(text: str):
  """A class index, or 0/1 flags separated by `|` (multi-label)."""
  return [float(v) for v in text.split("|")] if "|" in text else int(text)


KINDS = {parse_label: "a class index or 0|1 flags", int: "an integer", float: "a number"}


def read_table(csv_path: str, columns: Columns = DEFAULT_COLUMNS) -> Table:
  """Reads a dataset CSV; paths resolve against the CSV's folder. Fails naming the column."""
  root = os.path.dirname(os.path.abspath(csv_path))
  try:
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
      rows = list(csv.DictReader(f))
  except (UnicodeDecodeError, csv.Error) as e:
    raise DatasetError(f"{csv_path}: not a UTF-8 CSV file ({e})") from e
  if not rows:
    raise DatasetError(f"{csv_path}: no rows")
  present = rows[0].keys()
  if "image" not in present or not {"mask", "label"} & set(present):
    raise DatasetError(f"{csv_path}: expected columns image,mask (segmentation) or image,label "
                     f"(classification); found {sorted(present)}")
  for what, name, default in (("group", columns.group, DEFAULT_COLUMNS.group),
                              ("pixel size", columns.pixel_size, DEFAULT_COLUMNS.pixel_size)):
    if name and name != default and name not in present:
      raise DatasetError(f"{csv_path}: no {what} column {name!r}; its columns are "
                       f"{sorted(present)}")
  def column(name, cast=str):
    """The column's values, cast; a value that does not cast fails naming its line."""
    if not name or name not in present:
      return None
    values = []
    for line, row in enumerate(rows, start=2):
      try:
        values.append(cast(row[name] or ""))
      except (TypeError, ValueError) as e:
        raise DatasetError(f"{csv_path} line {line}: {name}={row[name]!r} is not "
                           f"{KINDS.get(cast, 'a value')} ({e})") from e
    return values

  labels = column("label", parse_label)
  if labels is not None and len({np.shape(v) for v in labels}) > 1:
    raise DatasetError(f"{csv_path}: the label column mixes class indices and flag lists of "
                       "different lengths")
  pixel_sizes = column(columns.pixel_size, float)
  pixel_sizes = None if pixel_sizes is None else np.array(pixel_sizes)
  if pixel_sizes is not None and not np.all(pixel_sizes > 0):
    raise DatasetError(f"{csv_path}: column {columns.pixel_size!r} holds sizes <= 0 (line "
                     f"{int(np.argmax(pixel_sizes <= 0)) + 2})")
  as_array = lambda values: None if values is None else np.array(values)
  return Table(
      images=[os.path.join(root, r["image"] or "") for r in rows],
      masks=[os.path.join(root, r["mask"] or "") for r in rows] if "mask" in present else None,
      labels=None if labels is None else np.array(
          labels, np.float32 if isinstance(labels[0], list) else np.int64),
      groups=as_array(column(columns.group)), folds=as_array(column(columns.fold, int)),
      splits=as_array(column("split")), pixel_sizes=pixel_sizes)


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
  """Random-access examples {"image", "label"[, "mask"], "orig_size"} at size x size, uint8
  pixels; orig_size is the image's (height, width) before letterboxing."""

  def __init__(self, table: Table, size: int):
    self.table, self.size = table, size

  def __len__(self):
    return len(self.table)

  def __getitem__(self, i):
    i = int(i)
    path = self.table.images[i]
    try:
      image = read_grey(path)
      example = {"image": readers.letterbox(image, self.size),
                 "orig_size": np.array(image.shape, np.int32)}
      if self.table.masks is not None:
        path = self.table.masks[i]
        mask = (read_grey(path) > 127).astype(np.uint8)
        if mask.shape != image.shape:
          raise ValueError(f"the mask is {mask.shape[1]}x{mask.shape[0]} pixels, its image "
                           f"{image.shape[1]}x{image.shape[0]}")
        # Nearest neighbours keep the mask 0/1 and aligned with the letterboxed image.
        example["mask"] = readers.letterbox(mask, self.size, Image.NEAREST)
      example["label"] = (self.table.labels[i] if self.table.labels is not None
                          else np.int64(mask.any()))
    except Exception as e:  # whatever the decoder raises (OSError, SyntaxError, ...)
      raise UnreadableExample(f"{path}: {e or type(e).__name__}") from e
    return example


def load_readable(table: Table, size: int) -> tuple[dict, Table, list[dict]]:
  """Every readable example in memory, letterboxed (fine-tuning sets are small).

  Returns the stacked examples {"image", "label"[, "mask"]}, the table of their rows (labels
  and original sizes filled in), and the rows left out as {"line": CSV line number, "problem":
  message naming the file}. Fails when no row is readable, which is a wrong path rather than
  a bad file.
  """
  source, rows, kept, skipped = ExampleSource(table, size), [], [], []
  for i in tqdm.trange(len(table), desc="reading examples", unit="image", leave=False,
                       disable=None):  # None: on a terminal only
    try:
      rows.append(source[i])
      kept.append(i)
    except UnreadableExample as e:
      skipped.append({"line": i + 2, "problem": str(e)})  # line 1 is the header
  if not rows:
    raise DatasetError(f"none of the {len(table)} rows could be read; the first: "
                     f"{skipped[0]['problem']}")
  examples = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  readable = dataclasses.replace(table.subset(np.array(kept)), labels=examples["label"],
                                 sizes=examples.pop("orig_size"))
  return examples, readable, skipped
