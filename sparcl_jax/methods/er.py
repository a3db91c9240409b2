"""Experience replay (ER): the cross-entropy of a replayed buffer batch.

Examples:
  >>> from sparcl_jax import methods
  >>> methods.get("er").replay_batches
  1
"""

from sparcl_jax.methods import register
from sparcl_jax.methods.base import Method
from sparcl_jax.methods.settings import ErSettings
from sparcl_jax.replay import losses as replay_losses


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
    return replay_losses.er_term(forward, params, batch_stats, x1, y1,
                                 keys[0])
