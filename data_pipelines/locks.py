"""One writer per folder: a training workdir or an ingest output is held by one process at a time.

A requeued cluster job whose predecessor still runs, or the same command in a second terminal,
would otherwise race the first for the same checkpoints or shards. `hold(folder)` takes a POSIX
record lock (fcntl) on `<folder>/.lock` and writes the holder into it (host, process id, start
time); a second process refuses in one line naming the holder.

What it guarantees: the kernel releases the lock when its process ends, however it ends (exit,
exception, SIGKILL, a crashed node's lease expiring on NFS), so a lock left by a dead run is
taken over by the next one without anyone deleting a file. On one machine this holds on any
filesystem; across machines it holds where the filesystem implements POSIX locks across
clients (local disks, NFSv3 with lockd, NFSv4, Lustre mounted with `flock`, GPFS, BeeGFS).
Where the filesystem refuses locks (some FUSE mounts), the run says so and goes on unlocked
rather than refusing to run. Multi-host runs hold it from process 0 only: the others write
nothing that the lock would protect.
"""
import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket

from absl import logging

LOCK_FILE = ".lock"


class FolderInUse(OSError):
  """Another live process holds the folder; the message names it."""


def _holder(fd: int) -> str:
  """The holder recorded in an open lock file, in words."""
  os.lseek(fd, 0, os.SEEK_SET)
  try:
    held = json.loads(os.read(fd, 4096).decode() or "{}")
  except ValueError:
    held = {}
  if not held:
    return "another process"
  return f"process {held.get('pid')} on host {held.get('host')}, started {held.get('started')}"


@contextlib.contextmanager
def hold(folder: str, what: str = "run", primary: bool = True):
  """Holds `folder` for the duration of the block; FolderInUse when a live process has it.

  `what` names the work in the refusal ("run", "ingest"); `primary`: whether this process is
  the one that holds it (a multi-host run's process 0); the others pass through.
  """
  if not primary:
    yield
    return
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in (errno.EACCES, errno.EAGAIN):
        raise FolderInUse(
            f"{folder} is in use by {_holder(fd)}: a second {what} on it would race the first "
            f"for the same files. Wait for it to end, stop it, or use another folder") from None
      if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        logging.warning("%s: this filesystem refuses file locks (%s); nothing stops a second "
                        "%s on this folder", folder, e.strerror, what)
      else:
        raise
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    # No command line: its paths could name patients, and ingest outputs hold no file names.
    record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": started})
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock; the file stays, unlocked, for the next holder
