r"""python -m vismae_jax.main --config=configs/unetr2d.py --workdir=DIR \
    --config.data.csv=LABELS_CSV --config.finetune.pretrained=VIT_MAE_DIR

UNETR-2D segmentation fine-tuning (models/unetr.py) from a ViT-MAE (configs/vit_mae2d.py), run
as the same protocol as the Swin-UNet (k-fold, label fractions, pretrained against random with
--config.protocol.compare_random=True, a report with CIs and paired tests). The encoder's tensors
transfer by name; layer-wise lr decay 0.75.

Variants (`configs/unetr2d.py:VARIANT`): `cpu` (64 px, fits configs/vit_mae2d.py:sample),
`tiny` (tests).
"""
from vismae_jax import config_lib


def get_config(arg=None):
  return config_lib.vit_finetune("segmentation", ndim=2, variant=arg)
