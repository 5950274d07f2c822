r"""VIS-MAE-Modality (PET): SwinMAE pretraining on PT images only.

  python -m vismae_jax.main --config=configs/pet.py --workdir=DIR \
      --config.data.path=SHARDS_DIR

Records are selected by the modality stored with each one at ingest. Variants as in generic.py.
"""
from vismae_jax import config_lib


def get_config(arg=None):
  return config_lib.pretrain(modalities=("PT",), variant=arg)
