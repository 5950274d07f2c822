"""Orbax keeps what a run needs: the newest checkpoints to resume, the best one to use."""
import os

import grain
import ml_collections
import numpy as np
import pytest

from vismae_jax import checkpoint


def save_run(workdir, scores, keep=1):
  """Steps 1.. with val_dice `scores`, each holding params {"w": step}."""
  mngr = checkpoint.manager(workdir, keep, best_metric="val_dice")
  iterator = iter(grain.MapDataset.range(100).to_iter_dataset())
  config = ml_collections.ConfigDict({"seed": 0})
  for step, score in enumerate(scores, start=1):
    state = {"params": {"w": np.full(3, float(step), np.float32)}}
    checkpoint.save(mngr, step, state, iterator, config, {"val_dice": score})
  mngr.wait_until_finished()
  return mngr


def test_the_best_and_the_newest_are_kept_across_restarts(tmp_path):
  """Today's guarantees of the best checkpoint, kept by Orbax's own policies: a later, worse
  step does not replace it; the newest stays for resuming; an undefined score (NaN) never
  beats a defined one; a manager opened afresh (a resumed run) sees the same best."""
  workdir = str(tmp_path)
  mngr = save_run(workdir, [0.5, 0.7, float("nan"), 0.6])
  assert mngr.all_steps() == [2, 4] and mngr.best_step() == 2
  assert mngr.metrics(2)["val_dice"] == pytest.approx(0.7)
  directory, step = checkpoint.chosen_step(workdir, "val_dice")
  assert step == 2 and directory == os.path.join(workdir, "checkpoints")
  assert checkpoint.chosen_step(workdir)[1] == 4  # without a metric: the newest
  np.testing.assert_array_equal(checkpoint.load_params(workdir, "val_dice")["w"], 2.0)
  np.testing.assert_array_equal(checkpoint.load_params(workdir)["w"], 4.0)
  np.testing.assert_array_equal(
      checkpoint.load_params(os.path.join(workdir, "checkpoints", "4"))["w"], 4.0)
  resumed = checkpoint.manager(workdir, 1, best_metric="val_dice")
  assert resumed.best_step() == 2 and resumed.latest_step() == 4
  checkpoint.keep_best_only(workdir, "val_dice")
  assert checkpoint.manager(workdir, 1, "val_dice").all_steps() == [2]


def test_a_run_whose_only_score_is_undefined_still_keeps_a_best(tmp_path):
  mngr = save_run(str(tmp_path), [float("nan")])
  assert mngr.best_step() == 1


def test_a_folder_without_checkpoints_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="no Orbax checkpoint here"):
    checkpoint.load_params(str(tmp_path))
