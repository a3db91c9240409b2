"""TensorBoard event files beside ``metrics.jsonl``, without TensorFlow.

:class:`TensorBoardLog` takes the same records as the JSON-lines log and
writes every number in them as a scalar through ``tensorboardX`` (a pure
Python writer), so ``tensorboard --logdir WORKDIR/tensorboard`` shows the
loss, the accuracy on every task, the sparsity, the data kept and the
training FLOPs so far.
"""

from __future__ import annotations

import numbers
import os
from typing import Any, Iterator, Optional

TENSORBOARD = "tensorboard"

# Position fields: they are the step or the tag, not curves of their own.
_SKIPPED = ("event", "task", "epoch", "global_step")


def scalars(record: dict[str, Any]) -> Iterator[tuple[str, float]]:
  """The ``(tag, value)`` pairs a log record becomes.

  Numbers become ``<event>/<key>``; lists (one value per task) become
  ``<event>/<key>/task_<j>`` (1-based); dicts (one value per layer) become
  ``<event>/<key>/<name>``. Booleans and strings are skipped.

  Args:
    record: one record of the metrics log.

  Yields:
    Tag and value of each scalar.

  Examples:
    >>> list(scalars({"event": "eval", "task": 1, "class_il": [90.0, 80.0]}))
    [('eval/class_il/task_1', 90.0), ('eval/class_il/task_2', 80.0)]
  """
  event = record.get("event", "log")
  for key, value in record.items():
    if key in _SKIPPED:
      continue
    tag = f"{event}/{key}"
    if isinstance(value, dict):
      items = [(f"{tag}/{name}", v) for name, v in value.items()]
    elif isinstance(value, (list, tuple)):
      items = [(f"{tag}/task_{j + 1}", v) for j, v in enumerate(value)]
    else:
      items = [(tag, value)]
    for name, v in items:
      if isinstance(v, numbers.Real) and not isinstance(v, bool):
        yield name, float(v)


class TensorBoardLog:
  """Writes log records as TensorBoard scalars in ``WORKDIR/tensorboard``.

  The step of a record is its ``global_step`` (train steps so far) when it
  has one, else the number of records written before it.

  Args:
    workdir: the run's directory.
    purge_step: when resuming, the global step of the checkpoint; TensorBoard
      then hides what an earlier, interrupted process logged from that step
      on, since the resumed run logs it again.

  Examples:
    >>> import os, tempfile
    >>> tb = TensorBoardLog(tempfile.mkdtemp())
    >>> tb({"event": "epoch", "global_step": 10, "loss": 0.5})
    >>> tb.close()
    >>> len(os.listdir(tb.directory))  # one event file
    1
  """

  def __init__(self, workdir: str, purge_step: Optional[int] = None):
    # Imported here: only runs that write event files load the writer.
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self.directory = os.path.join(workdir, TENSORBOARD)
    self._writer = SummaryWriter(self.directory, purge_step=purge_step)
    self._count = 0

  def __call__(self, record: dict[str, Any]) -> None:
    step = int(record.get("global_step", self._count))
    self._count += 1
    for tag, value in scalars(record):
      self._writer.add_scalar(tag, value, step)
    self._writer.flush()

  def close(self) -> None:
    """Flushes and closes the event file."""
    self._writer.close()
