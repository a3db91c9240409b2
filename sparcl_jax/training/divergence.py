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

  Examples:
    >>> check_finite(0.5, "task 1, epoch 1, step 1")
  """
  if math.isfinite(loss):
    return
  raise NonFiniteLossError(
      f"the training loss became {loss} at {where}; "
      f"{_way_on(checkpointer)}")


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

  Examples:
    >>> check_finite_tree({"w": jnp.ones(2)}, "task 1")
  """
  leaves = [leaf for leaf in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating)]
  if all(bool(jnp.isfinite(leaf).all()) for leaf in leaves):
    return
  raise NonFiniteLossError(
      f"the model weights became NaN or infinite by {where}; "
      f"{_way_on(checkpointer)}")


def _way_on(checkpointer: Optional[Any]) -> str:
  """What is kept, and the way on that works.

  Resuming unchanged diverges again (a run is deterministic), and a resume
  with another --lr is refused as other flags: the way on is a fresh run.
  """
  if checkpointer is None or not checkpointer.last_saved:
    return ("no checkpoint was saved yet; lower --lr or check the data, "
            "and run again")
  return (f"the last good checkpoint {checkpointer.last_saved} is kept, but "
          "resuming from it would diverge again; lower --lr or check the "
          "data, and start fresh in another --workdir (or delete "
          f"{checkpointer.directory})")
