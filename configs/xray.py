r"""VIS-MAE-Modality (X-ray): SwinMAE pretraining on XR images only.

  python -m vismae_jax.main --config=configs/xray.py --workdir=DIR \
      --config.data.path=SHARDS_DIR

Records are selected by the modality stored with each one at ingest. Variants as in generic.py.
"""
from vismae_jax import config_lib


def get_config(arg=None):
  return config_lib.pretrain(modalities=("XR",), variant=arg)
