"""Faults a cluster throws: a second writer on a workdir, SIGTERM before a requeue,
checkpoints whose files were damaged after they were written, and full disks."""
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from data_pipelines import disk, ingest, locks, sample, signals
from helpers import ROOT, final_params, main_command, main_env, read_metrics, run_main
from helpers import train_in_process
from vismae_jax import checkpoint
from vismae_jax.train import pretrain

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import damage  # noqa: E402  benchmarks/damage.py, which the fault benchmark uses too


def holder(folder):
  """Another process that holds `folder`'s lock until it is killed."""
  proc = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from data_pipelines import locks\n"
       f"with locks.hold({str(folder)!r}):\n  print('held', flush=True); time.sleep(300)"],
      cwd=ROOT, env=main_env(), stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_a_held_folder_refuses_a_second_writer_until_its_holder_is_gone(tmp_path):
  proc = holder(tmp_path)
  try:
    with pytest.raises(locks.FolderInUse, match=rf"^{tmp_path} is in use by process "
                       rf"{proc.pid} on host .*, started .*: a second run on it"):
      with locks.hold(str(tmp_path)):
        pass
    cli = run_main(str(tmp_path), check=False)  # the command line: one line, nothing written
    assert cli.returncode == 1 and "Traceback" not in cli.stderr
    assert cli.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path} is in use by")
    assert not os.path.exists(tmp_path / "checkpoints")
  finally:
    proc.kill()  # the kernel releases a killed holder's lock: the next run takes it over
    proc.wait()
  with locks.hold(str(tmp_path)):
    assert f'"pid": {os.getpid()}' in open(tmp_path / locks.LOCK_FILE).read()


DAMAGE = {
    **damage.KINDS,
    # Killed between the save and its seal: Orbax's own checks catch what they can.
    "a truncated array file, unsealed": lambda step: (
        os.remove(step.parent.parent / "checkpoint_checksums" / f"{step.name}.json"),
        damage.truncate(damage.largest_file(step / "state"))),
}


@pytest.fixture(scope="module")
def straight(sample_dir, tmp_path_factory):
  """A tiny run's workdir (checkpoints 10 and 20, sealed) and its last metrics."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  return workdir, train_in_process(sample_dir, workdir)


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
    kind, straight, sample_dir, tmp_path, caplog):
  workdir, last = straight
  damaged = tmp_path / "damaged"
  shutil.copytree(workdir, damaged)
  assert sorted(os.listdir(damaged / "checkpoint_checksums")) == ["10.json", "20.json"]
  DAMAGE[kind](damaged / "checkpoints" / "20")
  caplog.set_level("INFO")
  resumed = train_in_process(sample_dir, str(damaged))
  warnings = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
  assert len(warnings) == 1 and warnings[0].startswith(f"checkpoint 20 in {damaged}")
  assert "\n" not in warnings[0]
  assert any(f"resumed from step 10 in {damaged}" in r.getMessage() for r in caplog.records)
  assert os.path.isdir(damaged / "damaged_checkpoints" / "20")
  assert resumed["loss"] == last["loss"]  # steps 11 to 20 replayed exactly
  jax.tree.map(np.testing.assert_array_equal, final_params(str(damaged), 20),
               final_params(workdir, 20))


def test_when_no_checkpoint_restores_the_run_stops_in_one_line(straight, sample_dir, tmp_path):
  workdir, _ = straight
  damaged = tmp_path / "damaged"
  shutil.copytree(workdir, damaged)
  DAMAGE["a flipped block in an array file"](damaged / "checkpoints" / "20")
  DAMAGE["a truncated array file"](damaged / "checkpoints" / "10")
  with pytest.raises(checkpoint.CheckpointDamaged, match=r"^no checkpoint in .* restores") as e:
    train_in_process(sample_dir, str(damaged))
  assert "\n" not in str(e.value)
  assert sorted(os.listdir(damaged / "damaged_checkpoints")) == ["10", "20"]


def steps_and_losses(workdir):
  return [(m["step"], m["loss"]) for m in read_metrics(workdir)]


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_the_requeued_run_loses_none(tmp_path):
  """SLURM's preemption: SIGTERM, then the same command again. The stopped run checkpoints the
  step it is at and exits with signals.EXIT_STOPPED; the resumed run's (step, loss) log is the
  uninterrupted run's, step for step."""
  schedule = ["--config.total_steps=40", "--config.checkpoint_every=100", "--config.log_every=1"]
  run_main(str(tmp_path / "straight"), *schedule)
  workdir = str(tmp_path / "preempted")
  proc = subprocess.Popen(main_command(workdir, *schedule), cwd=ROOT, env=main_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while not (os.path.exists(os.path.join(workdir, "metrics.jsonl")) and
             len(read_metrics(workdir)) >= 5):
    assert proc.poll() is None and time.time() < deadline, "run ended before the signal"
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == signals.EXIT_STOPPED, stderr[-2000:]
  last = stderr.strip().splitlines()[-1]
  assert last.startswith("preempted: stopped on SIGTERM after step ") and "Traceback" not in stderr
  stopped = int(last.split("after step ")[1].split()[0])
  assert 5 <= stopped < 40 and os.listdir(os.path.join(workdir, "checkpoints")) == [str(stopped)]
  run_main(workdir, *schedule)
  assert steps_and_losses(workdir) == steps_and_losses(str(tmp_path / "straight"))


def config(output):
  """The bundled sample's ingest into `output`: 4 shards of 64 files at 64 px."""
  return ingest.IngestConfig(input=sample.SAMPLE_DIR, output=str(output), salt="salt", size=64,
                             files_per_shard=64)


def shard_bytes(folder) -> dict:
  """{file: bytes} of an ingest's shards and their indexes."""
  return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))
          if n.endswith((".array_record", ".index.csv"))}


