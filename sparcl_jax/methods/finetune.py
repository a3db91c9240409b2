"""Fine-tuning and joint training: the lower and upper bounds.

Examples:
  >>> from sparcl_jax import methods
  >>> methods.get("joint").joint, methods.get("sgd").uses_buffer
  (True, False)
"""

from sparcl_jax.methods import register
from sparcl_jax.methods.base import Method


@register
class FineTuning(Method):
  """Plain SGD (or Adam) on each task in turn: no defence against forgetting.
  """

  name = "sgd"
  order = 0


@register
class Joint(Method):
  """At every task, a fresh network trained on every task's data so far."""

  name = "joint"
  order = 1
  joint = True
