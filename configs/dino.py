r"""python -m vismae_jax.main --config=configs/dino.py --workdir=DIR --config.data.path=SHARDS

DINO self-distillation with iBOT's masked-token objective, pretraining the Swin encoder on every
modality in the shards: global and local views of each image, an EMA teacher on the global
views, the student matching it on the pooled last stage across views and at the masked tokens
of its own global views. Its settings (config.dino, config.views, the masking in config.mae)
and their defaults, the papers', are train/distillation.py's; the log checks for collapse
(teacher_entropy, teacher_kl); downstream stages take the teacher. The optimiser, data and
schedule are generic.py's.

Variants as in generic.py (`:sample` trains on the bundled real images, `:tiny` is for tests).
"""
from vismae_jax.train import methods


def get_config(arg=None):
  return methods.pretrain_config("dino", variant=arg)
