r"""Raw NIfTI files and DICOM series -> ArrayRecord shards of whole 3-D volumes (Apache Beam).

  python -m data_pipelines.volume_ingest --input=/data/raw --output=/data/volumes --salt=$SALT \
      [--modality=auto|CT|MR|PT] [--spacing=1.5,1.5,2.0] [--ct_window=-175,250] \
      [--volumes_per_shard=0] [--verbose] [Beam options]

3-D models need whole volumes, not the 2-D ingest's slices: every NIfTI file is one volume,
and so is every DICOM series (the DICOM files of one folder grouped by SeriesInstanceUID).
Each is reoriented to RAS, resampled to --spacing if given, normalised for its modality
(data_pipelines.volumes: CT clipped to --ct_window and scaled to [0, 1], MR and PET z-scored
over the foreground) and stored as a float16 records.VolumeRecord.

The steps, their guarantees and the runners are data_pipelines.ingest's, which this module
configures (VolumeIngestConfig): a sorted, encrypted plan (a planned item is a NIfTI file or
the other files of one folder), one Beam element per shard with a completion mark (a killed
run resumes), then index.csv, errors.csv (salted hashes, no file name) and dataset.json
(counts per modality, stored shapes). `volume_source` reads the voxels back for grain.
"""
import dataclasses
import os
import sys

import numpy as np
from absl import app, flags

from data_pipelines import DatasetError, console, disk, ingest, locks, pretrain_input, readers
from data_pipelines import records, signals
from data_pipelines import shards, volumes

VOLUME_MODALITIES = ("CT", "MR", "PT")


@dataclasses.dataclass(frozen=True)
class VolumeIngestConfig(ingest.ShardedIngest):
  modality: str = "auto"  # auto: the DICOM Modality, or a folder named after one (NIfTI)
  spacing: tuple | None = None  # mm per voxel to resample to; None: as stored
  ct_window: tuple = (-175.0, 250.0)  # Hounsfield units scaled to [0, 1]

  def recorded(self) -> dict:
    return {"modality": self.modality, "spacing": list(self.spacing) if self.spacing else None,
            "ct_window": list(self.ct_window), "files_per_shard": self.files_per_shard}

  def items(self, rel_paths):
    """Each NIfTI file alone; the other files of one folder together, since the files of a
    DICOM series must reach the same worker (which groups them into series)."""
    others = []
    for rel in rel_paths:  # sorted, folder by folder
      if others and os.path.dirname(rel) != os.path.dirname(others[0]):
        yield others
        others = []
      if rel.lower().endswith(readers.NIFTI_EXTENSIONS):
        yield [rel]
      else:
        others.append(rel)
    if others:
      yield others

  def convert(self, position: int, item: list[str], errors: list):
    """One VolumeRecord per NIfTI file or DICOM series of the item."""
    for rel, read in self._volumes(position, item, errors):
      try:
        volume, ids = read()
        record = self._record(rel, volume, ids)
      except Exception as e:  # one volume never stops the ingest: it becomes a row of the report
        errors.append(ingest.error_row(self, position, rel, str(e) or type(e).__name__))
        continue
      yield record

  def _volumes(self, position: int, item: list[str], errors: list) -> list:
    """(relative path that names it, reader) per volume: the NIfTI file, or each DICOM series
    among the folder's files (named by its first file); files of neither kind are errors."""
    path = lambda rel: os.path.join(self.input, rel)
    if item[0].lower().endswith(readers.NIFTI_EXTENSIONS):  # planned alone (items)
      return [(item[0], lambda: (volumes.read_nifti(path(item[0])), {}))]
    rels, unreadable = {}, []
    for rel in item:
      try:
        readers.check_file(path(rel))
        if not readers.is_dicom(path(rel)):
          raise readers.UnreadableFile("unsupported file type (expected NIfTI or DICOM)")
        rels[path(rel)] = rel
      except Exception as e:
        unreadable.append((path(rel), str(e) or type(e).__name__))
    series = volumes.find_dicom_series(list(rels), unreadable)
    errors.extend(ingest.error_row(self, position, os.path.relpath(p, self.input), reason)
                  for p, reason in unreadable)
    return [(rels[min(paths)], lambda paths=paths: volumes.read_dicom_series(paths))
            for paths in sorted(series.values(), key=min)]

  def _record(self, rel: str, volume: volumes.Volume, ids: dict) -> records.VolumeRecord:
    """Resampled, normalised, float16; the identifiers only as salted hashes (a NIfTI file
    names no patient or study; it is its own series, as in the 2-D ingest)."""
    found = (readers.DICOM_MODALITIES.get(ids["Modality"]) if ids
             else readers.modality_from_path(rel))
    modality = readers.resolve_modality(found, rel, readers.ReadOptions(modality=self.modality))
    if modality not in VOLUME_MODALITIES:
      raise readers.UnreadableFile(f"modality {modality}: volumes are one of "
                                   f"{VOLUME_MODALITIES}")
    voxels, spacing = volume.voxels, volume.spacing
    if self.spacing:
      voxels, spacing = volumes.resample(voxels, spacing, self.spacing), self.spacing
    voxels = volumes.normalize(voxels, modality, self.ct_window).astype(np.float16)
    readers.check_finite(voxels)  # beyond float16's range
    return records.VolumeRecord(
        voxels=voxels, spacing=tuple(spacing), modality=modality,
        patient_key=self.hashed(ids.get("PatientID", "")),
        study_hash=self.hashed(ids.get("StudyInstanceUID", "")),
        series_hash=self.hashed(ids.get("SeriesInstanceUID", rel)), source_hash=self.hashed(rel),
        orig_shape=volume.voxels.shape, orig_spacing=volume.spacing)


