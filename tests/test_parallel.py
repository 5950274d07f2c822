"""The mesh and its rules: the FSDP rule; 1 vs 8 devices and 1 vs 2 processes through the CLI."""
import os
import socket
import subprocess

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from helpers import ROOT, main_command, main_env, read_metrics, run_main
from vismae_jax import parallel


def losses(workdir):
  return np.array([m["loss"] for m in read_metrics(workdir)])


def test_fsdp_rule_shards_the_largest_divisible_dimension_of_large_tensors():
  assert parallel.fsdp_spec((96, 384), 8) == P(None, "fsdp")
  assert parallel.fsdp_spec((169, 3), 8) == P()  # nothing divisible: replicate
  assert parallel.fsdp_spec((4, 4, 3, 96), 8) == P(None, None, None, "fsdp")
  assert parallel.fsdp_spec((96, 384), 1) == P()
  assert parallel.fsdp_spec((), 8) == P()
  mib = 2 ** 20
  assert parallel.fsdp_spec((512, 512), 8, min_bytes=mib) == P(None, "fsdp")  # exactly 1 MiB
  assert parallel.fsdp_spec((512, 511), 8, min_bytes=mib) == P()  # under it: replicated
  assert parallel.fsdp_spec((512, 512), 8, min_bytes=mib, itemsize=2) == P()


def test_mesh_sizes_resolve_the_free_axis():
  assert parallel.mesh_shape(-1, 2, 8) == (4, 2)
  assert parallel.mesh_shape(2, -1, 8) == (2, 4)


@pytest.mark.slow
def test_eight_devices_data_parallel_and_fsdp_match_one_device(tmp_path):
  steps = ["--config.total_steps=3", "--config.log_every=1"]
  run_main(str(tmp_path / "one"), *steps, devices=1)
  run_main(str(tmp_path / "dp"), *steps, "--config.mesh.data=8", devices=8)
  fsdp = run_main(str(tmp_path / "fsdp"), *steps, "--config.mesh.data=1",
                  "--config.mesh.fsdp=8", "--config.mesh.fsdp_min_mb=0", devices=8, cache=False)
  # Activations stay batch-sharded (the models' named axes under parallel.LOGICAL_RULES): XLA
  # gathers no whole tensor to reshape it (11 such gathers in this model without them).
  assert "Involuntary full rematerialization" not in fsdp.stderr
  reference = losses(tmp_path / "one")
  np.testing.assert_allclose(losses(tmp_path / "dp"), reference, rtol=2e-5)
  np.testing.assert_allclose(losses(tmp_path / "fsdp"), reference, rtol=2e-5)


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
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
                   "--config.mesh.fsdp_min_mb=0", f"--coordinator_address=localhost:{port}",
                   "--num_processes=2", f"--process_id={i}"),
      cwd=ROOT, env=main_env(devices=2), stdout=logs[i], stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  for p, log in zip(procs, logs):
    p.wait(timeout=600)
    log.seek(0)
    assert p.returncode == 0, log.read()[-3000:]
  np.testing.assert_allclose(losses(workdir), losses(tmp_path / "one"), rtol=2e-5)
  assert os.path.exists(os.path.join(workdir, "checkpoints", "3", "state"))
