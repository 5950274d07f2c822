"""Shared helpers: run the real CLI in a subprocess (fresh JAX, chosen device count)."""
import json
import os
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runs of the same program in different tests share compiled executables.
CACHE = os.path.join(tempfile.gettempdir(), "vismae_jax_test_compile_cache")


def main_command(workdir, *overrides, config="configs/generic.py:tiny"):
  return [sys.executable, "-m", "vismae_jax.main", f"--config={config}", f"--workdir={workdir}",
          *overrides]


def main_env(devices: int = 1):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=CACHE,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env.pop("JAX_COORDINATOR_ADDRESS", None)
  return env


def run_main(workdir, *overrides, devices=1, config="configs/generic.py:tiny", check=True,
             timeout=600, cache=True):
  """Runs `python -m vismae_jax.main` to completion; returns the CompletedProcess.

  cache=False compiles everything afresh, so that the compiler's warnings are in its stderr.
  """
  env = dict(main_env(devices), **({} if cache else {"JAX_ENABLE_COMPILATION_CACHE": "false"}))
  proc = subprocess.run(main_command(workdir, *overrides, config=config), cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"main failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
  """The bundled sample as shards, written once per test session."""
  from data_pipelines import sample
  return sample.write_sample_shards(str(tmp_path_factory.mktemp("sample_shards")))


SHARED_DATASETS = os.path.join(os.path.dirname(ROOT), "shared", "datasets")


def shared_dataset(name: str) -> str:
  """A real dataset from ../shared/datasets, or a skip saying why (a user's clone has none)."""
  path = os.path.join(SHARED_DATASETS, name)
  if not os.path.exists(os.path.join(path, "labels.csv")):
    pytest.skip(f"{path} is absent: the real {name} images live beside the project checkout")
  return path
