"""Experience replay (ER): the cross-entropy of a replayed buffer batch.

Example:
  >>> from sparcl_jax import methods
  >>> methods.get("er").replay_batches
  1
"""

from sparcl_jax.methods import register
from sparcl_jax.methods.base import Method, cross_entropy_over
from sparcl_jax.methods.settings import ErSettings


@register
class ExperienceReplay(Method):
  """ER (Chaudhry et al. 2019), with a reservoir buffer.

  The loss of a step is the stream cross-entropy plus the cross-entropy of
  one buffer mini-batch, over every output.
  """

  name = "er"
  order = 10
  replay_batches = 1
  settings = ErSettings

  def replay_term(self, spec, forward, params, batch_stats, batches, keys,
                  seen_mask):
    del spec, seen_mask
    (x1, y1, _), _ = batches
    logits, batch_stats = forward(params, batch_stats, x1, keys[0], True)
    return cross_entropy_over(logits, y1, None), batch_stats
