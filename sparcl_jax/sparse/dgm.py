"""Dynamic gradient masking (DGM), SparCL's gradient-sparsity transform.

Every ``refresh_interval`` steps each selected layer keeps only the largest
entries of its (weight-masked) gradient, and the kept set is reused on the
steps in between. The official code thresholds at a quantile; here exactly
``round((1 - gradient_sparsity) * n)`` entries are kept, so counts are exact
whatever the ties.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparcl_jax.control_flow import run_if
from sparcl_jax.errors import ConfigError
from sparcl_jax.paths import (find_states, flatten_with_paths, is_none,
                              masked_to_none)
from sparcl_jax.sparse.masks import bit_select, masks_from_filter
from sparcl_jax.sparse.schedule import MaskSchedule, most_kept
from sparcl_jax.sparse.selection import rank_mask
from sparcl_jax.sparse.sparsity import (SparseFilter, default_sparse_filter,
                                        keep_count, require_selection,
                                        sparsities_by_path)

PyTree = Any


class DGMState(NamedTuple):
  """State of ``dgm``.

  Attributes:
    count: int32 number of updates so far (used when no ``step_in_epoch``).
    masks: gradient masks (bool at selected leaves, ``None`` elsewhere).

  Examples:
    >>> state = sc.dgm(0.75).init({'hidden_0': {'kernel': jnp.ones((4, 4))}})
    >>> int(state.count), state.masks['hidden_0']['kernel'].shape
    (0, (4, 4))
  """

  count: jax.Array
  masks: PyTree


@dataclasses.dataclass(frozen=True)
class DGMSpec:
  """Dynamic gradient masking as ``tdm`` runs it: ``tdm(..., dgm=DGMSpec())``.

  ``tdm`` builds the ``dgm`` transform from it, masking tdm's own sparse
  leaves when ``sparse_filter`` is None, and from ``init`` on raises when the
  gradient sparsity could not act (see ``dgm``). Standing alone, ``dgm`` is
  the transform; this is what tdm needs to know to run and check one.

  Attributes:
    gradient_sparsity: share of a leaf's gradient entries zeroed, in
      ``[0, 1)`` (stored as a float).
    refresh_interval: steps between refreshes of the gradient mask, >= 1
      (stored as an int).
    sparse_filter: which leaves get a gradient mask; None: the leaves tdm
      keeps sparse.

  Raises:
    ConfigError: on a value out of range.

  Examples:
    >>> params = {'hidden_0': {'kernel': jnp.ones((10, 10))}}
    >>> g = {'hidden_0': {'kernel': jnp.arange(100.).reshape(10, 10)}}
    >>> tx = sc.tdm(optax.sgd(0.1), sparsity=0.5,
    ...             dgm=DGMSpec(0.9, refresh_interval=10))
    >>> _, state = tx.update(g, tx.init(params), params, epoch=0,
    ...                      step_in_epoch=0)
    >>> int(sc.dgm_masks(state)['hidden_0']['kernel'].sum())  # 10% of 100
    10
  """

  gradient_sparsity: float = 0.8
  refresh_interval: int = 30
  sparse_filter: Optional[SparseFilter] = None

  def __post_init__(self):
    if not 0.0 <= float(self.gradient_sparsity) < 1.0:
      raise ConfigError(f'gradient_sparsity must be in [0, 1), got '
                        f'{self.gradient_sparsity}.')
    if int(self.refresh_interval) < 1:
      raise ConfigError(
          f'refresh_interval must be >= 1, got {self.refresh_interval}.')
    # Stored as the transform uses them, so that a spec and the dgm built
    # from it report the same numbers.
    object.__setattr__(self, 'gradient_sparsity',
                       float(self.gradient_sparsity))
    object.__setattr__(self, 'refresh_interval', int(self.refresh_interval))

  def transform(self) -> optax.GradientTransformationExtraArgs:
    """The ``dgm`` transform of this spec.

    Returns:
      ``dgm(gradient_sparsity, refresh_interval, sparse_filter)``.

    Examples:
      >>> g = {'hidden_0': {'kernel': jnp.arange(10.).reshape(2, 5)}}
      >>> tx = DGMSpec(0.8).transform()
      >>> u, _ = tx.update(g, tx.init(g), g)
      >>> int((u['hidden_0']['kernel'] != 0).sum())
      2
    """
    return dgm(self.gradient_sparsity, self.refresh_interval,
               sparse_filter=self.sparse_filter)


def _weight_mask_leaf(weight_mask: Optional[PyTree], masks: PyTree) -> PyTree:
  """Aligns an optional weight-mask pytree with the gradient masks."""
  if weight_mask is None:
    return jax.tree.map(lambda m: None, masks, is_leaf=is_none)
  return jax.tree.map(lambda m, wm: None if m is None else wm, masks,
                      weight_mask, is_leaf=is_none)


def dgm(gradient_sparsity: float = 0.8, refresh_interval: int = 30,
        sparse_filter: Optional[SparseFilter] = None
        ) -> optax.GradientTransformationExtraArgs:
  """Dynamic gradient masking.

  At the first update and at steps where ``step % refresh_interval == 0``
  (``step`` is the extra arg ``step_in_epoch`` when given, else the
  internal counter), per selected
  leaf: ``g' = g * weight_mask`` (extra arg ``weight_mask``; a missing pytree
  or a ``None`` leaf means dense), keep exactly the
  ``keep_count(n, gradient_sparsity)`` largest ``|g'|`` (ties favour
  positions inside the weight mask, then lower index) and store that set. On
  other steps the gradient is multiplied by the stored set. Unselected leaves
  pass through unchanged. The static extra arg ``mask_events=False`` (a
  caller's promise that no refresh is due, which the first update never
  is) reuses the stored set without a conditional, so the masking fuses
  with the surrounding update.

  Before the first update, ``init``'s masks keep as many entries as a
  refresh will (``keep_count(n, gradient_sparsity)``, at placeholder
  positions: the first entries), so ``dgm_masks`` of a fresh state reports
  the gradient sparsity the schedule keeps (e.g. for ``train_flops``); the
  first update replaces them.

  ``gradient_sparsity`` is a share of the *whole* gradient of a leaf, not
  of its kept weights: inside ``tdm`` at weight sparsity ``s`` the gradient
  is already zero outside the weight mask, so DGM acts only when
  ``gradient_sparsity`` exceeds ``s`` (exactly: in a layer where it keeps
  fewer entries than the weight mask keeps at its largest, a share
  ``1 - (s - extra_growth)`` at a task start). ``tdm`` raises when given a
  ``DGMSpec`` that could act on none of its leaves.

  Inside ``tdm`` DGM is given as ``tdm(..., dgm=DGMSpec(0.9))``: tdm
  builds this transform from the spec, with tdm's sparse leaves when the
  spec names none, and checks that it can act. Used on its own (or as any
  ``gradient_masking=`` transform) a ``dgm`` without ``sparse_filter`` takes
  ``default_sparse_filter``'s leaves. Either way, ``init`` raises if the
  filter selects no leaf of the params.

  Args:
    gradient_sparsity: share of gradient entries zeroed, in ``[0, 1)``.
    refresh_interval: steps between refreshes of the gradient mask.
    sparse_filter: which leaves get a gradient mask; None:
      ``default_sparse_filter``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Raises:
    ConfigError: on invalid hyper-parameters; from ``init``, when the
      filter selects no leaf.

  Examples:
    >>> params = {'hidden_0': {'kernel': jnp.zeros((2, 5))}}
    >>> tx = optax.chain(dgm(0.8), optax.sgd(1.0))
    >>> g = {'hidden_0': {'kernel': jnp.arange(10.).reshape(2, 5)}}
    >>> u, _ = tx.update(g, tx.init(params), params)
    >>> u['hidden_0']['kernel']
    Array([[-0., -0., -0., -0., -0.],
           [-0., -0., -0., -8., -9.]], dtype=float32)
  """
  # The spec validates the hyper-parameters, with the same messages.
  spec = DGMSpec(gradient_sparsity, refresh_interval, sparse_filter)
  gs = spec.gradient_sparsity
  interval = spec.refresh_interval
  if sparse_filter is None:
    sparse_filter = default_sparse_filter

  def init_fn(params):
    require_selection(params, sparse_filter, 'dgm',
                      'no gradient would be masked')
    # Before the first refresh (the first update) the masks keep the count
    # a refresh keeps, at placeholder positions (the first entries), so that
    # dgm_masks reports the schedule's gradient sparsity from a fresh state.
    def placeholder(m):
      if m is None:
        return None
      flat = jnp.arange(m.size).reshape(m.shape)
      return flat < keep_count(m.size, gs)

    masks = masked_to_none(masks_from_filter(params, sparse_filter))
    return DGMState(count=jnp.zeros([], jnp.int32),
                    masks=jax.tree.map(placeholder, masks, is_leaf=is_none))

  def refresh(grads, masks, weight_mask):

    def leaf(m, g, wm):
      if m is None:
        return None
      magnitude = -jnp.abs(g).astype(jnp.float32)
      if wm is not None:
        # One key ranks like (-|g * wm|, not wm): an in-mask entry (key
        # <= 0) precedes every masked-out one (key 1), zeros included, and
        # the masked-out ones tie among themselves as they did; a NaN
        # gradient sorts last either way.
        magnitude = jnp.where(wm, magnitude, jnp.ones_like(magnitude))
      return rank_mask([magnitude], keep_count(g.size, gs))

    return jax.tree.map(leaf, masks, grads, weight_mask, is_leaf=is_none)

  def update_fn(updates, state, params=None, *, weight_mask=None,
                step_in_epoch=None, mask_events: bool = True, **extra):
    del params, extra
    step = state.count if step_in_epoch is None else jnp.asarray(
        step_in_epoch, jnp.int32)
    wm = _weight_mask_leaf(weight_mask, state.masks)
    if mask_events:
      # The first update always refreshes: the initial masks are
      # placeholders (see init).
      masks = run_if((step % interval == 0) | (state.count == 0),
                     lambda m: refresh(updates, m, wm), state.masks)
    else:
      masks = state.masks
    out = jax.tree.map(
        lambda m, g: g if m is None else bit_select(m, g),
        masks, updates, is_leaf=is_none)
    return out, DGMState(count=state.count + 1, masks=masks)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def check_dgm_acts(params: PyTree, sp: PyTree, schedule: MaskSchedule,
                   spec: DGMSpec) -> None:
  """Raises if the dgm tdm runs from ``spec`` could mask nothing.

  It could not where, in every leaf it masks, it keeps no fewer gradient
  entries than the weight mask ever keeps there: the gradient is already
  zero outside the weight mask.

  Args:
    params: the params tdm trains.
    sp: tdm's sparsities pytree (None at dense leaves).
    schedule: tdm's schedule.
    spec: the ``DGMSpec`` given to tdm.

  Raises:
    ConfigError: when the dgm can act in no leaf.
  """
  flt = spec.sparse_filter or default_sparse_filter
  weight_sp = sparsities_by_path(sp)
  shares = []
  for path, leaf in flatten_with_paths(params):
    if not flt(path, leaf):
      continue
    n = int(np.prod(leaf.shape))
    s = weight_sp.get(path)
    most = n if s is None else most_kept(n, s, schedule)
    if keep_count(n, spec.gradient_sparsity) < most:
      return
    shares.append(most / max(n, 1))
  if not shares:
    return  # dgm's own init raises on an empty selection.
  top = max(shares)
  raise ConfigError(
      f'tdm: dgm=DGMSpec({spec.gradient_sparsity:g}) cannot act: it '
      f'keeps {1 - spec.gradient_sparsity:.4g} of a layer\'s whole gradient, '
      f'no fewer entries than the weight mask keeps in any layer it masks '
      f'(at most {top:.4g} of a layer) and the gradient is zero outside '
      f'that mask already; use a gradient_sparsity above {1 - top:.4g} or '
      f'leave dgm out.')


def dgm_masks(state: Any) -> PyTree:
  """Returns the current gradient masks from a (possibly nested) state.

  Finds the one ``DGMState`` inside ``optax.chain``,
  ``optax.multi_transform``, ``optax.inject_hyperparams``,
  ``optax.MultiSteps``, ``tdm`` and ``nnx.Optimizer`` states (an
  ``nnx.Optimizer`` itself or its ``opt_state``).

  Args:
    state: a ``dgm`` state or any optax state containing exactly one.

  Returns:
    The gradient masks pytree (bool at selected leaves, ``None`` elsewhere),
    as stored (before the first update: as many kept entries as the
    gradient sparsity keeps, at placeholder positions): under ``nnx.Optimizer`` its leaves are ``OptVariable``s,
    which ``apply_mask`` and ``summarize_sparsity`` take as they come.

  Raises:
    ValueError: if the state holds no or several DGM states.

  Examples:
    >>> params = {'hidden_0': {'kernel': jnp.zeros((2, 5))}}
    >>> dgm_masks(dgm(0.8).init(params))['hidden_0']['kernel'].sum()  # 20%
    Array(2, dtype=int32)
  """
  found = find_states(state, DGMState)
  if len(found) != 1:
    raise ValueError(
        f'Expected one DGMState in the state, found {len(found)}'
        + (f' (at {", ".join(p for p, _ in found)}).' if found else
           ': is dgm part of this optimizer?'))
  return found[0][1].masks


__all__ = ['DGMSpec', 'DGMState', 'check_dgm_acts', 'dgm', 'dgm_masks']
