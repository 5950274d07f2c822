r"""python -m vismae_jax.main --config=configs/vit_mae2d.py --workdir=DIR --config.data.path=SHARDS

SelfMedMAE's 2-D pretraining: a ViT-B/16 masked autoencoder (models/vit.py) on the 2-D shards
that the Swin methods read, the masked patches dropped before the encoder, MSE on each masked
patch normalised by its own mean and variance (MAE's recipe: train/vit_masked.py). Fine-tune it
with configs/unetr2d.py (segmentation) or configs/vit_cls.py (classification).

Variants (`configs/vit_mae2d.py:VARIANT`): `sample` (the bundled real images at 64 px, a
0.5M-parameter ViT, minutes on 2 cores), `tiny` (tests).
"""
from vismae_jax.train import methods


def get_config(arg=None):
  return methods.pretrain_config("vit_mae", variant=arg, ndim=2)
