"""Dark experience replay: DER and DER++ (Buzzega et al., NeurIPS 2020).

Examples:
  >>> from sparcl_jax import methods
  >>> methods.get("der").replay_batches, methods.get("derpp").replay_batches
  (1, 2)
"""

from sparcl_jax.methods import register
from sparcl_jax.methods.base import Method
from sparcl_jax.methods.settings import DerppSettings, DerSettings
from sparcl_jax.replay import losses as replay_losses


@register
class DarkExperienceReplay(Method):
  """DER: ``alpha`` times the mean squared error between a buffer batch's
  logits now and the logits stored with it."""

  name = "der"
  order = 11
  replay_batches = 1
  settings = DerSettings

  def replay_term(self, spec, forward, params, batch_stats, batches, keys,
                  seen_mask):
    del seen_mask
    (x1, _, z1), _ = batches
    return replay_losses.der_term(forward, params, batch_stats, x1, z1,
                                  keys[0], spec.alpha)


@register
class DarkExperienceReplayPlusPlus(DarkExperienceReplay):
  """DER++: DER's term plus ``beta`` times the cross-entropy of a second,
  independently drawn buffer batch with its labels."""

  name = "derpp"
  order = 12
  replay_batches = 2
  settings = DerppSettings

  def replay_term(self, spec, forward, params, batch_stats, batches, keys,
                  seen_mask):
    del seen_mask
    (x1, _, z1), (x2, y2) = batches
    return replay_losses.derpp_term(forward, params, batch_stats, (x1, z1),
                                    (x2, y2), keys, spec.alpha, spec.beta)
