r"""python -m vismae_jax.main --config=configs/smit3d.py --workdir=DIR \
    --config.data.path=VOLUME_SHARDS

SMIT (Jiang et al., MICCAI 2022): masked image prediction with self-distillation on MONAI's 3D
Swin, on random crops of the volumes that `python -m data_pipelines.volume_ingest` wrote. The
student sees each of two views with 70% of its 16-voxel mask units hidden, the EMA teacher the
views whole; L1 on the masked voxels plus DINO's and iBOT's distillation (the recipe:
train/smit.py). Fine-tune with configs/swin_unetr3d.py (--config.finetune.pretrained=DIR), or
export the encoder to MONAI with --config.task=export.

Variants (`configs/smit3d.py:VARIANT`): `cpu` (configs/swin_unetr3d.py:cpu's encoder on crops of
32^3: the Decathlon hippocampus on 2 cores), `tiny` (tests).
"""
from vismae_jax.train import methods


def get_config(arg=None):
  return methods.pretrain_config("smit", variant=arg)
