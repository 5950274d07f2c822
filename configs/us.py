r"""python -m vismae_jax.main --config=configs/us.py --workdir=DIR --config.data.path=SHARDS

VIS-MAE-Modality (ultrasound): SwinMAE pretraining on US images only, selected by the modality
stored with each record at ingest. Variants as in generic.py.
"""
from vismae_jax.train import methods


def get_config(arg=None):
  return methods.pretrain_config("mae", modalities=("US",), variant=arg)
