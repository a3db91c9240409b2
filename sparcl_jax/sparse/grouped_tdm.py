"""Task-aware dynamic masking with group-balanced structure (``grouped_tdm``).

The structured twin of :func:`sparcl_jax.sparse.tdm.tdm`, for models built from
group-balanced sparse layers (:class:`~sparcl_jax.GroupedSparseDense`,
:class:`~sparcl_jax.GroupedSparseLinear`, and the convolutions of
:mod:`sparcl_jax.models.grouped_conv`): the parameters hold only the kept
weights (``values`` ``[groups, k, group]`` for a dense layer, ``[groups,
*window, k, group]`` for a convolution, whose "rows" are input channels
with all their taps), and which input rows each block keeps lives in the model's ``'sparsity'`` collection (``rows`` ``[groups,
k]`` indices for the product, ``kept`` ``[groups, fan_in]`` membership). The
transform owns that collection: it takes the model's initial one, changes it
by drop-and-grow on TDM's schedule, and the train step reads it back with
:func:`tdm_rows` to run the model.

Drop-and-grow keeps the balance: at a task's start and at the middle
updates of :class:`~sparcl_jax.MaskSchedule`, every block swaps the same
number of rows (``round(extra_growth * fan_in)`` at the task start,
``round(swap_fraction * fan_in)`` in the middle): the kept rows with the
lowest SparCL importance ``|W| + lambda |g_last|`` (summed over the block's
output units and a convolution's taps) leave, random rows not kept take their slots with zero
weights. The final update of a task changes nothing: with a fixed count per
block, pruning back to the target is a no-op. So every block keeps exactly
``k`` distinct rows after every update, and the layer never computes with
more.

Growth is random (SparCL's rule). Gradient growth (RigL's) needs the
gradient of rows the layer does not compute with, a dense product, and is
not offered here.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from sparcl_jax.control_flow import run_if
from sparcl_jax.errors import ConfigError
from sparcl_jax.paths import (find_states, flatten_to_dict, is_none,
                              map_with_paths)
from sparcl_jax.sparse import grouped, grouped_conv
from sparcl_jax.sparse.schedule import (SWAP, TASK_START, MaskSchedule,
                                        schedule_position)

PyTree = Any

# Leaf names inside a layer: the parameters' kept weights, the collection's
# row indices and row membership.
VALUES, ROWS, KEPT = 'values', 'rows', 'kept'


class GroupedTDMState(NamedTuple):
  """State of ``grouped_tdm``.

  Attributes:
    count: int32 number of updates so far.
    collection: the model's ``'sparsity'`` collection as it stands (``rows``
      and ``kept`` of every grouped layer), in the structure it was given.
    last_grads: gradient of the last step at the grouped ``values`` leaves
      (``None`` elsewhere), after gradient masking.
    has_grads: whether ``last_grads`` holds a real gradient yet.
    rng: PRNG key of random growth.
    inner_state: state of the inner optimizer.
    masking_state: state of the gradient-masking transform (or EmptyState).

  Examples:
    >>> layer = sc.GroupedSparseDense(features=4, group=2, sparsity=0.5)
    >>> v = layer.init(jax.random.key(0), jnp.ones((1, 6)))
    >>> schedule = sc.MaskSchedule(extra_growth=0.2, swap_fraction=0.2)
    >>> state = sc.grouped_tdm(optax.sgd(0.1), kept_rows=v['sparsity'],
    ...                        schedule=schedule).init(v['params'])
    >>> int(state.count), state.collection['rows'].shape
    (0, (2, 3))
  """

  count: jax.Array
  collection: PyTree
  last_grads: PyTree
  has_grads: jax.Array
  rng: jax.Array
  inner_state: optax.OptState
  masking_state: optax.OptState


def _layer_of(path: str, leaf_name: str) -> Optional[str]:
  """The layer path of a leaf named ``leaf_name`` ('' at the top), else
  None."""
  if path == leaf_name:
    return ''
  suffix = '/' + leaf_name
  return path[:-len(suffix)] if path.endswith(suffix) else None


def _leaf(layer: str, leaf_name: str) -> str:
  return f'{layer}/{leaf_name}' if layer else leaf_name


def grouped_layers(collection: PyTree) -> dict[str, int]:
  """The grouped layers of a ``'sparsity'`` collection and their fan-in.

  Args:
    collection: a model's ``'sparsity'`` collection (Linen dict or
      ``nnx.State``).

  Returns:
    ``{layer path: fan_in}``, one entry per layer holding ``rows`` and
    ``kept``.

  Raises:
    ConfigError: a layer holds one of the two but not the other.

  Examples:
    >>> rows = {'hidden_0': {'rows': jnp.zeros((2, 3), jnp.int32),
    ...                      'kept': jnp.zeros((2, 6), bool)}}
    >>> grouped_layers(rows)
    {'hidden_0': 6}
  """
  flat = flatten_to_dict(collection)
  layers = {}
  for path, leaf in flat.items():
    layer = _layer_of(path, KEPT)
    if layer is not None:
      if _leaf(layer, ROWS) not in flat:
        raise ConfigError(f"'sparsity' collection has {path} but no "
                          f"{layer}/{ROWS}")
      layers[layer] = int(leaf.shape[-1])
  for path in flat:
    layer = _layer_of(path, ROWS)
    if layer is not None and layer not in layers:
      raise ConfigError(f"'sparsity' collection has {path} but no "
                        f"{layer}/{KEPT}")
  return layers


def swap_counts(fan_in: int, k: int,
                schedule: MaskSchedule) -> tuple[int, int]:
  """Rows every block swaps at a task's start and at a middle update.

  Args:
    fan_in: input rows of the dense kernel.
    k: rows each block keeps.
    schedule: the drop-and-grow schedule (``extra_growth`` and
      ``swap_fraction`` are shares of ``fan_in``).

  Returns:
    ``(at_task_start, at_swap)``, each at most ``min(k, fan_in - k)``.

  Examples:
    >>> swap_counts(2000, 500, MaskSchedule())
    (20, 20)
  """
  most = min(k, fan_in - k)
  return (min(round(schedule.extra_growth * fan_in), most),
          min(round(schedule.swap_fraction * fan_in), most))


def check_rows_move(fan_ins: dict[str, int], kept: dict[str, int],
                    schedule: MaskSchedule) -> None:
  """Raises where a positive swap share of the schedule moves no row.

  ``round(share * fan_in)`` rows swap per block; on a small layer a share
  such as the default 1% rounds to zero and the layer would never change.
  Only the shares the schedule uses are checked: ``extra_growth`` at a
  task's start, ``swap_fraction`` when a middle update exists, none for a
  static schedule; a share of 0 is taken as meant.

  Args:
    fan_ins: ``{layer: fan_in}`` of the grouped layers.
    kept: ``{layer: rows each block keeps}``.
    schedule: the drop-and-grow schedule.

  Raises:
    ConfigError: naming the first such layer and the smallest share that
      moves one of its rows (``1 / fan_in``).

  Example:
    >>> check_rows_move({'hidden_0': 40}, {'hidden_0': 10}, MaskSchedule())
    Traceback (most recent call last):
    ...
    sparcl_jax.errors.ConfigError: grouped_tdm: MaskSchedule(extra_growth=0.01) swaps round(0.01 x 40) = 0 rows per block of layer hidden_0 (fan-in 40), so it would never change; use extra_growth >= 0.025 (1/40), or 0 to keep its rows fixed.
  """
  if schedule.static:
    return
  has_swaps = schedule.update_interval < schedule.last_update_epoch
  for layer, fan_in in sorted(fan_ins.items()):
    if min(kept[layer], fan_in - kept[layer]) < 1:
      continue  # keeps all or no rows: nothing a share could move
    at_start, at_swap = swap_counts(fan_in, kept[layer], schedule)
    used = [('extra_growth', schedule.extra_growth, at_start)]
    if has_swaps:
      used.append(('swap_fraction', schedule.swap_fraction, at_swap))
    for name, share, rows in used:
      if share > 0 and rows < 1:
        raise ConfigError(
            f'grouped_tdm: MaskSchedule({name}={share:g}) swaps '
            f'round({share:g} x {fan_in}) = 0 rows per block of layer '
            f'{layer or "(top)"} (fan-in {fan_in}), so it would never '
            f'change; use {name} >= {1 / fan_in:.4g} (1/{fan_in}), or 0 to '
            'keep its rows fixed.')


def grouped_tdm(inner: optax.GradientTransformation, *,
                kept_rows: PyTree,
                schedule: MaskSchedule = MaskSchedule(),
                importance_lambda: float = 0.5,
                gradient_masking: Optional[
                    optax.GradientTransformation] = None,
                steps_per_epoch: Optional[int] = None,
                seed: int = 0) -> optax.GradientTransformationExtraArgs:
  """TDM for group-balanced sparse layers: drop-and-grow of whole rows.

  ``update`` takes the extra args ``epoch`` (within the task) and
  ``step_in_epoch`` like :func:`sparcl_jax.sparse.tdm.tdm`, and the same static
  ``mask_events`` / ``record_grads`` promises. At ``step_in_epoch == 0`` of
  a task's first epoch and of the schedule's middle updates, every block of
  every grouped layer swaps rows (see the module doc). A grown slot's
  gradient this step belongs to the row that left, so it is zeroed and the
  slot's update lands its weight on exactly 0.0; with a stateful inner
  optimizer (momentum, Adam) the slot keeps the leaving row's moments.

  Args:
    inner: the optimizer producing the updates.
    kept_rows: the model's initial ``'sparsity'`` collection
      (``variables['sparsity']`` of a Linen model,
      ``nnx.state(model, KeptRows)`` of an NNX one).
    schedule: when to swap and how many rows.
    importance_lambda: weight of ``|g_last|`` in the drop score.
    gradient_masking: optional transform applied to the gradient before
      ``inner`` (e.g. :func:`sparcl_jax.sparse.dgm.dgm` selecting the ``values``
      leaves); it gets ``weight_mask`` with ``None`` leaves (all stored
      weights are kept).
    steps_per_epoch: fallback when ``epoch``/``step_in_epoch`` are missing.
    seed: seed of the growth draws.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` over the model's params.

  Raises:
    ConfigError: on invalid hyper-parameters, a collection without
      grouped layers, or a positive ``extra_growth`` / ``swap_fraction``
      that rounds to zero rows in a layer (``check_rows_move``).

  Examples:
    >>> from sparcl_jax.models.grouped_dense import GroupedSparseDense
    >>> layer = GroupedSparseDense(features=4, group=2, sparsity=0.5)
    >>> v = layer.init(jax.random.key(0), jnp.ones((1, 100)))
    >>> tx = grouped_tdm(optax.sgd(0.1), kept_rows=v['sparsity'])
    >>> state = tx.init(v['params'])
    >>> grads = jax.tree.map(jnp.ones_like, v['params'])
    >>> _, state = tx.update(grads, state, v['params'], epoch=0,
    ...                      step_in_epoch=0)
    >>> rows = tdm_rows(state)['rows']
    >>> int((rows != v['sparsity']['rows']).sum(-1)[0])  # 1% of 100 rows
    1
  """
  if not (math.isfinite(importance_lambda) and importance_lambda >= 0):
    raise ConfigError(
        f'importance_lambda must be finite and >= 0, got {importance_lambda}.')
  if not isinstance(schedule, MaskSchedule):
    raise ConfigError('grouped_tdm schedule must be a MaskSchedule.')
  if steps_per_epoch is not None and int(steps_per_epoch) < 1:
    raise ConfigError(f'steps_per_epoch must be >= 1, got {steps_per_epoch}.')
  fan_ins = grouped_layers(kept_rows)
  if not fan_ins:
    raise ConfigError(
        "grouped_tdm found no grouped layer in kept_rows: pass the model's "
        "'sparsity' collection (each layer's 'rows' and 'kept').")
  flat_rows = flatten_to_dict(kept_rows)
  check_rows_move(fan_ins, {layer: int(flat_rows[_leaf(layer, ROWS)].shape[-1])
                            for layer in fan_ins}, schedule)
  lam = float(importance_lambda)
  inner = optax.with_extra_args_support(inner)
  masking = optax.with_extra_args_support(
      gradient_masking if gradient_masking is not None else optax.identity())

  def layer_leaf(path: str) -> Optional[str]:
    layer = _layer_of(path, VALUES)
    return layer if layer in fan_ins else None

  def grouped_only(params, fn):
    """``fn(layer, leaf)`` at the grouped values leaves, None elsewhere."""
    return map_with_paths(
        lambda path, leaf: None if layer_leaf(path) is None else fn(
            layer_leaf(path), leaf), params)

  def init_fn(params):
    found = {layer_leaf(p) for p in flatten_to_dict(params)} - {None}
    if found != set(fan_ins):
      raise ConfigError(
          f'grouped_tdm: the params have grouped values for {sorted(found)}'
          f' but kept_rows has {sorted(fan_ins)}.')
    return GroupedTDMState(
        count=jnp.zeros([], jnp.int32), collection=kept_rows,
        last_grads=grouped_only(params, lambda _, w: jnp.zeros_like(w)),
        has_grads=jnp.zeros([], jnp.bool_), rng=jax.random.PRNGKey(seed),
        inner_state=inner.init(params), masking_state=masking.init(params))

  def swap(collection, params, last_grads, has_grads, key, phase):
    """The collection after one drop-and-grow, and each layer's swapped
    slots ([groups, k] bool)."""
    flat = flatten_to_dict(collection)
    values = {layer_leaf(p): w for p, w in flatten_to_dict(params).items()
              if layer_leaf(p) is not None}
    grads = {layer_leaf(p): g for p, g in flatten_to_dict(last_grads).items()
             if layer_leaf(p) is not None}
    new, changed = {}, {}
    for i, (layer, fan_in) in enumerate(sorted(fan_ins.items())):
      rows = flat[_leaf(layer, ROWS)]
      groups, k = rows.shape
      drop = grouped.kept_block_scores(values[layer], grads[layer], lam)
      drop = jnp.where(has_grads, drop,
                       grouped.kept_block_scores(values[layer]))
      grow = jax.random.uniform(jax.random.fold_in(key, i), (groups, fan_in))
      at_start, at_swap = swap_counts(fan_in, k, schedule)

      def rows_after(count, rows=rows, drop=drop, grow=grow):
        return grouped.drop_and_grow_rows(
            jnp.zeros(rows.shape + (1,)), rows, drop, grow, count)[1]

      rows = jax.lax.cond(phase == TASK_START,
                          lambda: rows_after(at_start),
                          lambda: rows_after(at_swap))
      new[_leaf(layer, ROWS)] = rows
      new[_leaf(layer, KEPT)] = grouped.kept_membership(rows, fan_in)
      changed[layer] = rows != flat[_leaf(layer, ROWS)]
    return map_with_paths(lambda p, x: new.get(p, x), collection), changed

  def update_fn(updates, state, params=None, *, mask_events: bool = True,
                record_grads: bool = True, **extra):
    if params is None:
      raise ConfigError('grouped_tdm update needs params.')
    epoch, step = schedule_position(state.count, extra, steps_per_epoch,
                                    schedule, 'grouped_tdm')
    phase = schedule.phase(epoch)
    do_swap = (step == 0) & ((phase == TASK_START) | (phase == SWAP))
    rng, key = jax.random.split(state.rng)
    unchanged = {layer: jnp.zeros(
        flatten_to_dict(state.collection)[_leaf(layer, ROWS)].shape, bool)
                 for layer in fan_ins}
    if mask_events:
      collection, changed = run_if(
          do_swap, lambda carry: swap(carry[0], params, state.last_grads,
                                      state.has_grads, key, phase),
          (state.collection, unchanged))
    else:
      collection, changed = state.collection, None

    def zero_grown(layer, g):
      if changed is None:
        return g
      return jnp.where(grouped.row_slots(changed[layer], g.ndim),
                       jnp.zeros_like(g), g)

    grown_zeroed = grouped_only(updates, zero_grown)
    masked = jax.tree.map(lambda z, g: g if z is None else z, grown_zeroed,
                          updates, is_leaf=is_none)
    shared = dict(extra, epoch=epoch, step_in_epoch=step,
                  weight_mask=jax.tree.map(lambda _: None, params))
    events = {} if mask_events else {'mask_events': False}
    masked, masking_state = masking.update(masked, state.masking_state,
                                           params, **events, **shared)
    if record_grads:
      last_grads = grouped_only(masked, lambda _, g: g)
      has_grads = jnp.ones([], jnp.bool_)
    else:
      last_grads, has_grads = state.last_grads, state.has_grads
    inner_updates, inner_state = inner.update(masked, state.inner_state,
                                              params, **shared)

    def land_grown(path, u):
      layer = layer_leaf(path)
      if layer is None or changed is None:
        return u
      w = flatten_to_dict(params)[path]
      return jnp.where(grouped.row_slots(changed[layer], u.ndim),
                       u - w.astype(u.dtype), u)

    final = map_with_paths(land_grown, inner_updates)
    return final, GroupedTDMState(
        count=state.count + 1, collection=collection, last_grads=last_grads,
        has_grads=has_grads, rng=rng, inner_state=inner_state,
        masking_state=masking_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def dense_view(params: PyTree, collection: PyTree) -> tuple[PyTree, PyTree]:
  """The dense kernels and masks a grouped model stands for.

  Every grouped layer's ``values`` leaf becomes a dense ``kernel`` (zero
  where not kept) and its mask; other leaves are unchanged (masks ``None``),
  so sparsity reports, FLOPs counts and the dense model read it as they read
  an unstructured run.

  Args:
    params: a Linen params dict with grouped ``values`` leaves.
    collection: the matching ``'sparsity'`` collection.

  Returns:
    ``(dense_params, masks)``, nested dicts.

  Examples:
    >>> params = {'h': {'values': jnp.ones((1, 1, 2)), 'bias': jnp.zeros(2)}}
    >>> rows = {'h': {'rows': jnp.array([[1]]),
    ...               'kept': jnp.array([[False, True]])}}
    >>> dense, masks = dense_view(params, rows)
    >>> dense['h']['kernel'], masks['h']['bias'] is None
    (Array([[0., 0.],
           [1., 1.]], dtype=float32), True)
  """
  fan_ins = grouped_layers(collection)
  flat_rows = flatten_to_dict(collection)
  dense, masks = {}, {}
  for path, leaf in flatten_to_dict(params).items():
    layer = _layer_of(path, VALUES)
    if layer in fan_ins:
      rows = flat_rows[_leaf(layer, ROWS)]
      kernel = _leaf(layer, 'kernel')
      # [groups, *window, k, group]: window () for a dense layer.
      dense[kernel] = grouped_conv.to_dense(leaf, rows, fan_ins[layer])
      masks[kernel] = grouped_conv.kept_mask(rows, leaf.shape[1:-2],
                                             fan_ins[layer], leaf.shape[-1])
    else:
      dense[path], masks[path] = leaf, None
  return _unflatten(dense), _unflatten(masks)


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, leaf in flat.items():
    node = tree
    *parents, name = path.split('/')
    for key in parents:
      node = node.setdefault(key, {})
    node[name] = leaf
  return tree


def _find_grouped_states(state: Any) -> list[GroupedTDMState]:
  return [node for _, node in find_states(state, GroupedTDMState)]


def tdm_rows(state: optax.OptState) -> PyTree:
  """The current ``'sparsity'`` collection held by a ``grouped_tdm`` state.

  Args:
    state: a ``grouped_tdm`` state or any optax state holding exactly one.

  Returns:
    The collection, to run the model with:
    ``model.apply({'params': p, 'sparsity': tdm_rows(state)}, x)``.

  Raises:
    ValueError: the state holds no or several ``grouped_tdm`` states.

  Examples:
    >>> from sparcl_jax.models.grouped_dense import GroupedSparseDense
    >>> v = GroupedSparseDense(4, group=2, sparsity=0.5).init(
    ...     jax.random.key(0), jnp.ones((1, 60)))
    >>> tx = grouped_tdm(optax.sgd(0.1), kept_rows=v['sparsity'])
    >>> tdm_rows(tx.init(v['params']))['rows'].shape
    (2, 30)
  """
  found = _find_grouped_states(state)
  if len(found) != 1:
    raise ValueError(
        f'Expected one GroupedTDMState in the state, found {len(found)}.')
  return found[0].collection


def sparsity_variables(state: optax.OptState) -> dict[str, PyTree]:
  """``{'sparsity': tdm_rows(state)}`` when the state holds a
  ``grouped_tdm`` state, else ``{}``: the variables to add to ``params``
  when applying the model.

  Args:
    state: any optax state.

  Returns:
    A dict of Linen collections.

  Examples:
    >>> sparsity_variables(optax.sgd(0.1).init({'w': jnp.ones(2)}))
    {}
  """
  found = _find_grouped_states(state)
  return {'sparsity': found[0].collection} if len(found) == 1 else {}


__all__ = ['GroupedTDMState', 'check_rows_move', 'dense_view', 'grouped_layers', 'grouped_tdm',
           'sparsity_variables', 'swap_counts', 'tdm_rows']
