"""The training loop end to end through the real CLI: learning, sharding, hosts, resume."""
import os
import signal
import socket
import subprocess
import time

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec as P

from conftest import ROOT, main_command, main_env, read_metrics, run_main
from vismae_jax import parallel


def losses(workdir):
  return np.array([m["loss"] for m in read_metrics(workdir)])


def final_params(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(path)["params"]


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


def test_eight_devices_data_parallel_and_fsdp_match_one_device(tmp_path):
  steps = ["--config.total_steps=3", "--config.log_every=1"]
  run_main(str(tmp_path / "one"), *steps, devices=1)
  run_main(str(tmp_path / "dp"), *steps, "--config.mesh.data=8", devices=8)
  fsdp = run_main(str(tmp_path / "fsdp"), *steps, "--config.mesh.data=1",
                  "--config.mesh.fsdp=8", devices=8, cache=False)
  # Activations stay batch-sharded (parallel.constrain_batch): XLA gathers no whole tensor to
  # reshape it (11 such gathers in this model without the constraints).
  assert "Involuntary full rematerialization" not in fsdp.stderr
  reference = losses(tmp_path / "one")
  np.testing.assert_allclose(losses(tmp_path / "dp"), reference, rtol=2e-5)
  np.testing.assert_allclose(losses(tmp_path / "fsdp"), reference, rtol=2e-5)


def test_fsdp_rule_shards_the_largest_divisible_dimension():
  assert parallel.fsdp_spec((96, 384), 8) == P(None, "fsdp")
  assert parallel.fsdp_spec((169, 3), 8) == P()  # nothing divisible: replicate
  assert parallel.fsdp_spec((4, 4, 3, 96), 8) == P(None, None, None, "fsdp")
  assert parallel.fsdp_spec((96, 384), 1) == P()
  assert parallel.fsdp_spec((), 8) == P()


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  """2 processes x 2 devices on a data=2 x fsdp=2 mesh: batches and parameters both span hosts."""
  steps = ["--config.total_steps=3", "--config.log_every=1"]
  run_main(str(tmp_path / "one"), *steps)
  workdir, port = str(tmp_path / "two"), free_port()
  # Output to files, not pipes: a process blocked on a full pipe that nobody reads yet would
  # stall the other at its first collective.
  logs = [open(tmp_path / f"process_{i}.log", "w+") for i in range(2)]
  procs = [subprocess.Popen(
      main_command(workdir, *steps, "--config.mesh.data=2", "--config.mesh.fsdp=2",
                   f"--coordinator_address=localhost:{port}", "--num_processes=2",
                   f"--process_id={i}"),
      cwd=ROOT, env=main_env(devices=2), stdout=logs[i], stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  for p, log in zip(procs, logs):
    p.wait(timeout=600)
    log.seek(0)
    assert p.returncode == 0, log.read()[-3000:]
  np.testing.assert_allclose(losses(workdir), losses(tmp_path / "one"), rtol=2e-5)
  assert os.path.exists(os.path.join(workdir, "checkpoints", "3", "state"))


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
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               final_params(workdir, 40), final_params(str(tmp_path / "straight"), 40))
  assert losses(workdir)[-1] == pytest.approx(losses(tmp_path / "straight")[-1], rel=1e-5)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path)
  proc = run_main(workdir, "--config.optim.lr=1e30", "--config.checkpoint_every=1",
                  "--config.log_every=1", check=False)
  assert proc.returncode == 1
  assert "loss became" in proc.stderr and "last good checkpoint is step" in proc.stderr
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert steps and steps[-1] < 20
  params = final_params(workdir, steps[-1])
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_bfloat16_compute_and_remat_agree_with_float32():
  import configs.generic as generic
  from data_pipelines import records, sample, pretrain_input
  from vismae_jax.train import pretrain

  config = generic.get_config("tiny")
  source = pretrain_input.record_source(sample.write_sample_shards(
      os.path.join(os.environ.get("TMPDIR", "/tmp"), "vismae_jax_test_sample")))
  images = np.stack([records.decode_image(source[i]) for i in range(0, 256, 32)])
  params = pretrain.init_params(pretrain.build_model(config), config, jax.random.PRNGKey(0))

  def loss_and_grads(**changes):
    c = generic.get_config("tiny")
    c.update(changes.pop("top", {}))
    c.model.update(changes)
    loss_fn = pretrain.make_loss_fn(pretrain.build_model(c), c)
    return jax.jit(jax.value_and_grad(loss_fn))(params, images, jax.random.PRNGKey(1))

  loss, grads = loss_and_grads()
  remat_loss, remat_grads = loss_and_grads(remat=True)
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               remat_grads, grads)
  bf16_loss, bf16_grads = loss_and_grads(top={"dtype": "bfloat16"})
  assert all(g.dtype == np.float32 for g in jax.tree.leaves(bf16_grads))  # fp32 parameters
  np.testing.assert_allclose(bf16_loss, loss, rtol=2e-2)
  cosine = optax.tree_utils.tree_vdot(bf16_grads, grads) / (
      optax.tree.norm(bf16_grads) * optax.tree.norm(grads))
  assert cosine > 0.99, cosine


def test_schedule_as_data_matches_optax_adamw_with_its_schedule():
  """The step's unit-rate AdamW times optim.learning_rate is optax.adamw with the schedule."""
  import configs.generic as generic
  from vismae_jax.train import optim

  config = generic.get_config("tiny")
  config.optim.update(lr=3e-3, warmup_epochs=2.0)
  schedule = optim.schedule(config, steps_per_epoch=5.0, total_steps=40)
  reference = optax.warmup_cosine_decay_schedule(0.0, 3e-3, 10, 40, end_value=0.0)
  steps = np.arange(45)
  np.testing.assert_allclose(jax.vmap(lambda s: optim.learning_rate(s, schedule))(steps),
                             jax.vmap(reference)(steps), rtol=1e-5, atol=1e-9)

  params = {"w": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)}
  tx, ref_tx = optim.make_optimizer(config), optax.adamw(reference, b1=0.9, b2=0.95,
                                                         weight_decay=0.05)
  state, ref_state = tx.init(params), ref_tx.init(params)
  for step in range(12):
    grads = {"w": np.cos(params["w"] * (step + 1))}
    updates, state = tx.update(grads, state, params)
    ref_updates, ref_state = ref_tx.update(grads, ref_state, params)
    np.testing.assert_allclose(optax.tree.scale(optim.learning_rate(step, schedule), updates)["w"],
                               ref_updates["w"], rtol=1e-5, atol=1e-9)
