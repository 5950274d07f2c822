"""What the command lines print: log lines that keep clear of progress bars, and no chatter
from the libraries underneath unless asked for.

absl writes log lines to stderr, where tqdm draws its bars; written through tqdm, a log line
clears the bar, prints, and the bar is redrawn below it. Orbax, Apache Beam and JAX's backend
discovery log routine steps (every checkpoint's stages, Beam's worker set-up and its optional
cloud clients, a failed probe for a TPU the machine does not have); what matters still shows.
"""
import io
import logging as std_logging
import sys

import tqdm
from absl import logging

from data_pipelines import disk

# Where a log record comes from -> the level it needs to be shown without --verbose. Beam warns
# about optional Google Cloud clients that a local ingest never uses.
CHATTY = {"orbax": std_logging.WARNING, "apache_beam": std_logging.ERROR,
          "jax/_src/xla_bridge": std_logging.WARNING}


class _AboveProgressBars(io.TextIOBase):
  """A stream for the absl handler: writes through tqdm so that bars are redrawn below."""

  def write(self, text: str) -> int:
    tqdm.tqdm.write(text, file=sys.stderr, end="")
    return len(text)

  def flush(self):
    sys.stderr.flush()


def _said_by_us(record) -> bool:
  """Orbax's background threads log a full disk with their traceback before the run says it
  in one line (disk.OutOfSpace): theirs is left out unless --verbose."""
  return "orbax" in record.pathname and disk.is_out_of_space_text(record.getMessage())


def setup(verbose: bool = False):
  """Routes absl's log lines around progress bars; `verbose` keeps the libraries' INFO lines."""
  handler = logging.get_absl_handler()
  handler.python_handler.setStream(_AboveProgressBars())
  if not verbose:
    handler.addFilter(lambda record: not _said_by_us(record) and all(
        record.levelno >= level for name, level in CHATTY.items() if name in record.pathname))
