"""Task-aware dynamic masking (TDM), SparCL's weight-sparsity transform.

``tdm`` wraps an inner optax optimizer rather than being one link of a chain:
the gradient must be masked *before* the inner optimizer (so momentum never
sees pruned weights) and the final update must be masked *after* it (so that
``optax.apply_updates`` leaves pruned weights at exactly zero, including the
ones just dropped). A single chain link can do only one of the two.

The schedule (``sparcl_jax.sparse.schedule``) follows the official SparCL
code: a drop-and-grow mask update at the start of every
``update_interval``-th epoch of a task, with 1% extra capacity at the task
start, ~1% swapped connections in the middle, and a fixed mask for the last
interval. Importance is ``|W| + lambda * |g_last|``
with ``g_last`` the (DGM-masked) gradient of the last mini-batch seen; the
state is carried across tasks, so the first update of a task uses the previous
task's last gradient, which is what makes the mask task-aware.

Which weights drop and which grow are score functions
(``sparcl_jax.sparse.rules``): SparCL's importance and random growth by
default, any registered rule by name, or any function of the same shape.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparcl_jax.control_flow import run_if
from sparcl_jax.errors import ConfigError
from sparcl_jax.paths import find_states, is_none, masked_to_none
from sparcl_jax.sparse import rules
from sparcl_jax.sparse.dgm import DGMSpec, check_dgm_acts
from sparcl_jax.sparse.drop_grow import GROWTH_MODES, drop_and_grow_by_scores
from sparcl_jax.sparse.masks import bit_select, magnitude_mask
from sparcl_jax.sparse.schedule import (NO_UPDATE, MaskSchedule,
                                        schedule_position)
from sparcl_jax.sparse.tdm_usage import check_usage_of_tdm
from sparcl_jax.sparse.sparsity import (SparseFilter, default_sparse_filter,
                                        erk_sparsities, keep_count,
                                        require_selection, sparsities_by_path,
                                        uniform_sparsities)

PyTree = Any


class TDMState(NamedTuple):
  """State of ``tdm``.

  Attributes:
    count: int32 number of updates so far.
    masks: masks pytree (bool at sparse leaves, ``None`` at dense leaves).
    last_grads: gradient of the last step after masking (sparse leaves only).
    has_grads: whether ``last_grads`` holds a real gradient yet.
    rng: PRNG key for random tie-breaks and growth.
    inner_state: state of the inner optimizer.
    masking_state: state of the gradient-masking transform (or EmptyState).
    last_epoch: int32 epoch of the last update (-1 before the first), for
      the check that every epoch's first update is its step 0.

  Examples:
    >>> state = sc.tdm(optax.sgd(0.1), sparsity=0.5).init(
    ...     {'hidden_0': {'kernel': jnp.ones((4, 4))}})
    >>> int(state.count), int(state.masks['hidden_0']['kernel'].sum())
    (0, 8)
  """

  count: jax.Array
  masks: PyTree
  last_grads: PyTree
  has_grads: jax.Array
  rng: jax.Array
  inner_state: optax.OptState
  masking_state: optax.OptState
  last_epoch: jax.Array


def _final_update(mask: Optional[jax.Array], survivors: Optional[jax.Array],
                  u: jax.Array, w: jax.Array) -> jax.Array:
  """Update that leaves masked weights at exactly zero."""
  if mask is None:
    return u
  # `-w` lands a masked weight on exactly 0.0 after apply_updates; a grown
  # weight (in the mask, not among the drop's survivors) restarts from zero,
  # so it gets `u - w`; a kept weight gets the inner update. `survivors` is
  # None on steps that cannot grow.
  if survivors is not None:
    u = bit_select(survivors, u, u - w.astype(u.dtype))
  return bit_select(mask, u, -w.astype(u.dtype))


def _per_leaf_counts(masks_shapes: PyTree, sparsities: PyTree,
                     schedule: MaskSchedule) -> tuple[PyTree, PyTree]:
  """Static kept/total counts per sparse leaf for each schedule phase."""

  def table(m, s):
    if m is None:
      return None
    pairs = schedule.phase_sparsities(s)
    keep = [keep_count(m.size, p) for p, _ in pairs]
    total = [max(keep_count(m.size, g), k)
             for (_, g), k in zip(pairs, keep)]
    return np.asarray(keep, np.int32), np.asarray(total, np.int32)

  tables = jax.tree.map(table, masks_shapes, sparsities, is_leaf=is_none)
  keep = jax.tree.map(lambda m, t: None if m is None else t[0], masks_shapes,
                      tables, is_leaf=is_none)
  total = jax.tree.map(lambda m, t: None if m is None else t[1], masks_shapes,
                       tables, is_leaf=is_none)
  return keep, total


def _resolve_sparsities(params: PyTree, sparsity: Optional[float],
                        sparsities: Optional[PyTree], sparse_filter,
                        distribution: str) -> PyTree:
  # Inside optax.multi_transform the leaves other transforms own are
  # MaskedNode()s: dense here, so None.
  if sparsities is not None:
    return masked_to_none(sparsities)
  if distribution == 'uniform':
    return masked_to_none(uniform_sparsities(params, sparse_filter, sparsity))
  return masked_to_none(erk_sparsities(params, sparse_filter, sparsity))


def _score_rule(kind: str, spec: Any) -> rules.ScoreFn:
  """A rule given by name or as a function."""
  if isinstance(spec, str):
    return (rules.drop_score if kind == 'drop'
            else rules.grow_score)(spec)
  if callable(spec):
    return spec
  raise ConfigError(
      f'tdm {kind}_score must be a rule name or a function, got {spec!r}.')


def _resolve_rules(importance_lambda: Optional[float], growth: Optional[str],
                   drop_score: Any, grow_score: Any
                   ) -> tuple[rules.ScoreFn, rules.ScoreFn]:
  """The drop and grow rules of tdm's keywords (the older two included)."""
  if drop_score is not None and importance_lambda is not None:
    raise ConfigError('tdm takes importance_lambda= (of the importance drop '
                      'score) or drop_score=, not both.')
  if grow_score is not None and growth is not None:
    raise ConfigError('tdm takes growth= or grow_score=, not both.')
  if drop_score is None:
    lam = 0.5 if importance_lambda is None else float(importance_lambda)
    if lam < 0:
      raise ConfigError(f'importance_lambda must be >= 0, got {lam}.')
    drop_fn = functools.partial(rules.drop_score('importance'),
                                importance_lambda=lam)
  else:
    drop_fn = _score_rule('drop', drop_score)
  if grow_score is None:
    growth = 'random' if growth is None else growth
    if growth not in GROWTH_MODES:
      raise ConfigError(
          f'tdm growth must be one of {GROWTH_MODES}, got {growth!r}.')
    grow_fn = rules.grow_score(growth)
  else:
    grow_fn = _score_rule('grow', grow_score)
  return drop_fn, grow_fn


