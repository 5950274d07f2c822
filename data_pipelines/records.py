"""The record stored in every pretraining shard, and its (de)serialisation.

Records are msgpack maps, never pickles, so reading a shard cannot execute code. They carry
only pixels and de-identified metadata: no names, IDs, dates or free text ever enter a record.
"""
import dataclasses
import hashlib

import msgpack
import numpy as np

MODALITIES = ("CT", "MR", "PT", "XR", "US")


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  image: np.ndarray          # (H, W) uint8
  modality: str              # one of MODALITIES
  patient_key: str           # salted hash of the patient identifier
  study_hash: str            # salted hashes of the study and series instance UIDs
  series_hash: str
  source_hash: str           # hash of the source path relative to the ingest root (+ frame)
  orig_size: tuple[int, int]  # (height, width) before resizing

  def encode(self) -> bytes:
    if self.image.dtype != np.uint8 or self.image.ndim != 2:
      raise ValueError(f"records hold (H, W) uint8 images, got {self.image.dtype} "
                       f"{self.image.shape}")
    if self.modality not in MODALITIES:
      raise ValueError(f"unknown modality {self.modality!r}; expected one of {MODALITIES}")
    return msgpack.packb({
        "image": self.image.tobytes(), "shape": list(self.image.shape),
        "modality": self.modality, "patient_key": self.patient_key,
        "study_hash": self.study_hash, "series_hash": self.series_hash,
        "source_hash": self.source_hash, "orig_size": list(self.orig_size)})

  def values(self) -> np.ndarray:
    """The pixels on the [0, 1] scale the model sees: what dataset.json's mean and std
    describe."""
    return self.image.astype(np.float64) / 255.0


@dataclasses.dataclass(frozen=True)
class VolumeRecord:
  voxels: np.ndarray         # (X, Y, Z) float16, RAS, normalised (data_pipelines.volumes)
  spacing: tuple             # mm per voxel after resampling
  modality: str              # one of MODALITIES
  patient_key: str           # salted hashes, as ImageRecord's
  study_hash: str
  series_hash: str
  source_hash: str           # hash of the source path (a series: its first file's)
  orig_shape: tuple          # (X, Y, Z) and spacing before resampling
  orig_spacing: tuple

  def encode(self) -> bytes:
    if self.voxels.dtype != np.float16 or self.voxels.ndim != 3:
      raise ValueError(f"volume records hold (X, Y, Z) float16 voxels, got "
                       f"{self.voxels.dtype} {self.voxels.shape}")
    if self.modality not in MODALITIES:
      raise ValueError(f"unknown modality {self.modality!r}; expected one of {MODALITIES}")
    return msgpack.packb({
        "voxels": self.voxels.astype("<f2").tobytes(), "shape": list(self.voxels.shape),
        "spacing": [float(s) for s in self.spacing], "modality": self.modality,
        "patient_key": self.patient_key, "study_hash": self.study_hash,
        "series_hash": self.series_hash, "source_hash": self.source_hash,
        "orig_shape": [int(n) for n in self.orig_shape],
        "orig_spacing": [float(s) for s in self.orig_spacing]})

  def values(self) -> np.ndarray:
    return self.voxels.astype(np.float64)


def decode(data: bytes) -> dict:
  """Bytes -> dict with `image` as an (H, W) uint8 array and the metadata fields."""
  fields = msgpack.unpackb(data)
  fields["image"] = np.frombuffer(fields["image"], np.uint8).reshape(fields["shape"])
  return fields


def decode_volume(data: bytes) -> dict:
  """Bytes of a VolumeRecord -> dict with `voxels` as an (X, Y, Z) float16 array and the
  metadata fields."""
  fields = msgpack.unpackb(data)
  fields["voxels"] = np.frombuffer(fields["voxels"], "<f2").reshape(fields["shape"])
  return fields


def decode_image(data: bytes) -> np.ndarray:
  """The pixels only: what the pretraining pipeline needs per example."""
  return decode(data)["image"]


def salted_hash(value: str, salt: str, length: int = 16) -> str:
  """Stable de-identified key: the salt stays in the config and is never written anywhere.
  An empty value (nothing known) stays empty, rather than one key shared by every unknown."""
  if not value:
    return ""
  # surrogateescape: a file name that is not UTF-8 hashes as the bytes it is.
  return hashlib.sha256(f"{salt}\x00{value}".encode("utf-8", "surrogateescape")).hexdigest()[
      :length]
