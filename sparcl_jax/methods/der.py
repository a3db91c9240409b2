"""Dark experience replay: DER and DER++ (Buzzega et al., NeurIPS 2020).

Example:
  >>> from sparcl_jax import methods
  >>> methods.get("der").replay_batches, methods.get("derpp").replay_batches
  (1, 2)
"""

from sparcl_jax.methods import register
from sparcl_jax.methods.base import Method, cross_entropy_over
from sparcl_jax import losses
from sparcl_jax.methods.settings import DerppSettings, DerSettings


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
    logits, batch_stats = forward(params, batch_stats, x1, keys[0], True)
    return spec.alpha * losses.logit_matching(logits, z1), batch_stats


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
    term, batch_stats = super().replay_term(spec, forward, params,
                                            batch_stats, batches, keys,
                                            seen_mask)
    _, (x2, y2) = batches
    logits, batch_stats = forward(params, batch_stats, x2, keys[1], True)
    return (term + spec.beta * cross_entropy_over(logits, y2, None),
            batch_stats)
