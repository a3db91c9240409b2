"""CLNP's optax wrapper: only a partition's trainable entries move.

:func:`clnp_partition` applies a :class:`~sparcl_jax.clnp.partition.Partition`
to the gradient going into any optimizer and to the update coming out of it,
so frozen entries stay bit-identical and zero entries exactly zero;
:func:`set_partition` swaps the masks between tasks.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sparcl_jax.sparse import masks as masks_lib
from sparcl_jax.clnp.partition import Partition
from sparcl_jax.clnp.specs import PyTree
from sparcl_jax.errors import ConfigError
from sparcl_jax.paths import flatten_to_dict, map_with_paths, path_to_str


class ClnpPartitionState(NamedTuple):
  """State of :func:`clnp_partition`: the masks and the inner state.

  Attributes:
    trainable: bool pytree, see :class:`Partition`.
    zero: bool pytree, see :class:`Partition`.
    inner_state: state of the wrapped optimizer.

  Examples:
    >>> params = {'w': jnp.ones((2, 3)), 'b': jnp.zeros(3)}
    >>> state = clnp_partition(optax.adam(1e-3)).init(params)
    >>> all(bool(m.all()) for m in jax.tree.leaves(state.trainable))
    True
  """

  trainable: PyTree
  zero: PyTree
  inner_state: Any


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def _fit_like(masks: PyTree, ref: PyTree, what: str) -> PyTree:
  """Returns ``masks`` as bool arrays laid out exactly like ``ref``.

  Leaves are matched by their ``'/'``-joined paths, so the masks may come as
  a Linen dict, an ``nnx.State`` of ``nnx.Param`` or its pure dict whatever
  ``ref`` is; the result takes ``ref``'s containers and variable types (an
  ``nnx.Optimizer``'s ``OptVariable`` leaves stay ``OptVariable``). Entries
  that ``ref`` holds as ``optax.MaskedNode`` (the leaves an
  ``optax.multi_transform`` or ``optax.masked`` hides from this branch) stay
  masked.
  """
  given = flatten_to_dict(masks)
  ref_leaves = jax.tree_util.tree_flatten_with_path(ref,
                                                    is_leaf=_is_masked)[0]
  hidden = {path_to_str(kp) for kp, x in ref_leaves if _is_masked(x)}
  wanted = [path_to_str(kp) for kp, x in ref_leaves if not _is_masked(x)]
  missing = sorted(set(wanted) - set(given))
  extra = sorted(path for path in set(given) - set(wanted)
                 if not any(h in ("", path) or path.startswith(h + "/")
                            for h in hidden))
  if missing or extra:
    raise ConfigError(f"{what} masks do not have the params' tree structure: "
                      f"missing {missing}, unexpected {extra}")

  def fit(path, leaf):
    m = given[path]
    if jnp.shape(m) != jnp.shape(leaf):
      raise ConfigError(f"{what} mask of shape {jnp.shape(m)} does not match "
                        f"parameter shape {jnp.shape(leaf)} at {path!r}")
    return jnp.asarray(m, bool)

  return map_with_paths(fit, ref)


def clnp_partition(
    inner: optax.GradientTransformation,
    partition: Optional[Partition] = None,
    *,
    mask_gradients: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """Wraps an optimizer so that only the partition's trainable entries move.

  The gradient is masked before ``inner`` (so frozen entries do not feed its
  statistics) and the final update is masked again (so momentum left in
  ``inner``'s state cannot move them): frozen entries receive an update of
  exactly zero whatever ``inner`` is. When ``params`` are passed to
  ``update``, zero entries receive ``-params`` so that any stray value is
  driven to exactly zero on the first step (and then stays there).

  ``mask_gradients=False`` skips the first mask. For an elementwise
  optimizer (SGD, momentum, Adam, ...) the trainable entries' updates are
  then the same (up to XLA fusing the float arithmetic differently), since
  no entry's statistics reach another's, and reading a mask in the
  optimizer's memory-bound passes over every weight is saved; frozen entries
  still get exactly zero. Keep the default for optimizers that look across
  entries (global-norm clipping, trust ratios such as LARS/LAMB), whose
  trainable updates would otherwise see the frozen gradients.

  The masks live in the state rather than being closed over, so one jitted
  train step serves every task: change them between tasks with
  :func:`set_partition`, typically together with a fresh ``init`` to reset
  the optimizer per task. Keep this transform outermost: anything chained
  after it could move frozen entries again. Extra keyword args are forwarded
  to ``inner``.

  With NNX, build ``nnx.Optimizer(model, clnp_partition(inner),
  wrt=nnx.Param)``; ``nnx.Optimizer.update`` passes ``params``, so zero
  entries hold, and :func:`set_partition` takes the optimizer itself. Masks
  are matched to the parameters by path, so a partition computed on a Linen
  dict, an ``nnx.State`` or its pure dict serves any of them.

  Args:
    inner: the optimizer to wrap, e.g. ``optax.adam(1e-3)``.
    partition: masks used by ``init`` (the state's masks then take the
      params' layout); ``None`` makes every entry trainable until
      :func:`set_partition` is called.
    mask_gradients: mask the gradient before ``inner`` (see above).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> dense = lambda n_in, n_out: {'kernel': jnp.ones((n_in, n_out)),
    ...                              'bias': jnp.zeros(n_out)}
    >>> params = {'hidden_0': dense(3, 4), 'head_0': dense(4, 2),
    ...           'head_1': dense(4, 2)}
    >>> specs = sc.mlp_layer_specs(params)
    >>> used = {'hidden_0': np.array([True, True, False, False])}
    >>> tx = clnp_partition(optax.adam(1e-3))
    >>> state = set_partition(tx.init(params), sc.compute_partition(
    ...     params, specs, used, task=1))
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> [round(float(w), 4) for w in params['hidden_0']['kernel'][0]]
    [1.0, 1.0, 0.999, 0.999]
  """
  inner = optax.with_extra_args_support(inner)
  if partition is not None and not isinstance(partition, Partition):
    raise ConfigError("partition must be a Partition or None")

  def init_fn(params):
    if partition is None:
      trainable = jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)
      zero = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), bool), params)
    else:
      trainable = _fit_like(partition.trainable, params, "trainable")
      zero = _fit_like(partition.zero, params, "zero")
    return ClnpPartitionState(trainable, zero, inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if mask_gradients:
      updates = jax.tree.map(masks_lib.bit_select, state.trainable, updates)
    inner_updates, inner_state = inner.update(updates, state.inner_state,
                                              params, **extra_args)
    # Zero entries win over trainable ones, should a partition mark both.
    if params is None:
      out = jax.tree.map(lambda u, t, z: masks_lib.bit_select(t & ~z, u),
                         inner_updates, state.trainable, state.zero)
    else:
      out = jax.tree.map(
          lambda u, t, z, p: masks_lib.bit_select(
              z, -p.astype(u.dtype), masks_lib.bit_select(t, u)),
          inner_updates, state.trainable, state.zero, params)
    return out, ClnpPartitionState(state.trainable, state.zero, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _with_partition(state: ClnpPartitionState,
                    partition: Partition) -> ClnpPartitionState:
  return state._replace(
      trainable=_fit_like(partition.trainable, state.trainable, "trainable"),
      zero=_fit_like(partition.zero, state.zero, "zero"))


def _is_variable(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def _assign(old: PyTree, new: PyTree) -> None:
  """Writes ``new``'s values into the ``nnx.Variable`` leaves of ``old``."""
  for var, value in zip(jax.tree.leaves(old, is_leaf=_is_variable),
                        jax.tree.leaves(new, is_leaf=_is_variable)):
    var.value = value.value if _is_variable(value) else value


def set_partition(state: Any, partition: Partition) -> Any:
  """Returns ``state`` with the masks of its :func:`clnp_partition` replaced.

  The :class:`ClnpPartitionState` is found with ``optax.tree_utils``
  wherever it sits: the state of :func:`clnp_partition` itself, or inside
  ``optax.chain``, ``optax.multi_transform`` (whose branch sees only its own
  leaves: the others stay ``optax.MaskedNode``), ``optax.inject_hyperparams``,
  ``optax.MultiSteps`` and other optax wrappers, once per
  :func:`clnp_partition` found. The inner optimizer state is kept; reset it
  by calling ``tx.init`` first when a new task starts.

  Masks are matched to the state's by parameter path, so ``partition`` may
  come from :func:`compute_partition` on a Linen params dict, an
  ``nnx.State`` or its pure dict. The state comes back as the kind it was
  given: an optax state stays one (``OptVariable`` leaves of an
  ``nnx.Optimizer``'s ``opt_state`` stay ``OptVariable``), and an
  ``nnx.Optimizer`` is updated in place and returned, as NNX does.

  Args:
    state: an optimizer state containing a :class:`ClnpPartitionState`, or
      an ``nnx.Optimizer`` built on :func:`clnp_partition`.
    partition: the new masks, shaped like the parameters.

  Returns:
    The new state (or the same ``nnx.Optimizer``, its masks replaced).

  Raises:
    ConfigError: the state holds no :func:`clnp_partition` state, or the
      masks' paths or shapes do not match its parameters'.

  Examples:
    >>> dense = lambda n_in, n_out: {'kernel': jnp.ones((n_in, n_out)),
    ...                              'bias': jnp.zeros(n_out)}
    >>> params = {'hidden_0': dense(3, 4), 'head_0': dense(4, 2),
    ...           'head_1': dense(4, 2)}
    >>> specs = sc.mlp_layer_specs(params)
    >>> used = {'hidden_0': np.array([True, True, False, False])}
    >>> tx = optax.chain(optax.clip(1.0), clnp_partition(optax.sgd(0.1)))
    >>> partition = sc.compute_partition(params, specs, used, task=1)
    >>> state = set_partition(tx.init(params), partition)
    >>> bool(state[1].trainable['head_0']['kernel'].any())  # task 0's head
    False
    >>> # In a multi_transform branch (heads trained by plain SGD here):
    >>> tx = optax.multi_transform(
    ...     {'clnp': clnp_partition(optax.adam(1e-3)), 'sgd': optax.sgd(0.1)},
    ...     lambda p: {k: 'sgd' if k.startswith('head') else 'clnp' for k in p})
    >>> state = set_partition(tx.init(params), partition)
    >>> masks = state.inner_states['clnp'].inner_state.trainable
    >>> int(masks['hidden_0']['kernel'].sum()), masks['head_0']
    (6, MaskedNode())
  """
  if isinstance(state, nnx.Optimizer):
    old = state.opt_state
    _assign(old, set_partition(old, partition))
    return state
  found = optax.tree_utils.tree_get_all_with_path(
      state, ClnpPartitionState.__name__)
  found = [(path, node) for path, node in found
           if isinstance(node, ClnpPartitionState)]
  if not found:
    raise ConfigError("set_partition: the state holds no clnp_partition "
                      f"state; got {type(state).__name__}")
  for path, node in found:
    state = optax.tree_utils.tree_set(
        state, lambda p, _, where=path: p == where,
        **{ClnpPartitionState.__name__: _with_partition(node, partition)})
  return state
