"""Disk space: checked before work starts, and said in one line when a write still runs out.

Shards and checkpoints are written to temporary names and renamed once complete, so what a
full disk interrupts is never mistaken for finished work: the same command, rerun with room,
goes on from the last finished shard or checkpoint. What these helpers add is the message: the
folder, the space needed and what is kept, instead of hundreds of lines of worker tracebacks.
"""
import errno
import os
import shutil

from absl import logging

SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How libraries below us word it: the OS (strerror), TensorStore and Orbax (absl status).
SPACE_WORDS = ("No space left on device", "Disk quota exceeded", "RESOURCE_EXHAUSTED")


class OutOfSpace(OSError):
  """A folder lacks the space its work needs; the message names it, the need and what is
  kept."""


def human(nbytes: float) -> str:
  for unit in ("B", "KB", "MB", "GB", "TB"):
    if abs(nbytes) < 1000 or unit == "TB":
      return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
    nbytes /= 1000


def is_out_of_space_text(text: str) -> bool:
  return any(words in text for words in SPACE_WORDS)


def is_out_of_space(error: BaseException | None) -> bool:
  """Whether `error`, or any exception it was raised from, is a full disk or quota."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if getattr(error, "errno", None) in SPACE_ERRNOS or is_out_of_space_text(str(error)):
      return True
    error = error.__cause__ or error.__context__
  return False


def free_bytes(folder: str) -> int:
  """Free space where `folder` is (or would be created)."""
  path = os.path.abspath(folder)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  return shutil.disk_usage(path).free


def check_free(folder: str, needed: int, what: str, fix: str) -> None:
  """Refuses in one line when `folder`'s disk has less than `needed` bytes free for `what`;
  warns when it has less than twice that (other writers share the disk)."""
  free = free_bytes(folder)
  if free < needed:
    raise OutOfSpace(f"{folder}: {human(free)} free, but {what} need about {human(needed)}: "
                     f"free space there, or {fix}")
  if free < 2 * needed:
    logging.warning("%s: %s free, %s need about %s: close to full", folder, human(free), what,
                    human(needed))
