"""The pretraining task: which data it trains on, and what it shows."""
import pytest

from data_pipelines import ingest, sample
from helpers import load_config
from vismae_jax import parallel
from vismae_jax.train import pretrain


@pytest.fixture(scope="module")
def ultrasound_shards(tmp_path_factory):
  """The sample's 96 ultrasound images alone: other shards than the sample's 256."""
  out = str(tmp_path_factory.mktemp("us_shards"))
  ingest.ingest(ingest.IngestConfig(input=f"{sample.SAMPLE_DIR}/us", output=out, salt="s",
                                    size=64, read=ingest.readers.ReadOptions(modality="US")))
  return out


def test_a_data_path_on_the_command_line_wins_over_the_variants_sample(ultrasound_shards,
                                                                      tmp_path, caplog):
  config = load_config("generic.py", "sample")  # data.source = "sample"
  config.data.path = ultrasound_shards
  mesh = parallel.make_mesh(config.mesh)
  with caplog.at_level("INFO"):
    task = pretrain.make_task(config, str(tmp_path), mesh)
  assert task.num_examples == 96
  assert f"training on config.data.path={ultrasound_shards}" in caplog.text
  config.data.path = ""
  with caplog.at_level("INFO"):
    assert pretrain.make_task(config, str(tmp_path), mesh).num_examples == 256
  assert "training on the bundled sample" in caplog.text
