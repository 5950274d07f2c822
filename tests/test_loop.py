"""The training loop: learning, outputs, resuming exactly, stopping on a non-finite loss."""
import os
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import ROOT, final_params, losses, main_command, main_env, read_metrics
from helpers import run_main, train_in_process


def test_a_resumed_run_replays_an_uninterrupted_one(sample_dir, tmp_path):
  """Training in this process over its devices: the checkpoint holds the state and the data
  iterator, so a run continued from step 10 ends where the uninterrupted one ended."""
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  last = train_in_process(sample_dir, straight)
  assert last["loss"] < losses(straight)[0]
  for name in ("reconstructions.png", "tensorboard", "checkpoints/10", "checkpoints/20"):
    assert os.path.exists(os.path.join(straight, name)), name
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "20"))  # as if killed after step 10
  resumed_last = train_in_process(sample_dir, resumed)
  assert resumed_last["loss"] == last["loss"]
  # The replayed steps 15 and 20 were logged before the "kill": each step still has one line.
  assert [m["step"] for m in read_metrics(resumed)] == [m["step"] for m in read_metrics(straight)]
  jax.tree.map(np.testing.assert_array_equal, final_params(resumed, 20),
               final_params(straight, 20))


@pytest.mark.slow
def test_loss_decreases_on_real_images_and_outputs_are_written(tmp_path):
  workdir = str(tmp_path)
  proc = run_main(workdir, "--config.total_steps=30")
  loss = losses(workdir)
  assert loss[-1] < 0.5 * loss[0], loss
  for name in ("reconstructions.png", "tensorboard", "checkpoints/30", "checkpoints/20"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(f"{workdir}/tensorboard"))
  assert {"loss", "learning_rate", "images_per_s", "grad_norm"} <= set(read_metrics(workdir)[0])
  assert "Done: 30 steps." in proc.stdout and "reconstructions.png" in proc.stdout


@pytest.mark.slow
def test_sigkill_and_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
  schedule = ["--config.total_steps=40", "--config.checkpoint_every=5", "--config.log_every=5"]
  run_main(str(tmp_path / "straight"), *schedule)

  workdir = str(tmp_path / "killed")
  proc = subprocess.Popen(main_command(workdir, *schedule), cwd=ROOT, env=main_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not os.path.exists(os.path.join(workdir, "checkpoints", "10")):
    assert proc.poll() is None and time.time() < deadline, "run ended before the kill"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "40"))

  # Another model in this workdir fails before any work, naming what differs.
  other = run_main(workdir, *schedule, "--config.model.embed_dim=32", check=False)
  assert other.returncode == 1 and "was made with another config" in other.stderr
  assert "model.embed_dim=32 here, 16 there" in other.stderr
  assert "mismatch" not in other.stderr  # not Orbax's restore error

  resumed = run_main(workdir, *schedule, "--config.keep_checkpoints=5")  # may change
  assert "resumed from step" in resumed.stderr
  steps = [m["step"] for m in read_metrics(workdir)]
  assert steps == list(range(5, 45, 5))  # one line per logged step, however far the kill got
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               final_params(workdir, 40), final_params(str(tmp_path / "straight"), 40))
  assert losses(workdir)[-1] == pytest.approx(losses(tmp_path / "straight")[-1], rel=1e-5)


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path)
  proc = run_main(workdir, "--config.optim.lr=1e30", "--config.checkpoint_every=1",
                  "--config.log_every=1", check=False)
  assert proc.returncode == 1
  assert "loss became" in proc.stderr and "last good checkpoint is step" in proc.stderr
  steps = ocp.CheckpointManager(os.path.join(workdir, "checkpoints")).all_steps()
  assert steps and max(steps) < 20
  params = final_params(workdir, max(steps))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
