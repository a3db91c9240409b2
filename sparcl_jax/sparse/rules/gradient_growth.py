"""RigL's grow rule: connections where the gradient is largest."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sparcl_jax.sparse.rules import ScoreInputs, register_grow_score
from sparcl_jax.paths import is_none


@register_grow_score('gradient')
def gradient_growth(inputs: ScoreInputs) -> Any:
  """Gradient magnitude ``|g|`` of this step's unmasked gradient.

  From Evci et al., "Rigging the Lottery: Making All Tickets Winners" (ICML
  2020): the zero positions whose loss would change fastest grow.

  Args:
    inputs: the score inputs (reads ``grads`` and ``masks``).

  Returns:
    Scores at the sparse leaves (higher = grown first), ``None`` elsewhere.

  Examples:
    >>> g = {'w': jnp.array([0.5, -3.])}
    >>> inputs = ScoreInputs(params=g, grads=g, last_grads=None,
    ...                      has_grads=jnp.bool_(False),
    ...                      masks={'w': jnp.zeros(2, bool)},
    ...                      rng=jax.random.key(0))
    >>> gradient_growth(inputs)['w']
    Array([0.5, 3. ], dtype=float32)
  """
  return jax.tree.map(lambda m, g: None if m is None else jnp.abs(g),
                      inputs.masks, inputs.grads, is_leaf=is_none)
