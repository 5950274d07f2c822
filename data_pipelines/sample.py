"""The bundled sample (data_pipelines/sample, see its ATTRIBUTION.md) as pretraining shards.

Runs the ingest pipeline in-process (no Beam needed): the folders `us/` and `xr/` give the
modalities, as they would for any folder of PNG/JPEG files.
"""
import os

from data_pipelines import ingest, shards

SAMPLE_DIR = os.path.join(os.path.dirname(__file__), "sample")


def write_sample_shards(out_dir: str, size: int = 224, salt: str = "sample") -> str:
  """Writes the sample once into out_dir (reused when its manifest exists); returns out_dir."""
  if not os.path.exists(os.path.join(out_dir, shards.MANIFEST)):
    ingest.ingest(ingest.IngestConfig(input=SAMPLE_DIR, output=out_dir, salt=salt, size=size,
                                      files_per_shard=64))
  return out_dir
