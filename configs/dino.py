r"""python -m vismae_jax.main --config=configs/dino.py --workdir=DIR --config.data.path=SHARDS

DINO self-distillation with iBOT's masked-token objective, pretraining the Swin encoder on every
modality in the shards: two global views (32-100% of the area) and six 96 px local views of each
image; an EMA teacher (momentum 0.996 -> 1) on the global views, centred and sharpened
(temperature 0.04); the student (0.1) matches it on the pooled last stage across views and, with
30% of the 32 px units of half its global views masked, at the masked tokens
(models/dino.py, train/distillation.py; settings in config.dino and config.views). The log
checks for collapse (teacher_entropy, teacher_kl); downstream stages take the teacher. The
optimiser, data and schedule are generic.py's.

Variants as in generic.py (`:sample` trains on the bundled real images, `:tiny` is for tests).
"""
from vismae_jax.train import methods


def get_config(arg=None):
  return methods.pretrain_config("dino", variant=arg)
