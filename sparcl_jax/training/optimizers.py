"""The optimizer of each method: a base optimizer, wrapped by SparCL's parts.

SparCL (and the sparse-training comparisons) are optax transformations around
the base optimizer, so the train step is the same for every method: it calls
``tx.update(grads, state, params, epoch=..., step_in_epoch=...)``.
"""

from __future__ import annotations

from typing import Optional

import optax

from sparcl_jax import methods
from sparcl_jax.methods import mask_schedule, sparse_filter  # pylint: disable=unused-import
from sparcl_jax.training.config import RunConfig
from sparcl_jax.training.steps import MaskEvents


def gradient_masking(config: RunConfig
                     ) -> Optional[optax.GradientTransformationExtraArgs]:
  """DGM when the method uses it, else None."""
  if config.method_object.uses_dgm(config):
    return methods.gradient_masking(config)
  return None


def make_optimizer(config: RunConfig, kept_rows=None
                   ) -> optax.GradientTransformationExtraArgs:
  """Builds the optimizer of ``config.method`` (its method object's).

  Args:
    config: run configuration.
    kept_rows: the model's ``'sparsity'`` collection, needed with
      ``--mask_structure=grouped`` (the optimizer is then
      :func:`sparcl_jax.sparse.grouped_tdm.grouped_tdm`, which owns it).

  Returns:
    An optax transformation whose ``update`` accepts the extra args
    ``epoch`` and ``step_in_epoch``. For sparse methods it is
    :func:`sparcl_jax.sparse.tdm.tdm` around the base optimizer (with DGM
    inside when enabled); SparCL with ``--notdm`` but ``--dgm`` chains DGM
    before the base optimizer on the dense model.

  Examples:
    >>> tx = make_optimizer(RunConfig(method="sparcl_derpp", epochs=10))
  """
  return config.method_object.make_optimizer(config, kept_rows=kept_rows)

def mask_events(config: RunConfig) -> Optional[MaskEvents]:
  """When the optimizer of ``config`` may change its masks within an epoch.

  Args:
    config: run configuration.

  Returns:
    ``MaskEvents`` for :func:`sparcl_jax.training.steps.make_train_chunk`:
    every DGM refresh (``step_in_epoch % dgm_refresh == 0``, which includes
    TDM's step 0), or step 0 alone for TDM without DGM; None for optimizers
    without masks.

  Examples:
    >>> mask_events(RunConfig(method="sparcl_derpp", dgm_refresh=30)).every
    30
  """
  dgm_on = gradient_masking(config) is not None
  if not config.is_sparse and not dgm_on:
    return None
  return MaskEvents(every=config.dgm_refresh if dgm_on else 0,
                    record_last=True)
