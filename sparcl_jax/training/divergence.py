"""Stopping a run whose loss or weights became NaN or infinite.

The run stops with one line naming where it diverged and the last good
checkpoint, which is kept: a state with non-finite weights is never saved.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp

from sparcl_jax.errors import SparclError


class NonFiniteLossError(SparclError):
  """The training loss became NaN or infinite."""


def check_finite(loss: float, where: str,
                 checkpointer: Optional[Any] = None) -> None:
  """Stops a run whose loss is NaN or infinite.

  Args:
    loss: the (summed or mean) loss just computed.
    where: the position, e.g. "task 2 of 5, epoch 3, steps 40-59".
    checkpointer: the run's checkpointer, to name the last good checkpoint.

  Raises:
    NonFiniteLossError: ``loss`` is not finite.

  Example:
    >>> check_finite(0.5, "task 1, epoch 1, step 1")
  """
  if math.isfinite(loss):
    return
  kept = "no checkpoint was saved yet"
  if checkpointer is not None and checkpointer.last_saved:
    kept = f"the last good checkpoint {checkpointer.last_saved} is kept"
  raise NonFiniteLossError(
      f"the training loss became {loss} at {where}; {kept}; lower --lr or "
      "check the data, then start fresh (another --workdir) or resume.")


def check_finite_tree(tree: Any, where: str,
                      checkpointer: Optional[Any] = None) -> None:
  """Refuses to go on (or to save) with NaN or infinite weights.

  A step can turn the weights non-finite while its own loss was still
  finite; checking before each save keeps such a state out of checkpoints.

  Args:
    tree: the weights (any pytree; non-float leaves are ignored).
    where: the position, for the message.
    checkpointer: the run's checkpointer, to name the last good checkpoint.

  Raises:
    NonFiniteLossError: some weight is NaN or infinite.

  Example:
    >>> check_finite_tree({"w": jnp.ones(2)}, "task 1")
  """
  leaves = [leaf for leaf in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating)]
  if all(bool(jnp.isfinite(leaf).all()) for leaf in leaves):
    return
  kept = "no checkpoint was saved yet"
  if checkpointer is not None and checkpointer.last_saved:
    kept = f"the last good checkpoint {checkpointer.last_saved} is kept"
  raise NonFiniteLossError(
      f"the model weights became NaN or infinite by {where}; {kept}; lower "
      "--lr or check the data, then start fresh (another --workdir) or "
      "resume.")
