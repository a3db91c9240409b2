"""Conditional execution that updates large state in place.

``lax.cond`` writes its result to fresh buffers, so the branch that passes a
large array through unchanged (masks, weights, a last gradient) still pays a
full copy of it, and on a CPU every fresh page of that copy costs a page
fault. A while loop updates its carry in place: the trip not taken costs
nothing. The train steps and SparCL's transforms use this for every
"occasionally change the masks" decision.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def run_if(pred: jax.Array, fn: Callable[[Any], Any], operand: Any) -> Any:
  """``fn(operand)`` if ``pred`` else ``operand``, as a 0-or-1-trip loop.

  Args:
    pred: bool scalar (traced).
    fn: maps ``operand`` to a pytree of the same structure, shapes and
      dtypes.
    operand: the pytree.

  Returns:
    ``fn(operand)`` or ``operand``.

  Examples:
    >>> run_if(jnp.array(True), lambda x: x + 1, jnp.zeros(2))
    Array([1., 1.], dtype=float32)
  """

  def body(carry):
    _, value = carry
    return jnp.zeros((), jnp.bool_), fn(value)

  return jax.lax.while_loop(lambda carry: carry[0], body,
                            (jnp.asarray(pred, jnp.bool_), operand))[1]


__all__ = ['run_if']
