r"""python -m vismae_jax.main --config=configs/xray.py --workdir=DIR --config.data.path=SHARDS

VIS-MAE-Modality (X-ray): SwinMAE pretraining on XR images only, selected by the modality
stored with each record at ingest. Variants as in generic.py.
"""
from vismae_jax.train import methods


def get_config(arg=None):
  return methods.pretrain_config("mae", modalities=("XR",), variant=arg)
