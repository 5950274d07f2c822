r"""python -m vismae_jax.main --config=configs/generic.py --workdir=DIR --config.data.path=SHARDS

VIS-MAE-Generic: SwinMAE pretraining on every modality in the shards.

Variants (`configs/generic.py:VARIANT`): `sample` trains on the bundled real images with a
model and schedule sized for a 2-core CPU (the README's quick start); `tiny` is for tests.
"""
from vismae_jax.train import methods


def get_config(arg=None):
  return methods.pretrain_config("mae", variant=arg)
