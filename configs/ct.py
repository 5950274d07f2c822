r"""python -m vismae_jax.main --config=configs/ct.py --workdir=DIR --config.data.path=SHARDS

VIS-MAE-Modality (CT): SwinMAE pretraining on CT images only, selected by the modality
stored with each record at ingest. Variants as in generic.py.
"""
from vismae_jax.train import methods


def get_config(arg=None):
  return methods.pretrain_config("mae", modalities=("CT",), variant=arg)
