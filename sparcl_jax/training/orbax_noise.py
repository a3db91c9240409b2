"""Keeping a failed orbax read or write to its one-line error.

When an orbax restore or save fails part-way, its event loop and tensorstore
leave tracebacks behind: callbacks reporting "Event loop is closed" from
background threads, abandoned coroutines reported by the garbage collector
later, and absl/asyncio log records. These helpers drop exactly those, so
the run's own one-line message is what the user reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import logging
import sys
import time
from typing import Iterator, Sequence


def silence_closed_loop_noise() -> None:
  """Drops the tracebacks a failed orbax read (or write) leaves behind.

  When one array of a restore fails, orbax closes its event loop while
  tensorstore still completes the other reads; their callbacks then report
  "Event loop is closed" from a background thread, burying the one-line
  error. Only that message is dropped; anything else reaches the previous
  hook.
  """
  filter_closed_loop_noise()
  # Let the stragglers finish now, while nothing else is being printed.
  saved, sys.stderr = sys.stderr, io.StringIO()
  try:
    time.sleep(0.3)
  finally:
    sys.stderr = saved


def filter_closed_loop_noise() -> None:
  """Installs (once) the hooks that drop "Event loop is closed" reports."""
  def noise(value) -> bool:
    return isinstance(value, RuntimeError) and "Event loop is closed" in str(
        value)

  # The callbacks report through PyErr_Print (sys.excepthook) or, under
  # some runners, as unraisable exceptions.
  previous_unraisable = sys.unraisablehook
  if not getattr(previous_unraisable, "_sparcl_filter", False):

    def unraisable_hook(unraisable):
      if not noise(unraisable.exc_value):
        previous_unraisable(unraisable)

    unraisable_hook._sparcl_filter = True  # pylint: disable=protected-access
    sys.unraisablehook = unraisable_hook
  previous_except = sys.excepthook
  if not getattr(previous_except, "_sparcl_filter", False):

    def except_hook(kind, value, traceback):
      if not noise(value):
        previous_except(kind, value, traceback)

    except_hook._sparcl_filter = True  # pylint: disable=protected-access
    sys.excepthook = except_hook


def collect_abandoned_reads() -> None:
  """Collects the coroutines a failed orbax read abandons, right away.

  Each holds the exception of its read; left to the garbage collector, it
  reports "Exception ignored in <coroutine ...>" at some later, unrelated
  point of the program. Collecting now, with only coroutine reports
  dropped, keeps the failure to its one-line error.
  """
  previous = sys.unraisablehook

  def hook(unraisable):
    if not asyncio.iscoroutine(unraisable.object):
      previous(unraisable)

  sys.unraisablehook = hook
  try:
    gc.collect()
  finally:
    sys.unraisablehook = previous


class HeldLogs(logging.Filter):
  """Holds the records of some loggers until :meth:`release`."""

  def __init__(self):
    super().__init__()
    self.records: list[logging.LogRecord] = []
    self.holding = True

  def filter(self, record: logging.LogRecord) -> bool:
    if self.holding:
      self.records.append(record)
    return not self.holding

  def release(self) -> None:
    """Shows the held records and stops holding."""
    self.holding = False
    records, self.records = self.records, []
    for record in records:
      logging.getLogger(record.name).handle(record)


@contextlib.contextmanager
def held_logs(names: Sequence[str] = ("absl", "asyncio")
               ) -> Iterator[HeldLogs]:
  """Within the block, records of ``names`` wait; unreleased ones are
  dropped."""
  held = HeldLogs()
  loggers = [logging.getLogger(name) for name in names]
  for logger in loggers:
    logger.addFilter(held)
  try:
    yield held
  finally:
    for logger in loggers:
      logger.removeFilter(held)
