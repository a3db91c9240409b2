"""How a checkpoint stores a pytree's leaves: host copies and placement.

Every leaf is stored as a host numpy array: PRNG keys as their raw ``uint32``
data, arrays sharded over several processes gathered first. Host arrays are
written by process 0 alone in a multi-process run (orbax writes device arrays
from every process that holds a shard) and restore under any placement, so a
run may resume on other devices: a restored array takes the sharding, the
committedness and the key type of the matching leaf of a fresh tree.

Each leaf is also described by its path, stored shape, stored dtype and key
kind; :mod:`~sparcl_jax.training.checkpoint` saves the descriptions beside the
arrays and refuses, before it reads an array, a checkpoint whose
descriptions differ from the fresh tree's (:func:`first_difference` says
where).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _is_key(leaf: Any) -> bool:
  return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(
      leaf.dtype, jax.dtypes.prng_key)


def _storable(leaf: Any) -> jax.Array:
  """PRNG keys as their raw uint32 data; everything else as a jax array."""
  if _is_key(leaf):
    return jax.random.key_data(leaf)
  return leaf if isinstance(leaf, jax.Array) else jnp.asarray(leaf)


def flatten_with_paths(tree: Any) -> tuple[list[str], list[Any], Any]:
  """The leaves of a pytree with their key paths, and its treedef.

  Args:
    tree: any pytree (None leaves count as empty subtrees).

  Returns:
    ``(paths, leaves, treedef)``: the paths as ``jax.tree_util.keystr``
    strings, in the order of ``leaves``.

  Examples:
    >>> paths, leaves, _ = flatten_with_paths({"b": 1, "a": [2, None]})
    >>> paths, leaves
    (["['a'][0]", "['b']"], [2, 1])
  """
  with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
  paths = [jax.tree_util.keystr(path) for path, _ in with_paths]
  return paths, [leaf for _, leaf in with_paths], treedef


def describe_leaves(paths: Sequence[str],
                    leaves: Sequence[Any]) -> list[list]:
  """What a checkpoint records of each leaf, to check a restore against.

  Args:
    paths: the leaves' paths (:func:`flatten_with_paths`).
    leaves: the leaves.

  Returns:
    ``[[path, stored shape, stored dtype, key kind]]``; the key kind is the
    PRNG implementation's name for a key, ``""`` for any other leaf.

  Examples:
    >>> describe_leaves(["w", "rng"], [jnp.ones((2, 3)), jax.random.key(0)])
    [['w', [2, 3], 'float32', ''], ['rng', [2], 'uint32', 'threefry2x32']]
  """
  out = []
  for path, leaf in zip(paths, leaves):
    kind = str(jax.random.key_impl(leaf)) if _is_key(leaf) else ""
    stored = _storable(leaf)
    out.append([path, list(stored.shape), str(stored.dtype), kind])
  return out


def first_difference(saved: list, expected: list) -> str:
  """Where two lists of :func:`describe_leaves` differ, said in words.

  Args:
    saved: the descriptions a checkpoint holds.
    expected: this run's.

  Returns:
    The first difference (the number of arrays, or one array's dtype and
    shape); "its format version differs" when the lists are equal.

  Examples:
    >>> first_difference([["w", [2], "float32", ""]],
    ...                  [["w", [3], "float32", ""]])
    'array w is float32[2] there, float32[3] here'
  """
  if len(saved) != len(expected):
    return (f"it holds {len(saved)} arrays, this run has "
            f"{len(expected)}")
  for (path, shape, dtype, kind), want in zip(saved, expected):
    if [path, shape, dtype, kind] != want:
      return (f"array {path or '<root>'} is {dtype}{shape} there, "
              f"{want[2]}{want[1]} here")
  return "its format version differs"


def to_host(leaf: Any) -> np.ndarray:
  """A leaf's value as a host array, the form every checkpoint stores.

  An array sharded over several processes is gathered from all of them; a
  replicated one is read from this process's copy.

  Args:
    leaf: an array, a PRNG key array or a Python or numpy scalar.

  Returns:
    The host array (a key's raw ``uint32`` data).

  Examples:
    >>> to_host(jax.random.key(0))
    array([0, 0], dtype=uint32)
  """
  stored = _storable(leaf)
  if stored.is_fully_addressable:
    return np.asarray(stored)
  if stored.is_fully_replicated:
    return np.asarray(stored.addressable_data(0))
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return multihost_utils.process_allgather(stored, tiled=True)


def empty_host_like(leaf: Any) -> np.ndarray:
  """An empty host array of the shape and dtype ``leaf`` is stored as.

  Args:
    leaf: a leaf of the tree to restore into.

  Returns:
    The uninitialised host array orbax restores into.

  Examples:
    >>> empty_host_like(jax.random.key(0)).dtype
    dtype('uint32')
  """
  stored = _storable(leaf)
  return np.empty(stored.shape, stored.dtype)


def place_like(host: np.ndarray, like: Any) -> Any:
  """A restored host array, placed and typed like ``like``.

  Args:
    host: the stored value (:func:`to_host`'s form).
    like: the matching leaf of a fresh tree: a sharded array gives its
      sharding across processes, a committed one its devices, a key its PRNG
      implementation.

  Returns:
    The value as a jax array (or key array) placed like ``like``.

  Examples:
    >>> key = place_like(to_host(jax.random.key(7)), jax.random.key(0))
    >>> bool(jnp.all(jax.random.key_data(key) ==
    ...               jax.random.key_data(jax.random.key(7))))
    True
  """
  stored = _storable(like)
  if not stored.is_fully_addressable:
    value = jax.make_array_from_callback(host.shape, stored.sharding,
                                         lambda index: host[index])
  elif stored.committed:
    value = jax.device_put(host, stored.sharding)
  else:
    value = jnp.asarray(host)
  if _is_key(like):
    value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(like))
  return value
