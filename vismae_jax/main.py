"""Entry point: `python -m vismae_jax.main --config=configs/generic.py --workdir=DIR`.

The config file may take an argument (`configs/generic.py:sample`) and any field can be
overridden on the command line (`--config.batch_size=64`). `config.task` chooses what runs:
pretrain, finetune (a protocol of fine-tuning runs), predict (a fine-tuned model on new
images), evaluate (fine-tuned models on a labelled set) or export (to PyTorch). Multi-host runs
pass the coordinator flags below, set JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID, or rely on JAX's cluster detection (SLURM, Open MPI, TPU pods); see
docs/multihost.md.
"""
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from data_pipelines import DatasetError, console, disk, locks, signals
from vismae_jax import config_checks, config_lib, evaluate, parallel, predict, protocol
from vismae_jax.convert import torch_import, transfer
from vismae_jax.train import loop, pretrain

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and figures go here; "
                               "rerunning with the same workdir resumes.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "",
                                   "host:port of process 0, for multi-host runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index in a multi-host run.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Also show the INFO lines of Orbax and of JAX's "
                             "backend discovery.")
flags.mark_flags_as_required(["config", "workdir"])

# What a user can get wrong (settings, weights, data, paths): one line, no traceback.
USER_ERRORS = (config_lib.ConfigError, transfer.TransferError, FloatingPointError,
               torch_import.CheckpointError, DatasetError, OSError)


def _fail(message: str, at_once: bool = False):
  """Ends the run in one line. at_once: without the interpreter's teardown (atexit flushes,
  unfinished background saves), whose own errors would follow the line with tracebacks."""
  if flags.FLAGS.is_parsed():  # before that, absl's logging would add two lines of its own
    logging.error("%s", message)
  print(f"error: {message}", file=sys.stderr, flush=True)
  if at_once:
    os._exit(1)
  sys.exit(1)


def _config_file_error(error: Exception | None):
  """The ConfigError a config file raised while loading (an unknown variant), which absl would
  print inside a traceback; None for other flag errors."""
  found = None
  while error is not None:
    if isinstance(error, config_lib.ConfigError):
      found = error  # ml_collections wraps it in another of the same type: keep the innermost
    error = error.__context__
  return found


def parse_flags(argv):
  """absl's parser; a config file that refuses its argument (`configs/generic.py:bogus`) and a
  --config override that the config cannot take (a key it does not have, a value of another
  type) are reported in one line, with ml_collections' own "Did you mean" hint, not as a
  traceback."""
  try:
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      if (config_error := _config_file_error(e)) is not None:
        _fail(f"{_CONFIG.name}: {config_error}")
      return app.parse_flags_with_usage(argv)  # absl's own report of any other flag error
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    while e.args and isinstance(e.args[0], Exception):  # ml_collections nests its KeyError
      e = e.args[0]
    text = str(e.args[0]) if e.args else type(e).__name__
    if isinstance(e, KeyError):
      key, *hint = text.splitlines()
      text = " ".join([f"the config has no setting {key.strip(chr(39))!r}.", *hint])
    _fail(f"a --config override does not fit the config: {text}")


def main(argv):
  del argv
  console.setup(_VERBOSE.value)
  parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config, workdir = _CONFIG.value, _WORKDIR.value
  try:
    config_checks.validate(config, jax.device_count(), jax.process_count())
    if config.task == "export":  # torch is an optional extra: imported here
      if config.model.arch == "swin":
        from vismae_jax.convert import torch_export
        torch_export.main(config, workdir)
      else:
        from vismae_jax.convert import monai
        monai.main(config, workdir)
      return
    mesh = parallel.make_mesh(config.mesh)  # the run's one mesh
    if config.task == "pretrain":
      with locks.hold(workdir, "run", primary=jax.process_index() == 0):  # one writer
        loop.train(pretrain.make_task(config, workdir, mesh), config, workdir, mesh)
    else:
      {"finetune": protocol.run, "predict": predict.run, "evaluate": evaluate.run}[config.task](
          config, workdir, mesh)
  except disk.OutOfSpace as e:
    _fail(str(e), at_once=True)  # the teardown's flushes would fail on the full disk, loudly
  except USER_ERRORS as e:
    _fail(str(e))
  except signals.Stopped as e:  # a distinct status that cluster scripts requeue on
    if jax.process_index() == 0:
      print(f"preempted: {e}", file=sys.stderr, flush=True)
    sys.exit(signals.EXIT_STOPPED)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
