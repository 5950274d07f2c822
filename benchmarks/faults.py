r"""Faults a cluster throws, tried as a user meets them: how each run ends and what it loses.

  python benchmarks/faults.py --json=/tmp/faults.json

Runs the tiny pretraining (configs/generic.py:tiny, 40 steps, a checkpoint every 10) and the
bundled sample's ingest through their command lines in a scratch folder. For each fault it
records how the run ended (exit status, the last line it printed, whether a traceback
showed), then reruns the same command and counts the steps whose (step, loss) differs from an
uninterrupted run's (lost), the steps computed twice (redone: those after the checkpoint the
rerun resumed from), and the finished files gone (checkpoints, shards). Full disks need a
tmpfs (mounting one needs root); without it those rows say so.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from absl import app, flags

import damage  # benchmarks/damage.py
import output  # benchmarks/output.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_string("json", "", "write the results here")
flags.DEFINE_string("scratch", "", "working folder (default: a temporary one)")

SCHEDULE = ["--config.total_steps=40", "--config.checkpoint_every=10", "--config.log_every=1"]
ENV = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")


def command(workdir, *extra):
  return [sys.executable, "-m", "vismae_jax.main", "--config=configs/generic.py:tiny",
          f"--workdir={workdir}", *SCHEDULE, *extra]


def run(workdir, *extra) -> subprocess.CompletedProcess:
  return subprocess.run(command(workdir, *extra), cwd=ROOT, env=ENV, capture_output=True,
                        text=True, timeout=900)


def start(workdir) -> subprocess.Popen:
  return subprocess.Popen(command(workdir), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


def log(workdir) -> list:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [(m["step"], m["loss"]) for m in map(json.loads, f)]


def wait_for(condition, proc=None, timeout=600):
  deadline = time.time() + timeout
  while not condition():
    if (proc is not None and proc.poll() is not None) or time.time() > deadline:
      raise RuntimeError("the run ended before the fault")
    time.sleep(0.05)


def ending(returncode: int, stderr: str) -> dict:
  lines = [l for l in stderr.strip().splitlines() if l.strip()]
  return {"status": returncode, "last_line": lines[-1][:300] if lines else "",
          "traceback": "Traceback" in stderr}


def checkpoints(workdir) -> set:
  """The finished checkpoints' steps (Orbax renames a step's folder to its number when done)."""
  folder = os.path.join(workdir, "checkpoints")
  return {n for n in os.listdir(folder) if n.isdigit()} if os.path.isdir(folder) else set()


def resumed_step(stderr: str) -> int:
  """The step the rerun resumed from (0: it started afresh)."""
  for line in stderr.splitlines():
    if "resumed from step" in line:
      return int(line.split("resumed from step ")[1].split()[0])
  return 0


def rerun_after(workdir: str, straight: list, end: dict, lost: set) -> dict:
  """Reruns the same command after a fault; the row: how the faulty run ended, the steps whose
  (step, loss) differ from the uninterrupted run's, those computed twice, and the finished
  checkpoints the fault took (`lost`)."""
  reached = len(log(workdir))
  rerun = run(workdir)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  got = log(workdir)
  return {**end, "steps_lost": sum(a != b for a, b in zip(got, straight)) + len(straight) - len(
              got), "steps_redone": reached - resumed_step(rerun.stderr),
          "files_lost": len(lost)}


def second_run(scratch, straight):
  workdir = os.path.join(scratch, "held")
  first = start(workdir)
  wait_for(lambda: len(log(workdir)) >= 1, first)
  second = run(workdir)
  first.communicate(timeout=900)
  got = log(workdir)
  return {**ending(second.returncode, second.stderr),
          "steps_lost": sum(a != b for a, b in zip(got, straight)) + len(straight) - len(got),
          "steps_redone": 0, "files_lost": 0}


def signalled(scratch, straight, sig):
  workdir = os.path.join(scratch, f"signal_{sig.name}")
  proc = start(workdir)
  wait_for(lambda: len(log(workdir)) >= 15, proc)
  before = checkpoints(workdir)
  proc.send_signal(sig)
  _, stderr = proc.communicate(timeout=900)
  return rerun_after(workdir, straight, ending(proc.returncode, stderr),
                     before - checkpoints(workdir))


def damaged(scratch, straight, kind):
  """The finished run's newest checkpoint damaged, then the same command: it falls back."""
  workdir = os.path.join(scratch, "damaged_" + "_".join(kind.split()[1:3]))
  shutil.copytree(os.path.join(scratch, "straight"), workdir)
  damage.KINDS[kind](os.path.join(workdir, "checkpoints", "40"))
  row = rerun_after(workdir, straight, {}, set())
  aside = os.path.isdir(os.path.join(workdir, "damaged_checkpoints", "40"))
  return {"status": 0, "last_line": "checkpoint 40 set aside, resumed from 30" if aside else
          "not detected", "traceback": False, **row, "files_lost": int(not aside)}


def full_disk(scratch, straight):
  mount = os.path.join(scratch, "disk")
  os.makedirs(mount)
  made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", mount],
                        capture_output=True, text=True)
  if made.returncode:
    return {"last_line": f"not run: no tmpfs ({made.stderr.strip()})"}
  try:
    workdir = os.path.join(mount, "run")
    proc = start(workdir)
    wait_for(lambda: "10" in checkpoints(workdir) and len(log(workdir)) >= 12, proc)
    before = checkpoints(workdir)
    ballast = damage.fill_disk(mount)  # the disk fills up while the run is past step 12
    _, stderr = proc.communicate(timeout=900)
    os.remove(ballast)
    return rerun_after(workdir, straight, ending(proc.returncode, stderr),
                       before - checkpoints(workdir))
  finally:
    subprocess.run(["umount", "-l", mount], check=False)


def main(argv):
  del argv
  args = flags.FLAGS
  scratch = args.scratch or tempfile.mkdtemp(prefix="vismae_faults_")
  straight_dir = os.path.join(scratch, "straight")
  done = run(straight_dir)
  assert done.returncode == 0, done.stderr[-2000:]
  straight = log(straight_dir)
  rows = {"a second run on a held workdir": second_run(scratch, straight),
          "SIGTERM (preemption), then the same command":
              signalled(scratch, straight, signal.SIGTERM),
          "SIGKILL, then the same command": signalled(scratch, straight, signal.SIGKILL),
          **{f"damaged checkpoint: {kind}": damaged(scratch, straight, kind)
             for kind in damage.KINDS},
          "a full disk during training, then room and the same command":
              full_disk(scratch, straight)}
  lines = ["| fault | ends in | status | traceback | steps lost | steps redone | files lost |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  lines += [f"| {name} | {r['last_line'][:120]} | {r.get('status')} | {r.get('traceback')} | "
            f"{r.get('steps_lost')} | {r.get('steps_redone')} | {r.get('files_lost')} |"
            for name, r in rows.items()]
  print("\n".join(lines), file=sys.stderr)
  lost = sum(r.get("steps_lost") or 0 for r in rows.values())
  tracebacks = sum(bool(r.get("traceback")) for r in rows.values())
  output.write(f"faults: {len(rows)} faults, {lost} steps lost, {tracebacks} tracebacks "
               f"(table on stderr)", {"faults": rows, "table": lines}, args.json)


if __name__ == "__main__":
  app.run(main)
