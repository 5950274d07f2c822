"""What a workdir may resume under: a run or a protocol continues only under the config that
made it, except for the settings that say where and how it executes.

Why: a workdir is resumed by rerunning its command; under a changed recipe it would silently
mix two runs, or fail deep inside the checkpoint restore.
"""
import json
import os

import flax

from vismae_jax import config_lib
from vismae_jax.train import methods

# Settings that say where and how a run executes, never what it computes: a workdir resumes
# under other values of these.
EXECUTION = ("mesh", "model.remat", "model.remat_policy", "model.attention", "data.workers",
             "log_every", "keep_checkpoints", "figure_images", "eval_batch_size", "predict")
# One run may also continue with another schedule length or validation interval (it goes on
# from its checkpoint), and does not depend on which other runs its protocol does.
RUN_RESUMABLE = EXECUTION + ("checkpoint_every", "total_steps", "num_epochs", "min_steps",
                             "protocol")
# A protocol reuses finished runs, so only the choice of runs may change.
PROTOCOL_RESUMABLE = EXECUTION + ("protocol.max_folds", "protocol.fractions",
                                  "protocol.compare_random", "protocol.repeats",
                                  "protocol.shots", "protocol.shot_draws")



def check_unchanged(config, saved: dict, may_change: tuple, where: str) -> None:
  """Raises ConfigError naming every setting of `config` that differs from `saved` (the config,
  as a dict, that `where` was made with), except those under the `may_change` prefixes.

  Why: a workdir is resumed by rerunning its command; under a changed recipe it would silently
  mix two runs, or fail deep inside the checkpoint restore.
  """
  def flat(c):
    return {k: v for k, v in flax.traverse_util.flatten_dict(c, sep=".").items()
            if not any(k == m or k.startswith(m + ".") for m in may_change)}
  # Settings added since `saved` was written count as their defaults, which keep the old
  # behaviour; settings it has that the schema no longer holds (another method's, which
  # pretraining configs carried until each method held its own) decide nothing any more.
  now = flat(json.loads(config.to_json()))
  before = {**flat(json.loads(defaults_of(config).to_json())),
            **flat(json.loads(json.dumps(saved)))}
  differ = sorted(k for k in now if not same_setting(now.get(k), before.get(k)))
  if differ:
    raise config_lib.ConfigError(
        f"{where} was made with another config: "
        + "; ".join(f"{k}={now.get(k)!r} here, {before.get(k)!r} there" for k in differ)
        + ". Use a new workdir, or that config.")


def same_setting(here, there) -> bool:
  """Equal values, or two spellings of one existing file or folder (through a symbolic link
  or another mount point): data reached by another path is the same data."""
  if here == there:
    return True
  if not (isinstance(here, str) and isinstance(there, str) and here and there):
    return False
  try:
    return os.path.samefile(here, there)
  except OSError:  # either is missing: only equal spellings are the same then
    return False


def defaults_of(config):
  """The defaults of `config`'s kind of run: fine-tuning (of its kind) or pretraining, of its
  encoder and dimensions."""
  ndim = len(config_lib.spatial_shape(config))
  if "finetune" in config:
    return config_lib.finetune_base(config.model.arch, config.finetune.kind, ndim)
  options = {"ndim": ndim} if config.model.arch == "vit" else {}
  return methods.pretrain_config(config.method, **options).unlock()
