"""Entry point: `python -m vismae_jax.main --config=configs/generic.py --workdir=DIR`.

The config file may take an argument (`configs/generic.py:sample`) and any field can be
overridden on the command line (`--config.batch_size=64`). Multi-host runs pass the coordinator
flags below, set JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, or rely on JAX's
cluster detection (SLURM, Open MPI, TPU pods); see the README's launch recipes.
"""
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from vismae_jax import config_lib, evaluate, parallel, transfer
from vismae_jax.convert import torch_import
from vismae_jax.train import loop, pretrain

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and figures go here; "
                               "rerunning with the same workdir resumes.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "",
                                   "host:port of process 0, for multi-host runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index in a multi-host run.")
flags.mark_flags_as_required(["config", "workdir"])


def _quiet_orbax():
  """Orbax logs every save step by step at INFO; keep its warnings and errors only."""
  logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= logging.converter.STANDARD_WARNING
      or "orbax" not in record.pathname)


def main(argv):
  del argv
  _quiet_orbax()
  parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config = _CONFIG.value
  try:
    if config.task == "pretrain":
      loop.train(pretrain.make_task(config, _WORKDIR.value), config, _WORKDIR.value)
    elif config.task == "finetune":
      evaluate.run(config, _WORKDIR.value)
    elif config.task == "export":
      from vismae_jax.convert import torch_export  # torch is an optional extra
      config_lib.validate(config, jax.device_count(), jax.process_count())
      torch_export.main(config, _WORKDIR.value)
    else:
      raise config_lib.ConfigError(f"config.task={config.task!r}: expected one of "
                                   f"{config_lib.TASKS}")
  except (config_lib.ConfigError, transfer.TransferError, FloatingPointError,
          FileNotFoundError, torch_import.CheckpointError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