class _VolumeSource:
  """Random access to a volume dataset's voxels, float32 (X, Y, Z), for grain."""

  def __init__(self, source):
    self._source = source

  def __len__(self):
    return len(self._source)

  def __getitem__(self, i):
    return records.decode_volume(self._source[i])["voxels"].astype(np.float32)


def volume_source(data_dir: str, modalities=None) -> _VolumeSource:
  """The volumes of a folder written by this module (None or empty `modalities`: all)."""
  return _VolumeSource(pretrain_input.record_source(data_dir, modalities))


def num_volumes(data_dir: str) -> int:
  return shards.load_manifest(data_dir)["num_records"]


def parse_floats(text: str, count: int) -> tuple:
  """"1.5,1.5,2" -> (1.5, 1.5, 2.0), exactly `count` numbers."""
  values = tuple(float(v) for v in text.split(","))
  if len(values) != count:
    raise ValueError(f"{text!r}: expected {count} numbers separated by commas")
  return values


def define_flags():
  """This command line's flags (see ingest.define_common_flags)."""
  ingest.define_common_flags("NIfTI files and DICOM series (one series per folder or more)")
  flags.DEFINE_enum("modality", "auto", ("auto",) + VOLUME_MODALITIES,
                    "auto: the DICOM Modality attribute, else a folder named CT/MR/PET")
  flags.DEFINE_string("spacing", "", "resample to this spacing in mm, X,Y,Z (RAS), e.g. "
                      "1.5,1.5,2.0; empty: keep each volume's own")
  flags.DEFINE_string("ct_window", "-175,250", "Hounsfield units LOW,HIGH scaled to [0, 1]")
  flags.DEFINE_integer("volumes_per_shard", 0, "NIfTI files or DICOM folders per shard, one "
                       "Beam element each (0: several shards per core)", lower_bound=0)

  def valid(count, positive):
    def check(text):
      try:
        values = parse_floats(text, count)
      except ValueError:
        return False
      return not positive or all(v > 0 for v in values)
    return check
  flags.register_validator("spacing", lambda text: not text or valid(3, True)(text),
                           "--spacing takes three positive numbers X,Y,Z in mm, e.g. 1.5,1.5,2")
  flags.register_validator("ct_window", valid(2, False),
                           "--ct_window takes two numbers LOW,HIGH, e.g. -175,250")


def main(argv):
  """Flags not defined here (argv[1:]) are Apache Beam's pipeline options."""
  f = flags.FLAGS
  console.setup(f.verbose)
  config = VolumeIngestConfig(
      input=f.input, output=f.output, salt=f.salt, files_per_shard=f.volumes_per_shard,
      modality=f.modality, spacing=parse_floats(f.spacing, 3) if f.spacing else None,
      ct_window=parse_floats(f.ct_window, 2))
  try:
    manifest = ingest.ingest(config, argv[1:])
  except (DatasetError, disk.OutOfSpace, locks.FolderInUse) as e:
    sys.exit(f"error: {e}")
  except signals.Stopped as e:  # a distinct status that cluster scripts requeue on
    print(f"stopped: {e}", file=sys.stderr, flush=True)
    sys.exit(signals.EXIT_STOPPED)
  print(f"volume_ingest: {manifest['num_records']} volumes from {manifest['num_files']} files "
        f"{manifest['counts']} in {len(manifest['shards'])} shards at {f.output}; "
        f"{manifest['num_errors']} unreadable listed in {os.path.join(f.output, ingest.ERRORS)}")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=ingest.parse_flags)
