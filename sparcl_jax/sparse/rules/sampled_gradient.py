"""GSE's grow rule: the largest gradients within a random subset."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sparcl_jax.errors import ConfigError
from sparcl_jax.sparse.rules import ScoreInputs, register_grow_score
from sparcl_jax.paths import is_none


@register_grow_score('sampled_gradient')
def sampled_gradient_growth(inputs: ScoreInputs, *,
                            subset_fraction: float = 0.5) -> Any:
  """``|g|`` on a random subset of the positions, ``-1`` elsewhere.

  After Heddes et al., "Always-Sparse Training by Growing Connections with
  Guided Stochastic Exploration" (GSE, arXiv:2401.06898, 2024): a random
  subset of the inactive connections is sampled and those with the largest
  gradient magnitude within it grow, which explores (the subset is random)
  while it exploits (the gradient ranks it), and needs the gradient at the
  sampled positions only. Here every position enters the subset
  independently with probability ``subset_fraction`` (the paper's own subset
  sizes and non-uniform samplers are not reproduced). Outside the subset the
  score is ``-1``, below every ``|g|``, so if the subset holds fewer zeros
  than the growth needs, the rest is drawn at random. ``subset_fraction=1``
  is RigL's gradient growth and ``0`` is random growth.

  Args:
    inputs: the score inputs (reads ``grads``, ``masks`` and ``rng``).
    subset_fraction: chance of each position to be in the subset, in
      ``[0, 1]``; 0.5 is this library's default, not the paper's.

  Returns:
    float32 scores at the sparse leaves (higher = grown first), ``None``
    elsewhere.

  Raises:
    ConfigError: if ``subset_fraction`` is outside ``[0, 1]``.

  Examples:
    >>> g = {'w': jnp.array([0.5, -3., 2.])}
    >>> inputs = ScoreInputs(params=g, grads=g, last_grads=None,
    ...                      has_grads=jnp.bool_(False),
    ...                      masks={'w': jnp.zeros(3, bool)},
    ...                      rng=jax.random.key(0))
    >>> sampled_gradient_growth(inputs, subset_fraction=1.0)['w']
    Array([0.5, 3. , 2. ], dtype=float32)
    >>> sampled_gradient_growth(inputs, subset_fraction=0.0)['w']
    Array([-1., -1., -1.], dtype=float32)
  """
  if not 0.0 <= float(subset_fraction) <= 1.0:
    raise ConfigError(
        f'subset_fraction must be in [0, 1], got {subset_fraction}.')
  num_leaves = len(jax.tree.leaves(inputs.masks))
  keys = iter(jax.random.split(inputs.rng, max(num_leaves, 1)))

  def leaf(m, g):
    if m is None:
      return None
    sampled = jax.random.bernoulli(next(keys), subset_fraction, m.shape)
    return jnp.where(sampled, jnp.abs(g).astype(jnp.float32), -1.0)

  return jax.tree.map(leaf, inputs.masks, inputs.grads, is_leaf=is_none)
