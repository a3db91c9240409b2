"""Checking that masked weights stay masked under a whole optimizer.

``tdm`` zeroes the masked weights through the updates it returns; a
transform chained after it that changes updates (weight decay, a second
optimizer, lookahead) makes them nonzero again, and ``tdm`` cannot see the
links after it. ``check_masking`` runs a few updates of the whole optimizer
and says which weights came back.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparcl_jax.errors import ConfigError
from sparcl_jax.paths import find_states, flatten_with_paths
from sparcl_jax.sparse.masks import apply_mask
from sparcl_jax.sparse.tdm import TDMState, tdm_masks

PyTree = Any


def _tdm_state(state: Any) -> TDMState:
  """The one ``TDMState`` of an optimizer state."""
  found = find_states(state, TDMState)
  if len(found) != 1:
    tdm_masks(state)  # raises the accessor's error
  return found[0][1]


def _pure(tree: PyTree) -> PyTree:
  """The arrays of a pytree, any ``nnx.Variable`` replaced by its value."""
  try:
    from flax import nnx  # pylint: disable=g-import-not-at-top
  except ImportError:  # pragma: no cover
    return tree
  return jax.tree.map(
      lambda x: x.get_value() if isinstance(x, nnx.Variable) else x, tree,
      is_leaf=lambda x: isinstance(x, nnx.Variable))


def check_masking(tx: optax.GradientTransformation, params: PyTree, *,
                  steps: int = 3, seed: int = 0, **extra: Any) -> None:
  """Raises unless masked weights stay exactly zero under a whole optimizer.

  Runs ``steps`` updates of ``tx`` from ``params`` with random gradients
  (``epoch=0`` and ``step_in_epoch=0, 1, ...`` unless given), applying each
  as ``optax.apply_updates`` does, and checks that every weight outside
  ``tdm_masks`` of the state is exactly zero after every step at which
  ``tdm`` updated (not after a mini-step of ``optax.MultiSteps``). A transform
  chained *after* ``tdm`` that changes updates (``add_decayed_weights``,
  ``scale_by_adam``, ``lookahead``...) makes them nonzero; it belongs in
  tdm's ``inner``. Call it once, on the params of the run, before training.

  Args:
    tx: the whole optimizer, holding one ``tdm``.
    params: the params it will train (an ``nnx.State`` of ``nnx.Param``
      works too).
    steps: updates to run (at least 1; more for ``optax.MultiSteps``).
    seed: seed of the random gradients.
    **extra: further extra args for ``tx.update``.

  Raises:
    ConfigError: some masked weight is nonzero after a step, or ``tdm``
      never updated.

  Examples:
    Weight decay chained after ``tdm`` (inside ``inner`` it would pass):

    >>> p = {'hidden_0': {'kernel': jnp.ones((8, 8))}}
    >>> bad = optax.chain(sc.tdm(optax.sgd(0.1), sparsity=0.5),
    ...                   optax.add_decayed_weights(1e-4))
    >>> check_masking(bad, p, steps=1)
    Traceback (most recent call last):
    ...
    sparcl_jax.errors.ConfigError: check_masking: after update 1, 31 weights outside tdm's masks are nonzero (hidden_0/kernel: 31): a transform after tdm changed their updates. Put transforms of updates inside tdm's inner optimizer (tdm(optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr)), ...)); only transforms of the raw gradient (e.g. optax.clip_by_global_norm) may come before tdm, and none after it.
  """
  params = _pure(params)
  state = tx.init(params)
  # tdm's own usage check would stop the first bad update with a shorter
  # message; this check reports by leaf.
  update = jax.jit(functools.partial(tx.update, **{'check_usage': False,
                                                   **extra}))
  rng = np.random.default_rng(seed)
  ran = 0
  for k in range(max(int(steps), 1)):
    grads = jax.tree.map(
        lambda x: jnp.asarray(rng.standard_normal(jnp.shape(x)),
                              jnp.result_type(x)), params)
    where = {'epoch': 0, 'step_in_epoch': k}
    where = {n: v for n, v in where.items() if n not in extra}
    before = int(_tdm_state(state).count)
    updates, state = update(grads, state, params, **where)
    params = optax.apply_updates(params, updates)
    if int(_tdm_state(state).count) == before:
      continue  # e.g. a mini-step of optax.MultiSteps: tdm did not update.
    ran += 1
    masks = tdm_masks(state)
    masked = apply_mask(params, masks)
    bad = {}
    for (path, w), (_, m) in zip(flatten_with_paths(params),
                                 flatten_with_paths(masked)):
      n = int(np.count_nonzero(np.asarray(w) != np.asarray(m)))
      if n:
        bad[path] = n
    if bad:
      listed = ', '.join(f'{p}: {n}' for p, n in list(bad.items())[:4])
      raise ConfigError(
          f'check_masking: after update {k + 1}, {sum(bad.values())} '
          f"weights outside tdm's masks are nonzero ({listed}): a transform "
          'after tdm changed their updates. Put transforms of updates '
          "inside tdm's inner optimizer (tdm(optax.chain("
          'optax.add_decayed_weights(wd), optax.sgd(lr)), ...)); only '
          'transforms of the raw gradient (e.g. optax.clip_by_global_norm) '
          'may come before tdm, and none after it.')
  if not ran:
    raise ConfigError(f'check_masking: tdm did not update in {steps} steps '
                      '(optax.MultiSteps?): pass a larger steps=.')


__all__ = ['check_masking']
