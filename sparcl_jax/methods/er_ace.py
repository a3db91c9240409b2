"""ER-ACE: experience replay with asymmetric cross-entropy.

Caccia et al., "New Insights on Reducing Abrupt Representation Change in
Online Continual Learning" (ICLR 2022). Plain ER pushes the logits of the
old classes down whenever a new-class example arrives, which drags the old
classes' representations along at every task switch. ER-ACE takes the
stream cross-entropy over the current task's classes only, so incoming
data never competes with the old classes, and the buffer cross-entropy over
every class seen so far, where old and new classes are told apart.

Examples:
  >>> from sparcl_jax import methods
  >>> er_ace = methods.get("er_ace")
  >>> er_ace.replay_batches
  1
  >>> task, seen = jnp.array([False, True]), jnp.array([True, True])
  >>> er_ace.stream_class_mask(None, task, seen)
  Array([False,  True], dtype=bool)
"""

from sparcl_jax.methods import register
from sparcl_jax.methods.base import Method
from sparcl_jax.methods.settings import ReplaySettings
from sparcl_jax.replay import losses as replay_losses


@register
class ErAce(Method):
  """ER-ACE: stream loss over the current task's classes, buffer loss over
  the classes seen so far, one buffer mini-batch per step."""

  name = "er_ace"
  order = 13
  replay_batches = 1
  # Its stream loss is over the current task's classes whatever
  # --current_task_logit_mask says.
  settings = ReplaySettings

  def stream_class_mask(self, spec, task_mask, seen_mask):
    del spec, seen_mask
    return task_mask

  def replay_term(self, spec, forward, params, batch_stats, batches, keys,
                  seen_mask):
    del spec
    (x1, y1, _), _ = batches
    return replay_losses.er_term(forward, params, batch_stats, x1, y1,
                                 keys[0], class_mask=seen_mask)
