"""grain pipeline for pretraining: shards -> global shuffle -> per-host slice -> uint8 batches.

The host only moves bytes: batches are (per_host_batch, H, W) uint8 and everything per-pixel
(resize, flip, normalisation, masking) runs on the accelerator inside the train step. The
shuffle is global and reseeded every epoch. The shuffled stream is cut into per-host batches and
host p takes every P-th one, so global batch k is the contiguous block [k*B, (k+1)*B) of the
stream in the same row order whatever the number of hosts: runs on 1 and on N hosts see the
same examples paired with the same per-row masks.
"""
import csv
import os

import grain
import jax
import numpy as np

from data_pipelines import DatasetError, records, shards


class _Subset:
  """Random-access view of `source` restricted to `positions` (e.g. one modality)."""

  def __init__(self, source, positions: np.ndarray):
    self._source, self._positions = source, positions

  def __len__(self):
    return len(self._positions)

  def __getitem__(self, i):
    return self._source[int(self._positions[i])]


def modality_column(data_dir: str) -> np.ndarray:
  with open(os.path.join(data_dir, shards.INDEX), newline="") as f:
    return np.array([row["modality"] for row in csv.DictReader(f)])


def record_source(data_dir: str, modalities=None):
  """ArrayRecord source over the dataset, filtered to `modalities` (None or empty: all)."""
  manifest = shards.load_manifest(data_dir)
  source = grain.sources.ArrayRecordDataSource(
      [os.path.join(data_dir, name) for name in manifest["shards"]])
  if not modalities:
    return source
  positions = np.flatnonzero(np.isin(modality_column(data_dir), list(modalities)))
  if positions.size == 0:
    raise DatasetError(f"{data_dir}: no records of modality {list(modalities)}; the dataset has "
                     f"{manifest['counts']}")
  return _Subset(source, positions)


def pretrain_dataset(data_dir: str, *, modalities, seed: int, per_host_batch: int,
                     process_index: int, process_count: int,
                     mixture: dict | None = None) -> grain.MapDataset:
  """Infinite MapDataset of uint8 batches for this host; its iterator state is checkpointable.

  mixture: sampling weight per modality (e.g. {"CT": 2, "XR": 1}); each modality is shuffled
  and repeated on its own and the streams are interleaved in those proportions, so a rare
  modality is not drowned by a common one. None or all zero: every record once per epoch.
  """
  weights = {m: w for m, w in sorted((mixture or {}).items()) if w > 0}
  if weights:
    ds = grain.MapDataset.mix(
        [grain.MapDataset.source(record_source(data_dir, [m])).seed(seed + i).shuffle().repeat()
         for i, m in enumerate(weights)], list(weights.values()))
  else:
    ds = grain.MapDataset.source(record_source(data_dir, modalities)).seed(seed).shuffle()
    ds = ds.repeat()
  ds = ds.map(records.decode_image)
  return ds.batch(per_host_batch, drop_remainder=True)[process_index::process_count]


def host_batches(source, *, seed: int, batch_size: int, transform=None) -> grain.MapDataset:
  """This host's endless batches of a random-access `source` (fine-tuning's in-memory cases,
  volume crops), shuffled every epoch and cut as `pretrain_dataset` cuts records: global batch k
  holds the same examples whatever the number of hosts. `transform` maps each example."""
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
  if transform is not None:
    ds = ds.map(transform)
  return ds.batch(batch_size // jax.process_count(), drop_remainder=True)[
      jax.process_index()::jax.process_count()]


def num_examples(data_dir: str, modalities=None) -> int:
  return len(record_source(data_dir, modalities))


# Batches read ahead by grain's threads. Its default, 500, decodes 500 batches before the first
# step needs them and, in a fine-tuning run on a small label fraction, reshuffles the run's tiny
# epochs hundreds of times beyond the run's end (about 15 ms each, holding the interpreter): on 2
# cores a 10% run took 8 s instead of 3. 32 keeps every thread busy and an accelerator fed.
READ_AHEAD = 32


def make_iterator(ds: grain.MapDataset, workers: int) -> grain.DatasetIterator:
  it = ds.to_iter_dataset(grain.ReadOptions(prefetch_buffer_size=READ_AHEAD))
  if workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(it)
