r"""python -m vismae_jax.main --config=configs/vit_cls.py --workdir=DIR \
    --config.data.csv=LABELS_CSV --config.finetune.pretrained=VIT_MAE_DIR

ViT classification fine-tuning (SelfMedMAE's chest X-ray setting): the ViT-MAE's encoder
(configs/vit_mae2d.py), its patch tokens averaged, LayerNorm and a linear head; layer-wise lr
decay 0.75; the same protocol and report as configs/finetune_cls.py.

Variants (`configs/vit_cls.py:VARIANT`): `cpu` (64 px), `tiny` (tests).
"""
from vismae_jax import config_lib


def get_config(arg=None):
  return config_lib.vit_finetune("classification", ndim=2, variant=arg)