def tdm(inner: optax.GradientTransformation, *,
        sparsity: Optional[float] = None,
        sparsities: Optional[PyTree] = None,
        schedule: MaskSchedule = MaskSchedule(),
        sparse_filter: SparseFilter = default_sparse_filter,
        distribution: str = 'uniform',
        importance_lambda: Optional[float] = None,
        growth: Optional[str] = None,
        drop_score: Union[str, rules.ScoreFn, None] = None,
        grow_score: Union[str, rules.ScoreFn, None] = None,
        gradient_masking: Optional[optax.GradientTransformation] = None,
        dgm: Optional[DGMSpec] = None,
        steps_per_epoch: Optional[int] = None,
        seed: int = 0) -> optax.GradientTransformationExtraArgs:
  """Task-aware dynamic masking around an inner optimizer.

  ``update`` takes the extra keyword args ``epoch`` (epoch within the
  current task) and ``step_in_epoch``; at ``step_in_epoch == 0`` of an epoch
  the schedule marks, it runs drop-and-grow: the active weights with the
  lowest ``drop_score`` go (by default SparCL's importance
  ``|W| + importance_lambda * |g_last|``, ``|W|`` before any gradient was
  seen), and the zero positions with the highest ``grow_score`` grow (by
  default at random). It then masks the gradient, applies DGM (``dgm``) or
  ``gradient_masking`` (given the extra arg ``weight_mask``), records the
  result as ``g_last``, runs ``inner`` (also given ``weight_mask``) and
  returns updates after which every masked weight is exactly zero. Other
  extra args are passed on.

  ``step_in_epoch`` counts tdm's own updates in the epoch, not mini-batches:
  under ``optax.MultiSteps(tdm(...), every_k_schedule=k)`` tdm updates on
  every k-th mini-batch only, with the ``step_in_epoch`` of that mini-batch,
  so a mini-batch count (k - 1, 2k - 1, ...) never reaches 0 and tdm never
  drops or grows; pass ``step_in_epoch=mini_batch // k``.

  If ``epoch``/``step_in_epoch`` are not given, ``steps_per_epoch`` must be:
  the epoch is then derived from the internal step counter as
  ``(count // steps_per_epoch) % schedule.epochs_per_task``. A given
  ``epoch`` at or past ``schedule.epochs_per_task`` (a global epoch counter)
  follows the same rule: it is read modulo ``epochs_per_task``.

  Two optional static (Python bool) extra args let a caller that knows its
  schedule skip work: ``mask_events=False`` promises that no mask changes at
  this step (no drop-and-grow is due and DGM or ``gradient_masking`` is not
  due to refresh), so the update runs without a conditional and fuses into
  one pass over the weights; ``record_grads=False`` leaves ``g_last`` as it
  was, which is exact when a later step records before the next drop-and-grow
  (e.g. the last step of every epoch). Both default to True, which is
  always exact.

  Unless the static extra arg ``check_usage=False`` is given, every update
  checks how it is used and fails (a ``ConfigError`` raised through a host
  callback, surfacing as a JAX runtime error that carries its message) when
  weights outside the masks are nonzero after the first update (a transform
  chained after tdm, or params changed by hand), or when an epoch's first
  update is not its ``step_in_epoch=0`` (e.g. a mini-batch count under
  ``optax.MultiSteps``). The checks cost two reductions per update; the
  library's own train loop, which builds its chains itself, turns them off.

  ``init`` does not change the params: weights outside the initial mask are
  zeroed by the first update. For a sparse first forward pass, start from
  ``apply_mask(params, tdm_masks(state))``.

  What may be chained with ``tdm``: the masked weights stay exactly zero
  only if the updates ``tdm`` returns are applied as they are. Transforms of
  the raw gradient may come *before* it (``optax.chain(
  optax.clip_by_global_norm(1.0), tdm(...))``); everything that makes or
  changes updates goes *inside* it, in ``inner`` (weight decay:
  ``tdm(optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1)),
  ...)``, not ``optax.chain(tdm(...), optax.add_decayed_weights(1e-4))``,
  which makes every masked weight nonzero again). Nothing that changes
  updates may follow it. ``check_masking(tx, params)`` runs a few updates
  of a whole optimizer and raises when masked weights do not stay zero.

  Misuse raises, at ``init`` (a ``ConfigError``): a ``sparse_filter`` that
  selects no leaf of the params (the default one knows only
  ``'hidden_*/kernel'`` and ResNet names: pass
  ``sparse_filter=filter_from_regex(...)`` for other models), a
  ``sparsities`` pytree without a sparse leaf, and a ``dgm=DGMSpec(g)``
  that cannot act because ``g`` is no higher than the weight sparsity (DGM
  keeps a share of the *whole* gradient; it acts only in a layer where it
  keeps fewer entries than the weight mask, which keeps
  ``1 - (s - extra_growth)`` at a task start). A ``DGMSpec`` without a
  ``sparse_filter`` of its own masks tdm's sparse leaves.

  Under ``nnx.Optimizer(model, tdm(...), wrt=nnx.Param)``, masks read with
  ``tdm_masks(optimizer.opt_state)`` apply to ``nnx.state(model,
  nnx.Param)`` as they come: ``nnx.update(model, apply_mask(
  nnx.state(model, nnx.Param), tdm_masks(optimizer.opt_state)))``.

  Args:
    inner: the optimizer producing the updates (e.g. ``optax.sgd(0.03)``).
    sparsity: target sparsity, distributed by ``distribution``.
    sparsities: a sparsities pytree instead of ``sparsity`` (must match the
      params' structure, ``None`` at dense leaves).
    schedule: when and how far to drop and grow.
    sparse_filter: which leaves are sparse (ignored with ``sparsities``);
      must select at least one leaf.
    distribution: ``'uniform'`` or ``'erk'``.
    importance_lambda: weight of ``|g_last|`` in the default (importance)
      drop score; 0.5 when not given. Not with ``drop_score``.
    growth: ``'random'`` (SparCL, the default) or ``'gradient'`` (RigL; grows
      the zero positions with the largest ``|g|`` of the current, unmasked
      gradient): the grow rules of those names. Not with ``grow_score``.
    drop_score: the drop rule: a name from
      ``rules.drop_score_names()`` or a function
      ``(rules.ScoreInputs) -> scores`` (higher = kept).
    grow_score: the grow rule: a name from
      ``rules.grow_score_names()`` or such a function (higher = grown
      first).
    gradient_masking: optional transform applied to the masked gradient
      before ``inner``, run as it is given. Not with ``dgm``.
    dgm: SparCL's dynamic gradient masking, e.g. ``DGMSpec(0.8)``: tdm
      runs ``dgm`` as ``gradient_masking``, on tdm's sparse leaves unless
      the spec has a ``sparse_filter``, and checks that it can act.
    steps_per_epoch: fallback for missing ``epoch``/``step_in_epoch``.
    seed: seed of the transform's PRNG key.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Raises:
    ConfigError: on invalid hyper-parameters; from ``init``, on an empty
      selection or a ``dgm`` that cannot act (above).

  Examples:
    >>> params = {'hidden_0': {'kernel': jnp.ones((10, 10))}}
    >>> tx = tdm(optax.sgd(0.1), sparsity=0.5)
    >>> state = tx.init(params)
    >>> u, state = tx.update(params, state, params, epoch=0, step_in_epoch=0)
    >>> int((optax.apply_updates(params, u)['hidden_0']['kernel'] != 0).sum())
    51
  """
  if (sparsity is None) == (sparsities is None):
    raise ConfigError('tdm needs exactly one of sparsity= or sparsities=.')
  if sparsity is not None and not 0.0 <= float(sparsity) < 1.0:
    raise ConfigError(f'tdm sparsity must be in [0, 1), got {sparsity}.')
  if distribution not in ('uniform', 'erk'):
    raise ConfigError(
        f"tdm distribution must be 'uniform' or 'erk', got {distribution!r}.")
  drop_fn, grow_fn = _resolve_rules(importance_lambda, growth, drop_score,
                                    grow_score)
  if steps_per_epoch is not None and int(steps_per_epoch) < 1:
    raise ConfigError(f'steps_per_epoch must be >= 1, got {steps_per_epoch}.')
  if not isinstance(schedule, MaskSchedule):
    raise ConfigError('tdm schedule must be a MaskSchedule.')

  if dgm is not None:
    if not isinstance(dgm, DGMSpec):
      raise ConfigError(
          f'tdm dgm= takes a DGMSpec (e.g. dgm=DGMSpec(0.8)), got a '
          f'{type(dgm).__name__}; a transform goes in gradient_masking=.')
    if gradient_masking is not None:
      raise ConfigError('tdm takes dgm= or gradient_masking=, not both.')
    if dgm.sparse_filter is None:
      # DGM given no leaves of its own masks tdm's sparse leaves.
      if sparsities is None:
        inherited = sparse_filter
      else:
        sparse_paths = frozenset(
            sparsities_by_path(masked_to_none(sparsities)))
        inherited = lambda path, leaf: path in sparse_paths
      dgm = dataclasses.replace(dgm, sparse_filter=inherited)
    gradient_masking = dgm.transform()
  inner = optax.with_extra_args_support(inner)
  masking = optax.with_extra_args_support(
      gradient_masking if gradient_masking is not None else optax.identity())

  def init_fn(params):
    if sparsities is None:
      require_selection(params, sparse_filter, 'tdm')
    sp = _resolve_sparsities(params, sparsity, sparsities, sparse_filter,
                             distribution)
    if not sparsities_by_path(sp):
      raise ConfigError('tdm: sparsities= marks no leaf sparse (None at '
                        'every leaf), so nothing would be sparse.')
    masking_state = masking.init(params)
    if dgm is not None:
      check_dgm_acts(params, sp, schedule, dgm)
    masks = magnitude_mask(params, sp)
    last_grads = jax.tree.map(
        lambda m, w: None if m is None else jnp.zeros_like(w), masks, params,
        is_leaf=is_none)
    return TDMState(
        count=jnp.zeros([], jnp.int32), masks=masks, last_grads=last_grads,
        has_grads=jnp.zeros([], jnp.bool_),
        rng=jax.random.PRNGKey(seed),
        inner_state=inner.init(params), masking_state=masking_state,
        last_epoch=jnp.full([], -1, jnp.int32))

  def update_fn(updates, state, params=None, *, mask_events: bool = True,
                record_grads: bool = True, check_usage: bool = True,
                **extra):
    if params is None:
      raise ConfigError('tdm update needs params.')
    epoch, step = schedule_position(state.count, extra, steps_per_epoch,
                                    schedule, 'tdm')
    # `schedule` indexes use phases; counts are static per phase, so the
    # kept counts are exact Python-rounded integers even with traced epochs.
    sp = _resolve_sparsities(params, sparsity, sparsities, sparse_filter,
                             distribution)
    keep_table, total_table = _per_leaf_counts(state.masks, sp, schedule)
    phase = schedule.phase(epoch)
    do_update = (step == 0) & (phase != NO_UPDATE)
    rng, update_rng = jax.random.split(state.rng)
    if check_usage:
      check_usage_of_tdm(state.masks, params, state.count, epoch, step,
                         state.last_epoch)

    def new_masks(carry):
      masks, _ = carry
      # The rules' key is folded from `update_rng` rather than split from
      # it, so the engine's own draws, and the masks of every existing
      # configuration, do not change.
      inputs = rules.ScoreInputs(
          params=params, grads=updates, last_grads=state.last_grads,
          has_grads=state.has_grads, masks=masks,
          rng=jax.random.fold_in(update_rng, 1))
      pick = lambda t: jax.tree.map(
          lambda m, c: None if m is None else jnp.asarray(c)[phase], masks, t,
          is_leaf=is_none)
      survivors, out = drop_and_grow_by_scores(
          update_rng, masks, pick(keep_table), pick(total_table),
          drop_scores=drop_fn(inputs), grow_scores=grow_fn(inputs))
      return out, survivors

    if mask_events:
      # A loop, not a cond: on the (usual) steps without a drop-and-grow
      # only a copy of the masks (a byte per weight) is made, not of the
      # weights.
      masks, survivors = run_if(do_update, new_masks,
                                (state.masks, state.masks))
    else:
      # The caller promises no mask update at this step: without the loop,
      # XLA fuses the masking, the inner update and the final update into
      # one pass over the weights.
      masks = state.masks
      survivors = jax.tree.map(lambda m: None, masks, is_leaf=is_none)
    masked = jax.tree.map(
        lambda m, g: g if m is None else bit_select(m, g),
        masks, updates, is_leaf=is_none)
    shared = dict(extra, epoch=epoch, step_in_epoch=step, weight_mask=masks)
    # Only the non-default value is passed on, so a user's masking transform
    # sees the same extra args as before unless the caller opted in.
    events = {} if mask_events else {'mask_events': False}
    masked, masking_state = masking.update(masked, state.masking_state,
                                           params, **events, **shared)
    if record_grads:
      last_grads = jax.tree.map(lambda m, g: None if m is None else g, masks,
                                masked, is_leaf=is_none)
      has_grads = jnp.ones([], jnp.bool_)
    else:
      last_grads, has_grads = state.last_grads, state.has_grads
    inner_updates, inner_state = inner.update(masked, state.inner_state,
                                              params, **shared)
    final = jax.tree.map(_final_update, masks, survivors, inner_updates,
                         params, is_leaf=is_none)
    return final, TDMState(
        count=state.count + 1, masks=masks, last_grads=last_grads,
        has_grads=has_grads, rng=rng, inner_state=inner_state,
        masking_state=masking_state,
        last_epoch=jnp.asarray(epoch, jnp.int32))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def tdm_masks(state: Any) -> PyTree:
  """Returns the current weight masks from a (possibly nested) state.

  Finds the one ``TDMState`` inside ``optax.chain``,
  ``optax.multi_transform``, ``optax.inject_hyperparams``,
  ``optax.MultiSteps`` and ``nnx.Optimizer`` states (an ``nnx.Optimizer``
  itself or its ``opt_state``), through
  ``optax.tree_utils.tree_get_all_with_path``.

  Args:
    state: a state of ``tdm`` or of any optax combinator containing one.

  Returns:
    The masks pytree (bool arrays at sparse leaves, ``None`` elsewhere), as
    stored: under ``nnx.Optimizer`` its leaves are ``OptVariable``s, which
    ``apply_mask`` and ``summarize_sparsity`` take as they come.

  Raises:
    ValueError: if the state holds no or several TDM states.

  Examples:
    >>> params = {'hidden_0': {'kernel': jnp.ones((4, 4))}}
    >>> tx = optax.chain(tdm(optax.sgd(0.1), sparsity=0.5))
    >>> tdm_masks(tx.init(params))['hidden_0']['kernel'].sum()
    Array(8, dtype=int32)
  """
  found = find_states(state, TDMState)
  if len(found) != 1:
    raise ValueError(
        f'Expected one TDMState in the state, found {len(found)}'
        + (f' (at {", ".join(p for p, _ in found)}).' if found else
           ': is tdm part of this optimizer?'))
  return found[0][1].masks


__all__ = ['MaskSchedule', 'TDMState', 'tdm', 'tdm_masks']
