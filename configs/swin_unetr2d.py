r"""python -m vismae_jax.main --config=configs/swin_unetr2d.py --workdir=DIR \
    --config.data.csv=LABELS_CSV

SwinUNETR-2D segmentation fine-tuning (MONAI's SwinUNETR with spatial_dims=2,
models/swin_unetr.py) on the 2-D protocol of docs/finetuning.md: image,mask CSV, k-fold, label
fractions. The model of configs/swin_unetr3d.py on images (224 px, a multiple of 32), the same
MONAI interchange (--config.task=export, MONAI files as --config.finetune.pretrained).

Variants (`configs/swin_unetr2d.py:VARIANT`): `cpu` (64 px, feature size 12, windows of 4),
`tiny` (tests).
"""
from vismae_jax import config_lib


def get_config(arg=None):
  return config_lib.swin_unetr_finetune(ndim=2, variant=arg)
