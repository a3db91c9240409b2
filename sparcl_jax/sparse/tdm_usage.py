"""tdm's checks of how it is used, run inside its jitted update.

Two misuses leave tdm silently doing the wrong thing: a transform chained
after it (weight decay, say) moves masked weights off zero, and a step
count that never reaches 0 in an epoch (a mini-batch count under
``optax.MultiSteps``) skips every drop-and-grow. ``check_usage_of_tdm``
finds both with two reductions and raises through a host callback that
runs only when one fails.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparcl_jax.errors import ConfigError
from sparcl_jax.paths import is_none

PyTree = Any


def misuse_error(stray_weights, late_start, epoch, step,
                  last_epoch) -> None:
  """Raises (on the host, from inside jit) what a usage check found.

  Under ``vmap`` the callback also runs when no check failed (a batched
  ``cond`` runs both branches), so it looks at the flags itself.
  """
  stray_weights, late_start = np.asarray(stray_weights), np.asarray(late_start)
  if (stray_weights > 0).any():
    raise ConfigError(
        f'tdm: {int(stray_weights.max())} weights outside its masks were nonzero '
        'at this update: a transform after tdm changed their updates, or the '
        'params or masks were changed by hand. Put transforms of updates '
        'inside tdm (tdm(optax.chain(optax.add_decayed_weights(...), '
        'optax.sgd(...)), ...)), and after changing params or masks apply '
        'sc.apply_mask(params, sc.tdm_masks(state)).')
  if not late_start.any():
    return
  epoch, step, last_epoch = (np.asarray(v).reshape(-1)[late_start.reshape(-1)
                                                       .argmax()]
                             for v in (epoch, step, last_epoch))
  raise ConfigError(
      f'tdm: epoch {int(epoch)} began at step_in_epoch={int(step)} (the last '
      f'update was in epoch {int(last_epoch)}), so its drop-and-grow at step '
      '0 never runs. step_in_epoch must count tdm\'s own updates: under '
      'optax.MultiSteps(every_k_schedule=k), pass step_in_epoch=mini_batch '
      '// k.')


def check_usage_of_tdm(masks: PyTree, params: PyTree, count: jax.Array,
                       epoch: jax.Array, step: jax.Array,
                       last_epoch: jax.Array) -> None:
  """Fails the update when tdm is misused (see ``tdm``'s ``check_usage``).

  Args:
    masks: tdm's masks before this update (None at dense leaves).
    params: the params given to the update.
    count: tdm's update count (0: the first update, which zeroes what the
      initial masks cut, so nothing is checked then).
    epoch: this update's epoch.
    step: this update's step within the epoch.
    last_epoch: the epoch of the previous update (-1 before the first).

  Returns:
    None; the compiled update raises a ``ConfigError`` through a host
    callback when a check fails.

  Examples:
    >>> masks = {'w': jnp.array([True, False])}
    >>> ok = {'w': jnp.array([1.0, 0.0])}
    >>> check = jax.jit(check_usage_of_tdm)
    >>> check(masks, ok, 3, 0, 1, 0)  # masked weight zero, epoch continues
    >>> stray = {'w': jnp.array([1.0, 2.0])}
    >>> check(masks, stray, 3, 0, 1, 0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    jax.errors.JaxRuntimeError: ...tdm: 1 weights outside its masks were nonzero...
  """
  stray = [jnp.sum((w != 0) & ~m, dtype=jnp.int32)
           for m, w in zip(jax.tree.leaves(masks), jax.tree.leaves(
               jax.tree.map(lambda m, w: None if m is None else w, masks,
                            params, is_leaf=is_none)))]
  # The first update zeroes what init's masks cut: nothing to check before.
  stray_weights = jnp.where(count > 0, sum(stray), 0)
  late_start = (epoch != last_epoch) & (step != 0)
  jax.lax.cond(
      (stray_weights > 0) | late_start,
      lambda: jax.debug.callback(misuse_error, stray_weights, late_start,
                                 epoch, step, last_epoch),
      lambda: None)
