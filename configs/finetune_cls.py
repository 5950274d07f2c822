r"""python -m vismae_jax.main --config=configs/finetune_cls.py --workdir=DIR \
    --config.data.csv=LABELS_CSV --config.finetune.pretrained=PRETRAIN_DIR

Swin classification fine-tuning (encoder + LayerNorm + average pool + linear head), run as a
protocol (5-fold CV by default) with a report. The release's recipe
(config_lib.FINETUNE_RECIPES; the loss and the checkpoint-selection metric are
tasks.Classification's). Multi-label CSVs (`label` as `0|1|...`) train with sigmoid + binary
cross-entropy: `--config.finetune.num_classes=14` for the NIH chest X-ray findings.

Variants (`configs/finetune_cls.py:VARIANT`): `cpu` (64 px, a 0.31M-parameter classifier
that fits the sample pretraining, `configs/generic.py:sample`), `tiny` (tests).
"""
from vismae_jax import config_lib


def get_config(arg=None):
  return config_lib.finetune("classification", variant=arg)
