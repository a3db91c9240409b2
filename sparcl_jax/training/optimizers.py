"""The optimizer of each method: a base optimizer, wrapped by SparCL's parts.

SparCL (and the sparse-training comparisons) are optax transformations around
the base optimizer, so the train step is the same for every method: it calls
``tx.update(grads, state, params, epoch=..., step_in_epoch=...)``.
"""

from __future__ import annotations

from typing import Optional

import optax

from sparcl_jax.dgm import dgm
from sparcl_jax import masks as masks_lib
from sparcl_jax.tdm import MaskSchedule, tdm
from sparcl_jax.training.config import RunConfig
from sparcl_jax.training.steps import MaskEvents


def sparse_filter(config: RunConfig) -> masks_lib.SparseFilter:
  """Which parameters are sparse: ``--sparse_layers`` or the default rule."""
  if config.sparse_layers:
    return masks_lib.filter_from_regex(config.sparse_layers)
  return masks_lib.default_sparse_filter


def mask_schedule(config: RunConfig) -> MaskSchedule:
  """TDM's drop-and-grow schedule of a run."""
  if config.method == "snip_derpp":
    return MaskSchedule(epochs_per_task=config.epochs, static=True)
  return MaskSchedule(
      update_interval=config.mask_update_interval,
      epochs_per_task=config.epochs,
      extra_growth=config.mask_extra_growth,
      swap_fraction=config.mask_swap_fraction)


def gradient_masking(config: RunConfig
                     ) -> Optional[optax.GradientTransformationExtraArgs]:
  """DGM when the method uses it, else None."""
  if config.is_sparcl and config.dgm:
    return dgm(config.gradient_sparsity, config.dgm_refresh,
                       sparse_filter=sparse_filter(config))
  return None


def make_optimizer(config: RunConfig) -> optax.GradientTransformationExtraArgs:
  """Builds the optimizer of ``config.method``.

  Args:
    config: run configuration.

  Returns:
    An optax transformation whose ``update`` accepts the extra args
    ``epoch`` and ``step_in_epoch``. For sparse methods it is
    :func:`sparcl_jax.tdm` around the base optimizer (with DGM inside when
    enabled); SparCL with ``--notdm`` but ``--dgm`` chains DGM before the base
    optimizer on the dense model.

  Example:
    >>> tx = make_optimizer(RunConfig(method="sparcl_derpp", epochs=10))
  """
  if config.optimizer == "adam":
    base = optax.adam(config.lr)
  else:
    base = optax.sgd(config.lr)
  masking = gradient_masking(config)
  if config.is_sparse:
    rigl = config.method == "rigl_derpp"
    return tdm(
        base, sparsity=config.sparsity, schedule=mask_schedule(config),
        sparse_filter=sparse_filter(config),
        distribution=config.sparsity_distribution,
        # RigL drops by magnitude alone and grows where |g| is largest.
        importance_lambda=0.0 if rigl else config.importance_lambda,
        growth="gradient" if rigl else "random",
        gradient_masking=masking, seed=config.seed)
  if masking is not None:
    return optax.chain(masking, optax.with_extra_args_support(base))
  return optax.with_extra_args_support(base)


def mask_events(config: RunConfig) -> Optional[MaskEvents]:
  """When the optimizer of ``config`` may change its masks within an epoch.

  Args:
    config: run configuration.

  Returns:
    ``MaskEvents`` for :func:`sparcl_jax.training.steps.make_train_chunk`:
    every DGM refresh (``step_in_epoch % dgm_refresh == 0``, which includes
    TDM's step 0), or step 0 alone for TDM without DGM; None for optimizers
    without masks.

  Example:
    >>> mask_events(RunConfig(method="sparcl_derpp", dgm_refresh=30)).every
    30
  """
  dgm_on = gradient_masking(config) is not None
  if not config.is_sparse and not dgm_on:
    return None
  return MaskEvents(every=config.dgm_refresh if dgm_on else 0,
                    record_last=True)