@pytest.fixture
def small_disk(tmp_path):
  """A tmpfs of `megabytes` (mounting needs root: the test skips, saying so, without it) and a
  way to fill it up: a ballast file written until the disk refuses."""
  mount = tmp_path / "disk"
  mount.mkdir()
  made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                        capture_output=True, text=True)
  if made.returncode:
    pytest.skip(f"a small disk needs a tmpfs mount (root): {made.stderr.strip()}")

  yield mount, lambda: damage.fill_disk(str(mount))
  subprocess.run(["umount", "-l", str(mount)], check=False)


def test_training_refuses_before_any_step_when_its_checkpoints_cannot_fit(
    sample_dir, tmp_path, monkeypatch):
  monkeypatch.setattr(disk, "free_bytes", lambda folder: 10_000)
  with pytest.raises(disk.OutOfSpace, match=r"checkpoints: 10.0 KB free, but 4 more "
                     r"checkpoints of .* MB need about .* MB: free space there, or lower "
                     r"config.keep_checkpoints$"):
    train_in_process(sample_dir, str(tmp_path))
  assert not os.listdir(tmp_path / "checkpoints")


def test_a_full_disk_during_training_ends_in_one_line_and_the_rerun_loses_nothing(
    small_disk, sample_dir, straight, monkeypatch):
  mount, fill = small_disk
  workdir = str(mount / "run")
  real_make_task = pretrain.make_task

  def filling_at_20(*args):  # the disk fills up while the run is at step 20
    task = real_make_task(*args)

    def on_checkpoint(params, step):
      out = task.on_checkpoint(params, step)
      if step == 20:
        while not os.path.isdir(os.path.join(workdir, "checkpoints", "10")):
          time.sleep(0.01)  # the step-10 save, asynchronous, has finished: it is complete
        fill()
      return out
    return dataclasses.replace(task, on_checkpoint=on_checkpoint)
  monkeypatch.setattr(pretrain, "make_task", filling_at_20)
  with pytest.raises(disk.OutOfSpace, match=rf"^{mount}/run/checkpoints: out of disk space; "
                     r"kept: checkpoint 10, the last complete one \(.* free now\)\. Free space "
                     r"there and rerun") as e:
    train_in_process(sample_dir, workdir)
  assert "\n" not in str(e.value)
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["10"]  # no half-written step
  monkeypatch.setattr(pretrain, "make_task", real_make_task)
  os.remove(mount / "ballast")
  resumed = train_in_process(sample_dir, workdir)
  assert resumed["loss"] == straight[1]["loss"]


def test_a_full_disk_during_ingest_ends_in_one_line_and_the_rerun_writes_the_same_bytes(
    small_disk, tmp_path, monkeypatch):
  mount, fill = small_disk
  ingest.ingest(config(tmp_path / "straight"))
  real_write_shard = ingest.write_shard

  def fill_before_shard_2(shard, cfg):
    if shard == 2:
      fill()
    return real_write_shard(shard, cfg)
  monkeypatch.setattr(ingest, "write_shard", fill_before_shard_2)
  with pytest.raises(disk.OutOfSpace, match=rf"^{mount}/shards: out of disk space while "
                     r"writing shards; kept: the 2 of 4 shards that finished"):
    ingest.ingest(config(mount / "shards"))
  monkeypatch.setattr(ingest, "write_shard", real_write_shard)
  os.remove(mount / "ballast")
  ingest.ingest(config(mount / "shards"))
  assert shard_bytes(mount / "shards") == shard_bytes(tmp_path / "straight")
  assert len(shard_bytes(tmp_path / "straight")) == 8


def test_sigterm_during_ingest_stops_after_the_shard_in_flight_and_the_rerun_finishes(
    tmp_path, monkeypatch):
  ingest.ingest(config(tmp_path / "straight"))
  real_write_shard = ingest.write_shard

  def signal_after_shard_1(shard, cfg):
    summary = real_write_shard(shard, cfg)
    if shard == 1:
      os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next shard starts
    return summary
  monkeypatch.setattr(ingest, "write_shard", signal_after_shard_1)
  with pytest.raises(signals.Stopped, match=rf"^stopped on SIGTERM with 2 of 4 shards finished "
                     rf"in {tmp_path}/stopped; the same command resumes$"):
    ingest.ingest(config(tmp_path / "stopped"))
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again
  monkeypatch.setattr(ingest, "write_shard", real_write_shard)
  ingest.ingest(config(tmp_path / "stopped"))
  assert shard_bytes(tmp_path / "stopped") == shard_bytes(tmp_path / "straight")
