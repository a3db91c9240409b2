"""Which leaves are sparse, and how sparse each one is.

A *sparse filter* is a predicate ``(path, leaf) -> bool`` over the
``'/'``-joined key paths of a parameter pytree. A *sparsities* pytree has the
structure of the params with a Python float in ``[0, 1)`` at every sparse
leaf and ``None`` at every dense leaf; the distributions here (uniform,
Erdos-Renyi-Kernel) build one from a filter and an overall target.

Kept counts are always exact: a layer of ``n`` weights at sparsity ``s`` keeps
``keep_count(n, s) == round((1 - s) * n)`` weights, whatever the ties.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Union

import jax
import jax.numpy as jnp
import numpy as np

from sparcl_jax.errors import ConfigError
from sparcl_jax.paths import flatten_with_paths, map_with_paths

PyTree = Any
SparseFilter = Callable[[str, Any], bool]
Sparsity = Union[float, jax.Array]


def default_sparse_filter(path: str, leaf: Any) -> bool:
  """Selects the leaves SparCL keeps sparse in the project's models.

  True for 4-D kernels of the two 3x3 convolutions inside residual blocks
  (path contains ``'layer'`` and ends with ``'conv1/kernel'`` or
  ``'conv2/kernel'``, no ``'shortcut'``) and for 2-D kernels of MLP hidden
  layers (``'hidden_*/kernel'``). The stem conv, shortcut convs, norms, biases
  and heads stay dense.

  Args:
    path: ``'/'``-joined path of the leaf.
    leaf: the leaf (only its ``ndim`` is read).

  Returns:
    Whether the leaf is sparse.

  Examples:
    >>> default_sparse_filter('layer1_0/conv1/kernel', jnp.zeros((3, 3, 4, 4)))
    True
    >>> default_sparse_filter('conv1/kernel', jnp.zeros((3, 3, 3, 4)))
    False
  """
  ndim = len(getattr(leaf, 'shape', ()))
  parts = path.split('/')
  if ndim == 4 and 'shortcut' not in path:
    in_block = any(p.startswith('layer') for p in parts[:-2])
    if in_block and (path.endswith('conv1/kernel') or
                     path.endswith('conv2/kernel')):
      return True
  if ndim == 2 and len(parts) >= 2 and parts[-1] == 'kernel':
    return parts[-2].startswith('hidden_')
  return False


def filter_from_regex(pattern: str, min_ndim: int = 2) -> SparseFilter:
  """Builds a sparse filter from a regular expression over leaf paths.

  Args:
    pattern: regex matched with ``re.search`` against the ``'/'``-joined path.
    min_ndim: leaves with fewer dimensions (biases, norm scales) never match.

  Returns:
    A predicate ``(path, leaf) -> bool``.

  Raises:
    ConfigError: if the pattern does not compile.

  Examples:
    >>> f = filter_from_regex(r'dense_\\d+/kernel$')
    >>> f('dense_1/kernel', jnp.zeros((3, 4)))
    True
  """
  try:
    compiled = re.compile(pattern)
  except re.error as e:
    raise ConfigError(f'Invalid sparse-layer regex {pattern!r}: {e}.') from e

  def predicate(path: str, leaf: Any) -> bool:
    ndim = len(getattr(leaf, 'shape', ()))
    return ndim >= min_ndim and compiled.search(path) is not None

  return predicate


def _check_sparsity(sparsity: float, name: str = 'sparsity') -> float:
  sparsity = float(sparsity)
  if not 0.0 <= sparsity < 1.0:
    raise ConfigError(f'{name} must be in [0, 1), got {sparsity}.')
  return sparsity


def keep_count(size: int, sparsity: float) -> int:
  """Number of weights a layer keeps at a given sparsity.

  Args:
    size: number of weights in the layer.
    sparsity: fraction of zeros in ``[0, 1]``.

  Returns:
    ``round((1 - sparsity) * size)`` (Python rounding), clipped to
    ``[0, size]``.

  Examples:
    >>> keep_count(1000, 0.75)
    250
  """
  return int(min(max(round((1.0 - float(sparsity)) * size), 0), size))


def keep_count_traceable(size: int, sparsity: Sparsity
                         ) -> Union[int, jax.Array]:
  """``keep_count`` that also accepts a traced sparsity.

  Args:
    size: number of weights in the layer.
    sparsity: a Python number, or a (possibly traced) 0-d array.

  Returns:
    ``keep_count(size, sparsity)`` for a Python number; for an array, an
    int32 scalar from the same formula in float32 arithmetic.

  Examples:
    >>> keep_count_traceable(1000, 0.75)
    250
    >>> keep_count_traceable(1000, jnp.float32(0.75))
    Array(250, dtype=int32)
  """
  if isinstance(sparsity, (int, float, np.floating, np.integer)):
    return keep_count(size, float(sparsity))
  kept = jnp.round((1.0 - jnp.asarray(sparsity, jnp.float32)) * size)
  return jnp.clip(kept, 0, size).astype(jnp.int32)


def require_selection(params: PyTree, sparse_filter: SparseFilter,
                      who: str, what: str = 'nothing would be sparse'
                      ) -> list[str]:
  """The paths a filter selects; raises if it selects none.

  A filter that selects nothing would make a transform a silent no-op
  (e.g. the default filter on a model whose layers are named ``conv``,
  ``fc``, ``out``), so the transforms call this when they are initialised.

  Args:
    params: parameter pytree (arrays or ``ShapeDtypeStruct``).
    sparse_filter: predicate choosing the sparse leaves.
    who: the caller's name, for the message (``'tdm'``, ``'dgm'``).
    what: what selecting nothing would mean, for the message.

  Returns:
    The selected ``'/'``-joined paths, in flattening order.

  Raises:
    ConfigError: the filter selects no leaf; the one-line message lists
      (some of) the paths seen and how to choose layers.

  Examples:
    >>> p = {'fc': {'kernel': jnp.ones((3, 4)), 'bias': jnp.ones(4)}}
    >>> require_selection(p, filter_from_regex(r'kernel$'), 'tdm')
    ['fc/kernel']
    >>> require_selection(p, default_sparse_filter, 'tdm')
    Traceback (most recent call last):
    ...
    sparcl_jax.errors.ConfigError: tdm: sparse_filter selects no parameter, so nothing would be sparse; paths seen: fc/bias, fc/kernel. Choose the layers with sparse_filter=sc.filter_from_regex(...) over these paths, e.g. sc.filter_from_regex(r'kernel$') for every kernel of 2 or more dimensions (the default filter takes only 'hidden_*/kernel' and ResNet blocks' conv1/conv2 kernels).
  """
  leaves = flatten_with_paths(params)
  selected = [path for path, leaf in leaves if sparse_filter(path, leaf)]
  if not selected:
    paths = [path for path, _ in leaves]
    shown = ', '.join(paths[:8])
    if len(paths) > 8:
      shown += f', ... ({len(paths)} in all)'
    raise ConfigError(
        f'{who}: sparse_filter selects no parameter, so {what}; paths '
        f'seen: {shown or "none"}. Choose the layers with '
        "sparse_filter=sc.filter_from_regex(...) over these paths, e.g. "
        "sc.filter_from_regex(r'kernel$') for every kernel of 2 or more "
        "dimensions (the default filter takes only 'hidden_*/kernel' and "
        "ResNet blocks' conv1/conv2 kernels).")
  return selected


def _map_selected(fn: Callable[[str, Any], Any], tree: PyTree,
                  sparse_filter: SparseFilter) -> PyTree:
  """Maps ``fn(path, leaf)`` over selected leaves, ``None`` elsewhere."""
  return map_with_paths(
      lambda path, x: fn(path, x) if sparse_filter(path, x) else None, tree)


def uniform_sparsities(params: PyTree, sparse_filter: SparseFilter,
                       sparsity: float) -> PyTree:
  """Gives every selected leaf the same sparsity.

  Args:
    params: parameter pytree (arrays or ``ShapeDtypeStruct``).
    sparse_filter: predicate choosing the sparse leaves.
    sparsity: target sparsity in ``[0, 1)``.

  Returns:
    A sparsities pytree: ``sparsity`` at selected leaves, ``None`` elsewhere.

  Raises:
    ConfigError: if ``sparsity`` is outside ``[0, 1)``.

  Examples:
    >>> p = {'hidden_0': {'kernel': jnp.ones((4, 4))},
    ...      'head': {'kernel': jnp.ones((4, 2))}}
    >>> uniform_sparsities(p, default_sparse_filter, 0.5)
    {'head': {'kernel': None}, 'hidden_0': {'kernel': 0.5}}
  """
  sparsity = _check_sparsity(sparsity)
  return _map_selected(lambda _, x: sparsity, params, sparse_filter)


def erk_sparsities(params: PyTree, sparse_filter: SparseFilter,
                   sparsity: float) -> PyTree:
  """Erdos-Renyi-Kernel sparsities with the requested overall sparsity.

  A layer of shape ``(d_1, ..., d_k)`` gets density proportional to
  ``sum(d_i) / prod(d_i)``; one factor scales all densities so that the kept
  weights over the selected layers are ``(1 - sparsity)`` of their total.
  Layers whose density would exceed 1 are made dense (sparsity 0) one at a
  time, largest raw density first, and the rest rescaled.

  Args:
    params: parameter pytree (arrays or ``ShapeDtypeStruct``).
    sparse_filter: predicate choosing the sparse leaves.
    sparsity: overall target sparsity over the selected leaves, in ``[0, 1)``.

  Returns:
    A sparsities pytree: a float per selected leaf, ``None`` elsewhere.

  Raises:
    ConfigError: if ``sparsity`` is outside ``[0, 1)``.

  Examples:
    >>> p = {'hidden_0': {'kernel': jnp.ones((64, 64))},
    ...      'hidden_1': {'kernel': jnp.ones((64, 4))}}
    >>> s = erk_sparsities(p, default_sparse_filter, 0.9)
    >>> s['hidden_1']['kernel'] < s['hidden_0']['kernel']
    True
  """
  sparsity = _check_sparsity(sparsity)
  selected = [(path, int(np.prod(leaf.shape)), leaf.shape)
              for path, leaf in flatten_with_paths(params)
              if sparse_filter(path, leaf)]
  total = sum(n for _, n, _ in selected)
  raw = {path: sum(shape) / n for path, n, shape in selected}
  dense: set[str] = set()
  target_kept = (1.0 - sparsity) * total
  while True:
    dense_size = sum(n for path, n, _ in selected if path in dense)
    weighted = sum(raw[path] * n for path, n, _ in selected
                   if path not in dense)
    if weighted == 0:
      scale = 0.0
      break
    scale = (target_kept - dense_size) / weighted
    over = [path for path, _, _ in selected
            if path not in dense and scale * raw[path] > 1.0]
    if not over:
      break
    dense.add(max(over, key=lambda p: raw[p]))
  result = {path: 0.0 if path in dense else
            float(min(max(1.0 - scale * raw[path], 0.0), 1.0))
            for path, _, _ in selected}
  return _map_selected(lambda path, _: result[path], params, sparse_filter)


def sparsities_by_path(sparsities: PyTree) -> dict[str, float]:
  """Flattens a sparsities (or any float) pytree into ``{path: value}``.

  Args:
    sparsities: pytree with floats at some leaves and ``None`` elsewhere.

  Returns:
    A dict from ``'/'``-joined path to float, dense leaves omitted.

  Examples:
    >>> sparsities_by_path({'a': {'kernel': 0.5}, 'b': None})
    {'a/kernel': 0.5}
  """
  return {path: float(v) for path, v in flatten_with_paths(sparsities)}


__all__ = [
    'SparseFilter', 'Sparsity', 'default_sparse_filter', 'erk_sparsities',
    'filter_from_regex', 'keep_count', 'keep_count_traceable',
    'require_selection', 'sparsities_by_path', 'uniform_sparsities',
]
