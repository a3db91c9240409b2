"""CLNP's partition: which parameters a new task may train, which stay zero.

:func:`compute_partition` turns the per-layer ``used`` unit vectors into a
:class:`Partition` of per-element ``trainable`` and ``zero`` masks.

Weight partition of a kernel ``W[..., j, k]`` (input unit ``j``, output unit
``k``), with network inputs always used:

* active (``k`` used, ``j`` used): frozen;
* interference (``k`` used, ``j`` free): zero and frozen, so free units never
  feed used ones;
* free (``k`` free): trainable; rows from used ``j`` are feature reuse.

Heads. Multi-head (one head per task, ``LayerSpec.role == 'head'``): the
current task's head is fully trainable; an earlier task's head is frozen, and
its rows for units that are free now are zero (they were zeroed when that task
was committed and, frozen, stay zero when later tasks recruit those units);
later tasks' heads are frozen until their turn. Single-head
(``role == 'shared_head'``): one shared output layer whose rows from used
units are frozen and rows from free units trainable; its bias trains on the
first task only. Task ``t`` reads the shared head through a gate over the last
hidden layer, ``logits_t = (h * gate_t) @ W + b`` with ``gate_t`` the units
used after task ``t`` was committed (all units while ``t`` trains), see
:func:`single_head_gate`; units recruited later are gated off for task ``t``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparcl_jax.clnp.specs import (LayerSpec, PyTree, UsedUnits, _hidden,
                                   _leaf)
from sparcl_jax.errors import ConfigError, SparclError
from sparcl_jax.paths import flatten_to_dict, map_with_paths

_UNCOVERED = ("error", "freeze", "train")


class NoFreeUnitsError(SparclError):
  """A layer has no free units left to train a new task on.

  Examples:
    >>> params = {'hidden_0': {'kernel': jnp.ones((3, 2))},
    ...           'head': {'kernel': jnp.ones((2, 1))}}
    >>> full = {'hidden_0': np.ones(2, bool)}
    >>> try:
    ...   compute_partition(params, sc.mlp_layer_specs(params), full, task=7)
    ... except NoFreeUnitsError as e:
    ...   print(e)  # doctest: +ELLIPSIS
    layer 'hidden_0' has no free units left for task 7; ...
  """


class Partition(NamedTuple):
  """Per-element masks for one task, each a pytree shaped like the params.

  Attributes:
    trainable: bool leaves; ``True`` where the current task may change the
      parameter.
    zero: bool leaves; ``True`` where the parameter must be exactly zero
      (interference entries and cut head rows). Always a subset of frozen.

  Examples:
    >>> dense = lambda n_in, n_out: {'kernel': jnp.ones((n_in, n_out)),
    ...                              'bias': jnp.zeros(n_out)}
    >>> params = {'hidden_0': dense(3, 4), 'head_0': dense(4, 2),
    ...           'head_1': dense(4, 2)}
    >>> specs = sc.mlp_layer_specs(params)
    >>> used = {'hidden_0': np.array([True, True, False, False])}
    >>> part = compute_partition(params, specs, used, task=1)
    >>> sum(int(m.sum()) for m in jax.tree.leaves(part.trainable))
    18
  """

  trainable: PyTree
  zero: PyTree


def init_used(params: PyTree,
              specs: Sequence[LayerSpec]) -> dict[str, np.ndarray]:
  """Returns the ``used`` dict before the first task: every unit free.

  Args:
    params: the params pytree.
    specs: layer specs.

  Returns:
    ``{layer name: bool[units]}``, all ``False``.

  Examples:
    >>> params = {'hidden_0': {'kernel': jnp.ones((3, 4))},
    ...           'head': {'kernel': jnp.ones((4, 2))}}
    >>> used = init_used(params, sc.mlp_layer_specs(params))
    >>> {name: u.tolist() for name, u in used.items()}
    {'hidden_0': [False, False, False, False]}
  """
  flat = flatten_to_dict(params)
  return {s.name: np.zeros(_leaf(flat, s.kernel_path, s).shape[-1], bool)
          for s in _hidden(specs)}


def _used_vector(used: UsedUnits, name: str) -> np.ndarray:
  if name not in used:
    raise ConfigError(f"used units given for {sorted(used)}, missing layer "
                      f"{name!r}")
  return np.asarray(used[name], bool)


def _input_rows(spec: LayerSpec, used: UsedUnits, kshape) -> np.ndarray:
  """Per-kernel-row used flags: one per input unit, tiled after a flatten."""
  n_rows = kshape[-2]
  if spec.input_layer is None:
    return np.ones(n_rows, bool)
  u = _used_vector(used, spec.input_layer)
  rows = np.tile(u, spec.spatial) if spec.kind == "flatten_dense" else u
  if rows.shape[0] != n_rows:
    raise ConfigError(f"LayerSpec {spec.name!r}: kernel has {n_rows} input "
                      f"rows but {spec.input_layer!r} gives {rows.shape[0]} "
                      f"(spatial={spec.spatial})")
  return rows


def _out_units(spec: LayerSpec, used: UsedUnits, kshape) -> np.ndarray:
  u = _used_vector(used, spec.name)
  if u.shape[0] != kshape[-1]:
    raise ConfigError(f"LayerSpec {spec.name!r}: kernel has {kshape[-1]} "
                      f"units but used has {u.shape[0]}")
  return u


def _grid(rows: np.ndarray, cols: np.ndarray, kshape) -> np.ndarray:
  """Outer AND of row and column flags, broadcast over conv window axes."""
  return np.broadcast_to(rows[:, None] & cols[None, :], kshape).copy()


def _layer_masks(spec: LayerSpec, used: UsedUnits, kshape, task):
  """(kernel trainable, kernel zero, bias trainable) for one spec."""
  n_out = kshape[-1]
  ones_out, zeros_out = np.ones(n_out, bool), np.zeros(n_out, bool)
  rows = _input_rows(spec, used, kshape)
  if spec.role == "hidden":
    out = _out_units(spec, used, kshape)
    return (_grid(np.ones_like(rows), ~out, kshape), _grid(~rows, out, kshape),
            ~out)
  if spec.role == "shared_head":
    # Rows from used units serve earlier tasks; the bias only while none is.
    return (_grid(~rows, ones_out, kshape), np.zeros(kshape, bool),
            ones_out if not rows.any() else zeros_out)
  if task is None:
    raise ConfigError("compute_partition needs the current task index when "
                      "the specs have per-task heads")
  if spec.task == task:
    return np.ones(kshape, bool), np.zeros(kshape, bool), ones_out
  if spec.task < task:
    return np.zeros(kshape, bool), _grid(~rows, ones_out, kshape), zeros_out
  return np.zeros(kshape, bool), np.zeros(kshape, bool), zeros_out


def _check_capacity(specs: Sequence[LayerSpec], used: UsedUnits, task) -> None:
  for spec in _hidden(specs):
    if np.all(_used_vector(used, spec.name)):
      where = "" if task is None else f" for task {task}"
      raise NoFreeUnitsError(
          f"layer {spec.name!r} has no free units left{where}; use a wider "
          "network or a larger graceful-forgetting margin")


def compute_partition(params: PyTree,
                      specs: Sequence[LayerSpec],
                      used: UsedUnits,
                      task: Optional[int] = None,
                      *,
                      uncovered: str = "error",
                      check_capacity: bool = True) -> Partition:
  """Computes the trainable/zero masks for training a new task.

  Args:
    params: the params pytree (any nesting; masks mirror it): a Linen dict,
      an ``nnx.State`` such as ``nnx.state(model, nnx.Param)``, or its pure
      dict.
    specs: layer specs covering the kernels and biases.
    used: ``{hidden layer name: bool[units]}``, units claimed by earlier tasks.
    task: index of the task about to be trained; required with per-task heads.
    uncovered: what to do with leaves no spec names: ``'error'`` (default),
      ``'freeze'`` or ``'train'``.
    check_capacity: raise :class:`NoFreeUnitsError` when a hidden layer has no
      free unit.

  Returns:
    A :class:`Partition` with bool leaves shaped like ``params``, of the
    same kind: an ``nnx.State`` of ``nnx.Param`` for an ``nnx.State``. Either
    kind goes into :func:`clnp_partition` and :func:`set_partition`, also of
    an ``nnx.Optimizer``.

  Raises:
    NoFreeUnitsError: a hidden layer is full.
    ConfigError: specs, ``used`` and params disagree.

  Examples:
    >>> dense = lambda n_in, n_out: {'kernel': jnp.ones((n_in, n_out)),
    ...                              'bias': jnp.zeros(n_out)}
    >>> params = {'hidden_0': dense(3, 4), 'head_0': dense(4, 2),
    ...           'head_1': dense(4, 2)}
    >>> specs = sc.mlp_layer_specs(params)
    >>> used = {'hidden_0': np.array([True, True, False, False])}
    >>> part = compute_partition(params, specs, used, task=1)
    >>> part.trainable['hidden_0']['kernel'][0].tolist()  # free units train
    [False, False, True, True]
    >>> part.zero['head_0']['kernel'][:, 0].tolist()  # task 0 can't read them
    [False, False, True, True]
  """
  if uncovered not in _UNCOVERED:
    raise ConfigError(f"uncovered must be one of {_UNCOVERED}, got "
                      f"{uncovered!r}")
  if check_capacity:
    _check_capacity(specs, used, task)
  flat = flatten_to_dict(params)
  masks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
  for spec in specs:
    kshape = tuple(_leaf(flat, spec.kernel_path, spec).shape)
    k_train, k_zero, b_train = _layer_masks(spec, used, kshape, task)
    masks[spec.kernel_path] = (k_train, k_zero)
    if spec.bias_path is not None:
      bshape = tuple(_leaf(flat, spec.bias_path, spec).shape)
      masks[spec.bias_path] = (np.broadcast_to(b_train, bshape).copy(),
                               np.zeros(bshape, bool))
  missing = sorted(set(flat) - set(masks))
  if missing and uncovered == "error":
    raise ConfigError(f"no LayerSpec covers parameters {missing}; describe "
                      "them or pass uncovered='freeze'/'train'")

  def pick(i):
    def fn(path, leaf):
      if path in masks:
        return jnp.asarray(masks[path][i])
      fill = uncovered == "train" and i == 0
      return jnp.full(jnp.shape(leaf), fill, bool)
    return fn

  return Partition(map_with_paths(pick(0), params),
                   map_with_paths(pick(1), params))


def single_head_gate(used_history: Sequence[UsedUnits], task: int,
                     layer: str, num_units: Optional[int] = None) -> jax.Array:
  """Gate over the last hidden layer for task ``task`` with a shared head.

  Task ``t`` sees the units used after it was committed
  (``used_history[t]``); while ``t`` trains (``t == len(used_history)``) it
  sees every unit, since each unit is then either used or free.

  Args:
    used_history: ``used`` dicts after each committed task, in order.
    task: the task whose logits are computed.
    layer: name of the last hidden layer.
    num_units: layer width; needed only when ``used_history`` is empty.

  Returns:
    float32 vector of 0/1 to multiply the last hidden activations with.

  Examples:
    >>> history = [{'hidden_1': np.array([True, False, True])}]
    >>> gate = single_head_gate(history, task=0, layer='hidden_1')
    >>> gate.tolist()
    [1.0, 0.0, 1.0]
    >>> h, w, b = jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.zeros(4)
    >>> logits = (h * gate) @ w + b
    >>> single_head_gate(history, task=1, layer='hidden_1').tolist()
    [1.0, 1.0, 1.0]
  """
  if task < 0 or task > len(used_history):
    raise ConfigError(f"task {task} is neither committed nor current "
                      f"({len(used_history)} tasks committed)")
  if task < len(used_history):
    return jnp.asarray(_used_vector(used_history[task], layer), jnp.float32)
  if num_units is None:
    if not used_history:
      raise ConfigError("single_head_gate needs num_units before any commit")
    num_units = len(used_history[-1][layer])
  return jnp.ones((num_units,), jnp.float32)
