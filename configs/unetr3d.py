r"""python -m vismae_jax.main --config=configs/unetr3d.py --workdir=DIR \
    --config.data.csv=MSD_FOLDER_OR_CSV --config.finetune.pretrained=VIT_MAE3D_DIR

UNETR-3D segmentation fine-tuning from a 3-D ViT-MAE (configs/vit_mae3d.py), as a protocol:
k-fold, label fractions, pretrained against random (--config.protocol.compare_random=True).
data.csv is a Medical Segmentation Decathlon folder (dataset.json, imagesTr/, labelsTr/) or a
CSV whose image and mask columns name NIfTI volumes. Volumes are reoriented to RAS, resampled to
input.spacing and normalised per input.modality; training sees ROI crops centred half the time
on a labelled voxel, flipped and turned on device (input.flip, input.rotate90); validation and
test predict whole volumes by Gaussian-weighted sliding windows and score Dice per structure and
HD95 in mm.

Variants (`configs/unetr3d.py:VARIANT`): `cpu` (the hippocampus: crops of 32x48x32, a
0.5M-parameter ViT on patches of 8, no flips or turns, fits configs/vit_mae3d.py:cpu), `tiny`
(tests). Set the number of classes with --config.finetune.num_classes (background included;
the hippocampus: 3).
"""
from vismae_jax import config_lib


def get_config(arg=None):
  return config_lib.vit_finetune("segmentation", ndim=3, variant=arg)
