"""SparCL's drop rule: weight magnitude plus the last gradient's magnitude."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sparcl_jax.sparse.rules import ScoreInputs, register_drop_score
from sparcl_jax.paths import is_none


@register_drop_score('importance')
def importance_drop(inputs: ScoreInputs, *,
                    importance_lambda: float = 0.5) -> Any:
  """Importance ``|W| + importance_lambda * |g_last|`` (SparCL's TDM).

  From Wang et al., "SparCL: Sparse Continual Learning on the Edge"
  (NeurIPS 2022): the gradient term is the last mini-batch's masked
  gradient, carried across tasks, which is what makes the mask task-aware.
  Before any gradient was recorded the score is ``|W|`` alone.
  ``importance_lambda=0`` gives magnitude pruning.

  Args:
    inputs: the score inputs (reads ``params``, ``last_grads``,
      ``has_grads`` and ``masks``).
    importance_lambda: weight of the gradient term, ``>= 0``.

  Returns:
    Scores at the sparse leaves (higher = kept), ``None`` elsewhere.

  Examples:
    >>> w = {'w': jnp.array([1., -2., 0.5])}
    >>> inputs = ScoreInputs(
    ...     params=w, grads=w, last_grads={'w': jnp.array([4., 0., -1.])},
    ...     has_grads=jnp.bool_(True), masks={'w': jnp.ones(3, bool)},
    ...     rng=jax.random.key(0))
    >>> importance_drop(inputs)['w']
    Array([3., 2., 1.], dtype=float32)
  """
  lam = float(importance_lambda)
  return jax.tree.map(
      lambda m, w, g: None if m is None else jnp.abs(w) + jnp.where(
          inputs.has_grads, lam * jnp.abs(g), jnp.zeros_like(g)),
      inputs.masks, inputs.params, inputs.last_grads, is_leaf=is_none)
