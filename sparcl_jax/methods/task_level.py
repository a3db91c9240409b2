"""Task-incremental methods of the CLNP comparison: CLNP, EWC, SI, single-task.

They train task by task with the loss over the current task's outputs only,
a fresh optimizer state per task, and no buffer; ``training.task_level``
runs them.

Example:
  >>> from sparcl_jax import methods
  >>> methods.get("ewc").family
  'task_level'
"""

from sparcl_jax.methods import register
from sparcl_jax.methods.base import TASK_LEVEL, Method


class _TaskLevel(Method):
  family = TASK_LEVEL


@register
class Clnp(_TaskLevel):
  """CLNP (Golkar et al. 2019): train the free units, prune, freeze."""

  name = "clnp"
  order = 30


@register
class Ewc(_TaskLevel):
  """Elastic weight consolidation (Kirkpatrick et al. 2017)."""

  name = "ewc"
  order = 31


@register
class Si(_TaskLevel):
  """Synaptic intelligence (Zenke et al. 2017)."""

  name = "si"
  order = 32


@register
class SingleTask(_TaskLevel):
  """A fresh network per task: the no-interference reference."""

  name = "single_task"
  order = 33
