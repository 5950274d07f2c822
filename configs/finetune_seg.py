r"""python -m vismae_jax.main --config=configs/finetune_seg.py --workdir=DIR \
    --config.data.csv=LABELS_CSV --config.finetune.pretrained=PRETRAIN_DIR

Swin-UNet segmentation fine-tuning, run as a protocol (5-fold CV by default) with a report.
The release's recipe (config_lib.FINETUNE_RECIPES; the loss and the checkpoint-selection metric
are tasks.Segmentation's). Label efficiency:
`--config.protocol.fractions='(0.1,0.25,0.5,1.0)' --config.protocol.compare_random=True`.

Variants (`configs/finetune_seg.py:VARIANT`): `cpu` (64 px, a 0.44M-parameter Swin-UNet that
fits the sample pretraining, `configs/generic.py:sample`), `tiny` (tests).
"""
from vismae_jax import config_lib


def get_config(arg=None):
  return config_lib.finetune("segmentation", variant=arg)
