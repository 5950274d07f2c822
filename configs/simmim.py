r"""python -m vismae_jax.main --config=configs/simmim.py --workdir=DIR --config.data.path=SHARDS

SimMIM pretraining of the Swin encoder on every modality in the shards: mask units hidden behind
a mask token, one linear layer predicting the pixels, L1 loss on the masked pixels
(models/simmim.py; SimMIM's masking in config.mae, train/masked_image.py). The rest of the
recipe, the data and the schedule are generic.py's.

Variants as in generic.py (`:sample` trains on the bundled real images, `:tiny` is for tests).
"""
from vismae_jax.train import methods


def get_config(arg=None):
  return methods.pretrain_config("simmim", variant=arg)
