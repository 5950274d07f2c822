r"""python -m vismae_jax.main --config=configs/pet.py --workdir=DIR --config.data.path=SHARDS

VIS-MAE-Modality (PET): SwinMAE pretraining on PT images only, selected by the modality
stored with each record at ingest. Variants as in generic.py.
"""
from vismae_jax.train import methods


def get_config(arg=None):
  return methods.pretrain_config("mae", modalities=("PT",), variant=arg)
