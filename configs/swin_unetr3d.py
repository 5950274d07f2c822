r"""python -m vismae_jax.main --config=configs/swin_unetr3d.py --workdir=DIR \
    --config.data.csv=MSD_FOLDER_OR_CSV --config.finetune.num_classes=3

SwinUNETR-3D segmentation fine-tuning (MONAI's architecture, models/swin_unetr.py), as a
protocol: k-fold, label fractions, and with --config.finetune.pretrained (a Swin pretraining
workdir, or a MONAI checkpoint: a whole SwinUNETR or a self-supervised `swinViT` encoder,
convert/monai.py) pretrained against random (--config.protocol.compare_random=True). Volumes are
read, cropped and predicted as configs/unetr3d.py's (sliding windows, Dice per structure, HD95
in mm). --config.task=export writes the run for MONAI (`SwinUNETR(**monai.json)`).

Variants (`configs/swin_unetr3d.py:VARIANT`): `cpu` (the Decathlon hippocampus on 2 cores:
crops of 32^3, feature size 12, windows of 4), `tiny` (tests).
"""
from vismae_jax import config_lib


def get_config(arg=None):
  return config_lib.swin_unetr_finetune(ndim=3, variant=arg)
