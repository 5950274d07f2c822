"""Labelled sets as fine-tuning reads them, for the protocol and for evaluation alike: a CSV of
2-D images (downstream.py) or volumes (a Decathlon folder or a CSV naming NIfTI files,
volumes.py), each read into (examples, table, skipped rows).

Unreadable rows are left out and listed (line and problem), so that one bad file among
thousands does not stop a protocol; the table keeps what splits need (labels, groups, folds)
and what distances need (pixel sizes, original sizes).
"""
import dataclasses
import os

import numpy as np

from data_pipelines import DatasetError, downstream, volumes


@dataclasses.dataclass(frozen=True)
class VolumeOptions:
  """How volumes are made model inputs: resampled to `spacing` (mm per axis; None: as stored)
  and normalised per `modality` (CT clipped to `ct_window`; volumes.normalize)."""
  spacing: tuple | None
  modality: str
  ct_window: tuple


def stratification_labels(table: downstream.Table) -> np.ndarray:
  """Class per case for stratified splits (multi-label: the first positive flag, or none)."""
  labels = table.labels
  if labels.ndim == 2:
    return np.where(labels.any(axis=1), labels.argmax(axis=1), -1)
  return labels


def volume_rows(path: str) -> tuple[list[dict], downstream.Table | None]:
  """The labelled volumes of a Decathlon folder (or its dataset.json), or of a CSV whose image
  and mask columns name them: ([{name, image, label}], the CSV's table for its folds and
  groups, None for a Decathlon folder)."""
  if os.path.isdir(path) or os.path.basename(path) == "dataset.json":
    return volumes.read_msd(path if os.path.isdir(path) else os.path.dirname(path)), None
  table = downstream.read_table(path, downstream.Columns(group="", fold="fold"))
  if table.masks is None:
    raise DatasetError(f"{path}: volumes need image and mask columns (NIfTI paths)")
  return [{"name": os.path.basename(i), "image": i, "label": m}
          for i, m in zip(table.images, table.masks)], table


def as_objects(arrays: list) -> np.ndarray:
  """Volumes of different shapes as one array of objects, indexed by case like 2-D examples."""
  out = np.empty(len(arrays), object)
  out[:] = arrays
  return out


def read_volumes(path: str, options: VolumeOptions):
  """Labelled volumes: (examples {image, mask: arrays of volumes, label: has foreground},
  table, skipped rows), reoriented to RAS, resampled and normalised (`options`). The table's
  pixel sizes are the voxel spacings, which HD95 in mm needs."""
  rows, csv_table = volume_rows(path)
  images, masks, spacings, skipped = volumes.load_labelled(
      rows, target_spacing=options.spacing, modality=options.modality,
      ct_window=options.ct_window)
  if not images:
    raise DatasetError(f"{path}: none of the {len(rows)} volumes could be read; the first: "
                       f"{skipped[0]['problem']}")
  kept = sorted(set(range(len(rows))) - {s["row"] for s in skipped})
  examples = {"image": as_objects(images), "mask": as_objects(masks),
              "label": np.array([int(m.any()) for m in masks])}
  pick = lambda a: None if a is None else np.asarray(a)[kept]
  table = downstream.Table(
      images=[rows[k]["image"] for k in kept], masks=[rows[k]["label"] for k in kept],
      labels=examples["label"], groups=pick(csv_table and csv_table.groups),
      folds=pick(csv_table and csv_table.folds), splits=None, pixel_sizes=np.array(spacings),
      sizes=np.array([m.shape for m in masks]))
  # As a CSV's lines count them (the header is line 1); in a Decathlon folder, the position in
  # dataset.json's training list plus 2. The problem names the file either way.
  return examples, table, [{"line": s["row"] + 2, "problem": s["problem"]} for s in skipped]


def read_images(path: str, columns: downstream.Columns, image_size: int, multilabel: bool,
                check=None):
  """A labelled CSV of 2-D images, letterboxed to `image_size`: (examples, table, skipped
  rows). Labels that are not what `multilabel` says fail, naming the setting; `check(table)`
  may refuse the labels (a task kind's) before any image is read."""
  table = downstream.read_table(path, columns)
  found = table.labels is not None and table.labels.ndim == 2
  if found != multilabel:
    raise DatasetError(
        f"{path}: the labels are {'0|1 flags per label' if found else 'class indices'}; set "
        f"--config.finetune.multilabel={found}")
  if check is not None:
    check(table)
  return downstream.load_readable(table, image_size)
