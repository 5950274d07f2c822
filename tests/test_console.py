"""Command-line output: log lines above progress bars, the libraries' chatter kept down."""
import logging as std_logging

import tqdm
from absl import logging

from data_pipelines import console


def record(pathname, level):
  return std_logging.LogRecord("name", level, pathname, 1, "message", None, None)


def test_log_lines_go_through_tqdm_and_library_chatter_is_filtered(monkeypatch):
  console.setup(verbose=False)
  handler = logging.get_absl_handler()
  written = []
  monkeypatch.setattr(tqdm.tqdm, "write", lambda text, **kwargs: written.append(text))
  handler.python_handler.stream.write("a line\n")
  assert written == ["a line\n"]  # tqdm clears its bar, prints, redraws the bar below
  shown = lambda path, level: handler.filter(record(path, level))
  assert shown("/site-packages/vismae_jax/train/loop.py", std_logging.INFO)
  assert not shown("/site-packages/orbax/checkpoint/checkpoint_manager.py", std_logging.INFO)
  assert shown("/site-packages/orbax/checkpoint/checkpoint_manager.py", std_logging.WARNING)
  assert not shown("/site-packages/apache_beam/io/gcp/__init__.py", std_logging.WARNING)
  assert shown("/site-packages/apache_beam/runners/worker.py", std_logging.ERROR)
  assert not shown("/site-packages/jax/_src/xla_bridge.py", std_logging.INFO)  # no TPU here
