"""The classic drop rule: the smallest weights go."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sparcl_jax.sparse.rules import ScoreInputs, register_drop_score
from sparcl_jax.paths import is_none


@register_drop_score('magnitude')
def magnitude_drop(inputs: ScoreInputs) -> Any:
  """Weight magnitude ``|W|``, the drop of SET and RigL.

  From Mocanu et al., "Scalable training of artificial neural networks with
  adaptive sparse connectivity inspired by network science" (Nature
  Communications 2018) and Evci et al., "Rigging the Lottery: Making All
  Tickets Winners" (ICML 2020).

  Args:
    inputs: the score inputs (reads ``params`` and ``masks``).

  Returns:
    Scores at the sparse leaves (higher = kept), ``None`` elsewhere.

  Examples:
    >>> w = {'w': jnp.array([1., -2.]), 'b': jnp.array([3.])}
    >>> inputs = ScoreInputs(params=w, grads=w, last_grads=None,
    ...                      has_grads=jnp.bool_(False),
    ...                      masks={'w': jnp.ones(2, bool), 'b': None},
    ...                      rng=jax.random.key(0))
    >>> magnitude_drop(inputs)
    {'b': None, 'w': Array([1., 2.], dtype=float32)}
  """
  return jax.tree.map(lambda m, w: None if m is None else jnp.abs(w),
                      inputs.masks, inputs.params, is_leaf=is_none)
