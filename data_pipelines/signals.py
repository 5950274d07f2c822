"""SIGTERM and SIGINT as a request to stop at the next safe point, for training and ingest.

A cluster preempts a job with SIGTERM and a grace period; a person stops one with Ctrl-C.
Inside `StopRequests()` either signal only records the request: the work ends at its next
safe point (training: after the current step, with a checkpoint; ingest: after the shards in
flight), says so in one line and exits with EXIT_STOPPED, on which a cluster script requeues
the job. A second signal acts as it would have (the previous handlers are back once one
arrives). Outside the main thread (a test's thread) nothing is installed.
"""
import signal
import threading

from absl import logging

# EX_TEMPFAIL: stopped at a safe point, the same command resumes (docs/multihost.md).
EXIT_STOPPED = 75


class Stopped(Exception):
  """The work stopped on a signal at a safe point; the same command resumes it."""


class StopRequests:
  """Records SIGTERM / SIGINT while active; `received` is the signal's name, or None."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, what: str, event: threading.Event | None = None):
    self.what, self.received, self.previous = what, None, {}
    self.event = event or threading.Event()  # set too, for worker threads that check it
    self.event.clear()

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name
    self.event.set()
    logging.warning("%s received: stopping %s", self.received, self.what)
    self._restore()

  def _restore(self):
    for s, handler in self.previous.items():
      signal.signal(s, handler)
    self.previous = {}

  def __exit__(self, *exc):
    self._restore()
