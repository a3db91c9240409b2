"""Progress lines: one per epoch and one per task, wherever stdout goes.

A tqdm bar only shows on a terminal; a run whose output goes to a file, a
notebook or a cluster's log still needs to say where it is. The loop's
records (the same for every method family) carry what a line needs, so
:class:`ProgressLines` is one more consumer of them, beside the metrics log
and TensorBoard.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO


def _clock(seconds: float) -> str:
  """``h:mm:ss`` of a duration.

  Examples:
    >>> _clock(3725.4)
    '1:02:05'
  """
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressLines:
  """Prints a line per trained epoch and per evaluated task.

  Args:
    num_tasks: tasks of the run.
    epochs: epochs per task.
    first_seed: the seed whose records are shown when a run has several.
    stream: where the lines go (default: stdout at each write).
    clock: seconds since an arbitrary start (tests pass their own).

  Examples:
    >>> import io
    >>> out, now = io.StringIO(), iter([0.0, 2.0])
    >>> lines = ProgressLines(2, 1, stream=out, clock=lambda: next(now))
    >>> lines({"event": "epoch", "task": 0, "epoch": 0, "loss": 0.5,
    ...        "examples": 100})
    >>> print(out.getvalue().strip())
    task 1/2 epoch 1/1  loss 0.5000  50 examples/s  elapsed 0:00:02  left ~0:00:02
  """

  def __init__(self, num_tasks: int, epochs: int, first_seed: int = 0,
               stream: Optional[TextIO] = None,
               clock: Callable[[], float] = time.perf_counter):
    self.num_tasks, self.epochs = num_tasks, epochs
    self.first_seed = first_seed
    self.stream, self.clock = stream, clock
    self.start = self.last = clock()
    self.epochs_done = 0
    self.broken = False

  def _write(self, line: str) -> None:
    if self.broken:
      return
    stream = self.stream or sys.stdout
    try:
      stream.write(line + "\n")
      stream.flush()
    except (OSError, ValueError):
      # A closed pipe or a full disk behind stdout must not stop training:
      # the run's results go to its work directory, and train.py says once,
      # at the end, that stdout could not be written.
      self.broken = True

  def __call__(self, record: dict) -> None:
    if record.get("seed", self.first_seed) != self.first_seed:
      return
    if record["event"] == "epoch":
      now = self.clock()
      rate = record["examples"] / max(now - self.last, 1e-9)
      self.last = now
      self.epochs_done += 1
      # Epochs resumed past are not timed here: the estimate counts the
      # ones this process ran.
      left = self.num_tasks * self.epochs - (record["task"] * self.epochs +
                                             record["epoch"] + 1)
      elapsed = now - self.start
      estimate = elapsed / self.epochs_done * left
      self._write(f"task {record['task'] + 1}/{self.num_tasks} epoch "
                  f"{record['epoch'] + 1}/{self.epochs}  loss "
                  f"{record['loss']:.4f}  {rate:.0f} examples/s  elapsed "
                  f"{_clock(elapsed)}  left ~{_clock(estimate)}")
    elif record["event"] == "eval":
      self.last = self.clock()
      accuracies = lambda key: " ".join(f"{a:.2f}" for a in record[key])
      self._write(f"task {record['task'] + 1}/{self.num_tasks} done  "
                  f"class-IL {accuracies('class_il')}  task-IL "
                  f"{accuracies('task_il')}")
