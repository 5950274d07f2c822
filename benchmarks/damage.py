"""How a cluster's disks fail a run, for benchmarks/faults.py and tests/test_faults.py: a
finished checkpoint damaged (each kind takes a step folder, checkpoints/<step>), a disk that
fills up."""
import os


def fill_disk(folder: str) -> str:
  """Writes a ballast file into `folder` until its disk refuses; returns its path."""
  path = os.path.join(folder, "ballast")
  with open(path, "wb") as f:
    try:
      while True:
        f.write(b"\0" * (1 << 20))
        f.flush()
    except OSError:
      pass
  return path


def largest_file(folder: str) -> str:
  files = [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names]
  return max(files, key=os.path.getsize)


def flip_block(path: str):
  """64 bytes from the middle of the file inverted: what a bad sector or a bit rot returns."""
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    block = f.read(64)
    f.seek(-len(block), os.SEEK_CUR)
    f.write(bytes(b ^ 0xFF for b in block))


def truncate(path: str):
  """The second half of the file gone: a copy or a write cut short."""
  os.truncate(path, os.path.getsize(path) // 2)


KINDS = {
    "a flipped block in an array file":
        lambda step: flip_block(largest_file(os.path.join(step, "state"))),
    "a truncated array file": lambda step: truncate(largest_file(os.path.join(step, "state"))),
    "broken metadata":
        lambda step: open(os.path.join(step, "_CHECKPOINT_METADATA"), "w").write("{not json"),
}
