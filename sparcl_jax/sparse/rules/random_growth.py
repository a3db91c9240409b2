"""The grow rule of SET and SparCL: new connections at random."""

from __future__ import annotations

from typing import Any

from sparcl_jax.sparse.rules import ScoreInputs, register_grow_score


@register_grow_score('random')
def random_growth(inputs: ScoreInputs) -> Any:
  """No preference: the grown positions are drawn uniformly at random.

  The growth of SET (Mocanu et al., Nature Communications 2018) and of
  SparCL's TDM (Wang et al., NeurIPS 2022). Returning ``None`` leaves every
  zero position tied, so the engine's random tie-break alone picks them,
  without ranking a score.

  Args:
    inputs: the score inputs (nothing is read).

  Returns:
    None.

  Examples:
    >>> random_growth(None) is None
    True
  """
  del inputs
  return None
