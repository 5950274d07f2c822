r"""python -m vismae_jax.main --config=configs/vit_mae3d.py --workdir=DIR \
    --config.data.path=VOLUME_SHARDS

SelfMedMAE's 3-D pretraining: a ViT-B/16 masked autoencoder on random crops of the volumes that
`python -m data_pipelines.volume_ingest` wrote (reoriented to RAS, resampled, normalised per
modality), MSE on the normalised masked patches; crops flipped and their intensities jittered
on device (the recipe: train/vit_masked.py). Fine-tune with configs/unetr3d.py.

Variants (`configs/vit_mae3d.py:VARIANT`): `cpu` (crops of 32x48x32 voxels, a 0.5M-parameter
ViT: the Decathlon hippocampus on 2 cores), `tiny` (tests).
"""
from vismae_jax.train import methods


def get_config(arg=None):
  return methods.pretrain_config("vit_mae", variant=arg, ndim=3)
