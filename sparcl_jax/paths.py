"""Names of pytree leaves: the ``'/'``-joined key paths the library speaks.

Masks, sparse filters, CLNP's layer specs and the FLOPs count all name a
parameter by its key path joined with ``'/'`` (``'hidden_0/kernel'``). One
set of helpers makes those names, so a Linen params dict, an ``nnx.State``
and the pure dict of an ``nnx.State`` all give the same names.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax

PyTree = Any


def is_none(x: Any) -> bool:
  """Leaf predicate for masks pytrees, whose dense leaves are None."""
  return x is None


def key_to_str(key: Any) -> str:
  """Returns the plain name of one pytree key-path entry.

  Args:
    key: a ``jax.tree_util`` key entry (DictKey, GetAttrKey, SequenceKey, ...).

  Returns:
    The key as a string, e.g. ``'kernel'`` or ``'0'``.

  Examples:
    >>> key_to_str(jax.tree_util.DictKey('kernel'))
    'kernel'
  """
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_to_str(key_path: tuple[Any, ...]) -> str:
  """Joins a pytree key path with ``'/'``.

  Args:
    key_path: a key path from ``jax.tree_util.tree_flatten_with_path``.

  Returns:
    The ``'/'``-joined path, e.g. ``'layer1_0/conv1/kernel'``. A trailing
    attribute key ``value`` (the array inside an ``nnx.Variable``) is
    dropped, so an ``nnx.State`` and its pure dict give the same paths.

  Examples:
    >>> kp = jax.tree_util.tree_flatten_with_path({'a': {'b': 1}})[0][0][0]
    >>> path_to_str(kp)
    'a/b'
  """
  keys = list(key_path)
  if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and (
      keys[-1].name == 'value'):
    keys = keys[:-1]
  return '/'.join(key_to_str(k) for k in keys)


def flatten_with_paths(tree: PyTree) -> list[tuple[str, Any]]:
  """Lists ``(path, leaf)`` pairs of a pytree, ``None`` leaves skipped.

  Args:
    tree: any pytree.

  Returns:
    A list of ``('/'-joined path, leaf)`` in flattening order.

  Examples:
    >>> flatten_with_paths({'a': 1, 'b': None})
    [('a', 1)]
  """
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(path_to_str(kp), leaf) for kp, leaf in leaves]


def flatten_to_dict(tree: PyTree) -> dict[str, Any]:
  """Maps every leaf's path to the leaf (``None`` leaves skipped).

  Args:
    tree: any pytree (params dict, ``nnx.State``, masks).

  Returns:
    ``{path: leaf}`` in flattening order.

  Examples:
    >>> flatten_to_dict({'dense': {'kernel': 1, 'bias': 2}})
    {'dense/bias': 2, 'dense/kernel': 1}
  """
  return dict(flatten_with_paths(tree))


def map_with_paths(fn: Callable[[str, Any], Any], tree: PyTree) -> PyTree:
  """``jax.tree.map`` whose function also receives each leaf's path.

  Args:
    fn: ``fn(path, leaf) -> new_leaf``.
    tree: any pytree.

  Returns:
    A pytree of the same structure holding ``fn``'s results.

  Examples:
    >>> map_with_paths(lambda path, x: path, {'a': {'b': 0}})
    {'a': {'b': 'a/b'}}
  """
  return jax.tree_util.tree_map_with_path(
      lambda kp, x: fn(path_to_str(kp), x), tree)



def is_none_or_masked(x: Any) -> bool:
  """Leaf predicate: None, or an ``optax.MaskedNode``.

  Inside ``optax.multi_transform`` a ``MaskedNode`` stands for a leaf that
  another of its transforms owns.

  Args:
    x: a pytree node.

  Returns:
    Whether ``x`` is None or a ``MaskedNode``.

  Examples:
    >>> is_none_or_masked(optax.MaskedNode()), is_none_or_masked(0.5)
    (True, False)
  """
  return x is None or isinstance(x, optax.MaskedNode)


def masked_to_none(tree: PyTree) -> PyTree:
  """Replaces every ``optax.MaskedNode`` of a pytree with None.

  Inside ``optax.multi_transform`` a transform sees ``MaskedNode()`` at the
  leaves other transforms own; in a masks or sparsities pytree those leaves
  are dense, and None says so to every consumer.

  Args:
    tree: any pytree.

  Returns:
    The pytree with None where it held a ``MaskedNode``.

  Examples:
    >>> masked_to_none({'a': optax.MaskedNode(), 'b': 1})
    {'a': None, 'b': 1}
  """
  return jax.tree.map(lambda x: None if is_none_or_masked(x) else x, tree,
                      is_leaf=is_none_or_masked)


def find_states(state: Any, cls: type) -> list[tuple[str, Any]]:
  """Finds the nodes of one state class inside any optimizer state.

  Looks through ``optax.chain``, ``optax.multi_transform``,
  ``optax.inject_hyperparams``, ``optax.MultiSteps`` and any other nesting
  of pytrees, an ``nnx.Optimizer`` (or its ``opt_state``) included, with
  ``optax.tree_utils.tree_get_all_with_path``.

  Args:
    state: an optimizer state (or anything holding one).
    cls: the state class, e.g. ``sparcl_jax.TDMState``.

  Returns:
    ``[(path, node)]`` with the path as ``jax.tree_util.keystr`` writes it.

  Examples:
    >>> import sparcl_jax as sc
    >>> p = {'hidden_0': {'kernel': jnp.ones((2, 2))}}
    >>> s = optax.chain(optax.clip(1.0), sc.dgm(0.5)).init(p)
    >>> [path for path, _ in find_states(s, sc.DGMState)]
    ['[1]']
  """
  found = optax.tree_utils.tree_get_all_with_path(
      state, cls.__name__, filtering=lambda _, v: isinstance(v, cls))
  return [(jax.tree_util.keystr(path), node) for path, node in found]
