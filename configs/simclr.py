r"""python -m vismae_jax.main --config=configs/simclr.py --workdir=DIR --config.data.path=SHARDS

SimCLR pretraining of the Swin encoder on every modality in the shards: two augmented views of
each image (crop, flip, brightness and contrast, blur), a projection head, and the NT-Xent loss
with the whole global batch as negatives (models/simclr.py; settings in config.simclr and
config.views). The optimiser is generic.py's AdamW, not the paper's LARS: LARS serves ResNets
at large batches, while transformers train contrastively with AdamW (as MoCo v3 does). Data and
schedule too.

Variants as in generic.py (`:sample` trains on the bundled real images, `:tiny` is for tests).
"""
from vismae_jax.train import methods


def get_config(arg=None):
  return methods.pretrain_config("simclr", variant=arg)
