"""CLNP: continual learning via neural pruning, as partition masks.

Golkar, Kagan and Cho (2019) train each task with an L1 penalty, prune the
units whose activity is low, freeze the units a task keeps ("used") and train
the next task on the remaining ("free") units only. This module holds the
pieces as pure functions over parameter pytrees, knowing nothing of the model
beyond an explicit list of :class:`LayerSpec` entries:

* :func:`compute_partition` turns the per-layer ``used`` unit vectors into a
  :class:`Partition` of per-element ``trainable`` and ``zero`` masks;
* :func:`clnp_partition` is an optax wrapper that applies those masks to the
  gradient going into any optimizer and to the update coming out of it, so
  frozen entries stay bit-identical and interference entries exactly zero;
* :func:`l1_penalty`, :func:`unit_activity`, :func:`prune_by_threshold`,
  :func:`graceful_forgetting_search`, :func:`commit_task` and
  :func:`capacity_report` cover training, pruning and the diagnostics.

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

import dataclasses
import re
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparcl_jax import masks as masks_lib
from sparcl_jax.errors import ConfigError, SparclError

PyTree = Any
UsedUnits = Mapping[str, np.ndarray]

_KINDS = ("dense", "conv", "flatten_dense")
_ROLES = ("hidden", "head", "shared_head")
_READINGS = ("mean", "firing_rate")
_UNCOVERED = ("error", "freeze", "train")
# Flax forbids sowing under a submodule's name; project models add this.
_ACT_SUFFIX = "_act"

# Steps of 0.01: with thousands of units a coarser grid overshoots the margin
# by hundreds of units per task, and each candidate costs one validation pass.
DEFAULT_QUANTILES = tuple(round(1.0 - i / 100, 2) for i in range(101))


class NoFreeUnitsError(SparclError):
  """A layer has no free units left to train a new task on.

  Example:
    >>> params = {'hidden_0': {'kernel': jnp.ones((3, 2))},
    ...           'head': {'kernel': jnp.ones((2, 1))}}
    >>> full = {'hidden_0': np.ones(2, bool)}
    >>> try:
    ...   compute_partition(params, mlp_layer_specs(params), full, task=7)
    ... except NoFreeUnitsError as e:
    ...   print(e)  # doctest: +ELLIPSIS
    layer 'hidden_0' has no free units left for task 7; ...
  """


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """How one layer's kernel connects units of two layers.

  Attributes:
    name: unit-layer name, the key of this layer in ``used`` dicts and the
      name its post-ReLU activations are sown under.
    kernel_path: ``'/'``-joined path of the kernel leaf in the params pytree.
      Its last axis indexes output units, the one before input units.
    bias_path: path of the bias leaf, or ``None`` if the layer has no bias.
    input_layer: name of the layer whose units feed this one, or ``None`` for
      the network input (always counted as used).
    kind: ``'dense'`` (kernel ``[in, out]``), ``'conv'`` (kernel
      ``[..., in, out]``, filters are units) or ``'flatten_dense'`` (dense
      after an NHWC flatten: kernel row ``p * C + c`` reads channel ``c`` at
      spatial position ``p``).
    spatial: number of spatial positions per channel for ``'flatten_dense'``.
    role: ``'hidden'`` (units that get used/free), ``'head'`` (one head per
      task, see ``task``) or ``'shared_head'`` (single head for all tasks).
    task: for ``role == 'head'``, the task this head belongs to.

  Example:
    >>> spec = LayerSpec('hidden_1', 'hidden_1/kernel', 'hidden_1/bias',
    ...                  'hidden_0')
    >>> spec.kind, spec.role
    ('dense', 'hidden')
  """

  name: str
  kernel_path: str
  bias_path: Optional[str]
  input_layer: Optional[str]
  kind: str = "dense"
  spatial: int = 1
  role: str = "hidden"
  task: Optional[int] = None

  def __post_init__(self):
    if self.kind not in _KINDS:
      raise ConfigError(f"LayerSpec {self.name!r}: kind must be one of "
                        f"{_KINDS}, got {self.kind!r}")
    if self.role not in _ROLES:
      raise ConfigError(f"LayerSpec {self.name!r}: role must be one of "
                        f"{_ROLES}, got {self.role!r}")
    if self.spatial < 1:
      raise ConfigError(f"LayerSpec {self.name!r}: spatial must be >= 1, got "
                        f"{self.spatial}")
    if self.role == "head" and (self.task is None or self.task < 0):
      raise ConfigError(f"LayerSpec {self.name!r}: a per-task head needs "
                        "task >= 0")


class Partition(NamedTuple):
  """Per-element masks for one task, each a pytree shaped like the params.

  Attributes:
    trainable: bool leaves; ``True`` where the current task may change the
      parameter.
    zero: bool leaves; ``True`` where the parameter must be exactly zero
      (interference entries and cut head rows). Always a subset of frozen.

  Example:
    >>> dense = lambda n_in, n_out: {'kernel': jnp.ones((n_in, n_out)),
    ...                              'bias': jnp.zeros(n_out)}
    >>> params = {'hidden_0': dense(3, 4), 'head_0': dense(4, 2),
    ...           'head_1': dense(4, 2)}
    >>> specs = mlp_layer_specs(params)
    >>> used = {'hidden_0': np.array([True, True, False, False])}
    >>> part = compute_partition(params, specs, used, task=1)
    >>> sum(int(m.sum()) for m in jax.tree.leaves(part.trainable))
    18
  """

  trainable: PyTree
  zero: PyTree


# ----------------------------------------------------------------------------
# Pytree path helpers.


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _path_str(path) -> str:
  return "/".join(_key_name(k) for k in path)


def _flat(params: PyTree) -> dict[str, Any]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  return {_path_str(p): leaf for p, leaf in leaves}


def _map_by_path(fn: Callable[[str, Any], Any], tree: PyTree) -> PyTree:
  return jax.tree_util.tree_map_with_path(lambda p, x: fn(_path_str(p), x),
                                          tree)


def _leaf(flat: Mapping[str, Any], path: str, spec: LayerSpec):
  if path not in flat:
    raise ConfigError(f"LayerSpec {spec.name!r}: no parameter at path "
                      f"{path!r}; known paths: {sorted(flat)}")
  return flat[path]


# ----------------------------------------------------------------------------
# Layer descriptions.


def _task_heads(node: Any, prefix: str) -> list[str]:
  names = [k for k in node.keys() if re.fullmatch(r"head_\d+", k)]
  return [prefix + k for k in sorted(names, key=lambda k: int(k[5:]))]


def _detect_heads(params: PyTree) -> tuple[list[str], bool]:
  """Finds heads at ``head_<t>``, ``head/head_<t>`` or a shared ``head``."""
  per_task = _task_heads(params, "")
  if per_task:
    return per_task, False
  if "head" not in params.keys():
    return [], False
  nested = _task_heads(params["head"], "head/")
  return (nested, False) if nested else (["head"], True)


def chain_layer_specs(names: Sequence[str],
                      params: PyTree,
                      heads: Sequence[str] = (),
                      *,
                      shared_head: bool = False) -> tuple[LayerSpec, ...]:
  """Describes a plain chain of layers followed by optional heads.

  Each layer reads the previous one (the first reads the network input). The
  kind comes from the kernel: rank 4 is ``'conv'``; rank 2 after a conv is
  ``'flatten_dense'`` with ``spatial = rows // channels``; else ``'dense'``.

  Args:
    names: hidden layer names in forward order; parameters live at
      ``<name>/kernel`` and ``<name>/bias``.
    params: the params pytree (used for shapes only).
    heads: head names; with ``shared_head=False`` the i-th is task i's head.
    shared_head: whether ``heads`` is one head shared by every task.

  Returns:
    A tuple of :class:`LayerSpec`, hidden layers first.

  Example:
    >>> # Two 3x3 convs on a 2x2 map, flatten, dense_0, a head per task.
    >>> params = {'conv_0': {'kernel': jnp.ones((3, 3, 1, 4))},
    ...           'conv_1': {'kernel': jnp.ones((3, 3, 4, 8))},
    ...           'dense_0': {'kernel': jnp.ones((4 * 8, 16))},
    ...           'head_0': {'kernel': jnp.ones((16, 2))},
    ...           'head_1': {'kernel': jnp.ones((16, 2))}}
    >>> specs = chain_layer_specs(['conv_0', 'conv_1', 'dense_0'], params,
    ...                           heads=['head_0', 'head_1'])
    >>> [(s.kind, s.spatial) for s in specs[2:]]
    [('flatten_dense', 4), ('dense', 1), ('dense', 1)]
    >>> specs[3].role, specs[3].task
    ('head', 0)
  """
  if shared_head and len(heads) != 1:
    raise ConfigError(f"shared_head needs exactly one head, got {list(heads)}")
  flat = _flat(params)
  specs = []
  prev, prev_units, prev_conv = None, None, False
  all_names = list(names) + list(heads)
  for i, name in enumerate(all_names):
    kpath = f"{name}/kernel"
    if kpath not in flat:
      raise ConfigError(f"no kernel at {kpath!r}; known paths: {sorted(flat)}")
    shape = flat[kpath].shape
    bpath = f"{name}/bias" if f"{name}/bias" in flat else None
    kind, spatial = "dense", 1
    if len(shape) == 4:
      kind = "conv"
    elif prev_conv:
      if shape[0] % prev_units:
        raise ConfigError(f"{name!r}: {shape[0]} kernel rows are not a "
                          f"multiple of {prev_units} channels of {prev!r}")
      kind, spatial = "flatten_dense", shape[0] // prev_units
    if i < len(names):
      role, task = "hidden", None
    elif shared_head:
      role, task = "shared_head", None
    else:
      role, task = "head", i - len(names)
    specs.append(LayerSpec(name, kpath, bpath, prev, kind, spatial, role, task))
    if role == "hidden":
      prev, prev_units, prev_conv = name, shape[-1], kind == "conv"
  return tuple(specs)


def mlp_layer_specs(params: PyTree) -> tuple[LayerSpec, ...]:
  """Describes the project MLP: ``hidden_0..`` then its head(s).

  Args:
    params: MLP params with top-level keys ``hidden_<i>`` and either one shared
      ``head`` (``head/kernel``) or per-task heads, at ``head_<t>`` or at
      ``head/head_<t>``.

  Returns:
    The layer specs (see :func:`chain_layer_specs`).

  Example:
    >>> from sparcl_jax.models.mlp import MLP
    >>> variables = MLP((4, 3), 2).init(jax.random.key(0), jnp.zeros((1, 5)))
    >>> specs = mlp_layer_specs(variables['params'])
    >>> [(s.name, s.role) for s in specs]
    [('hidden_0', 'hidden'), ('hidden_1', 'hidden'), ('head', 'shared_head')]
  """
  hidden = sorted((k for k in params.keys() if re.fullmatch(r"hidden_\d+", k)),
                  key=lambda k: int(k.split("_")[1]))
  heads, shared = _detect_heads(params)
  return chain_layer_specs(hidden, params, heads, shared_head=shared)


def cnn_layer_specs(params: PyTree) -> tuple[LayerSpec, ...]:
  """Describes the project Zenke CNN: ``conv_<i>``, ``dense_<i>``, heads.

  Args:
    params: CNN params with ``conv_0..conv_3``, ``dense_0`` and heads.

  Returns:
    The layer specs; ``dense_0`` is a ``'flatten_dense'`` layer.

  Example:
    >>> from sparcl_jax.models.cnn import ZenkeCNN
    >>> variables = jax.eval_shape(  # shapes are all it reads
    ...     ZenkeCNN(10).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    >>> specs = cnn_layer_specs(variables['params'])
    >>> [s.name for s in specs]
    ['conv_0', 'conv_1', 'conv_2', 'conv_3', 'dense_0', 'head']
    >>> specs[4].kind, specs[4].spatial
    ('flatten_dense', 36)
  """
  def ordered(prefix):
    return sorted((k for k in params.keys()
                   if re.fullmatch(prefix + r"_\d+", k)),
                  key=lambda k: int(k.split("_")[1]))
  heads, shared = _detect_heads(params)
  return chain_layer_specs(ordered("conv") + ordered("dense"), params, heads,
                           shared_head=shared)


def _hidden(specs: Sequence[LayerSpec]) -> list[LayerSpec]:
  return [s for s in specs if s.role == "hidden"]


def init_used(params: PyTree,
              specs: Sequence[LayerSpec]) -> dict[str, np.ndarray]:
  """Returns the ``used`` dict before the first task: every unit free.

  Args:
    params: the params pytree.
    specs: layer specs.

  Returns:
    ``{layer name: bool[units]}``, all ``False``.

  Example:
    >>> params = {'hidden_0': {'kernel': jnp.ones((3, 4))},
    ...           'head': {'kernel': jnp.ones((4, 2))}}
    >>> used = init_used(params, mlp_layer_specs(params))
    >>> {name: u.tolist() for name, u in used.items()}
    {'hidden_0': [False, False, False, False]}
  """
  flat = _flat(params)
  return {s.name: np.zeros(_leaf(flat, s.kernel_path, s).shape[-1], bool)
          for s in _hidden(specs)}


# ----------------------------------------------------------------------------
# Partition.


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
    params: the params pytree (any nesting; masks mirror it).
    specs: layer specs covering the kernels and biases.
    used: ``{hidden layer name: bool[units]}``, units claimed by earlier tasks.
    task: index of the task about to be trained; required with per-task heads.
    uncovered: what to do with leaves no spec names: ``'error'`` (default),
      ``'freeze'`` or ``'train'``.
    check_capacity: raise :class:`NoFreeUnitsError` when a hidden layer has no
      free unit.

  Returns:
    A :class:`Partition` with bool leaves shaped like ``params``.

  Raises:
    NoFreeUnitsError: a hidden layer is full.
    ConfigError: specs, ``used`` and params disagree.

  Example:
    >>> dense = lambda n_in, n_out: {'kernel': jnp.ones((n_in, n_out)),
    ...                              'bias': jnp.zeros(n_out)}
    >>> params = {'hidden_0': dense(3, 4), 'head_0': dense(4, 2),
    ...           'head_1': dense(4, 2)}
    >>> specs = mlp_layer_specs(params)
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
  flat = _flat(params)
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

  return Partition(_map_by_path(pick(0), params), _map_by_path(pick(1), params))


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

  Example:
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


# ----------------------------------------------------------------------------
# The optax transform.


class ClnpPartitionState(NamedTuple):
  """State of :func:`clnp_partition`: the masks and the inner state.

  Attributes:
    trainable: bool pytree, see :class:`Partition`.
    zero: bool pytree, see :class:`Partition`.
    inner_state: state of the wrapped optimizer.

  Example:
    >>> params = {'w': jnp.ones((2, 3)), 'b': jnp.zeros(3)}
    >>> state = clnp_partition(optax.adam(1e-3)).init(params)
    >>> all(bool(m.all()) for m in jax.tree.leaves(state.trainable))
    True
  """

  trainable: PyTree
  zero: PyTree
  inner_state: Any


def _as_bool_tree(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda m: jnp.asarray(m, bool), tree)


def _check_like(masks: PyTree, ref: PyTree, what: str) -> None:
  if jax.tree.structure(masks) != jax.tree.structure(ref):
    raise ConfigError(f"{what} masks do not have the params' tree structure")
  for m, r in zip(jax.tree.leaves(masks), jax.tree.leaves(ref)):
    if jnp.shape(m) != jnp.shape(r):
      raise ConfigError(f"{what} mask of shape {jnp.shape(m)} does not match "
                        f"parameter shape {jnp.shape(r)}")


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

  Args:
    inner: the optimizer to wrap, e.g. ``optax.adam(1e-3)``.
    partition: masks used by ``init``; ``None`` makes every entry trainable
      until :func:`set_partition` is called.
    mask_gradients: mask the gradient before ``inner`` (see above).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> dense = lambda n_in, n_out: {'kernel': jnp.ones((n_in, n_out)),
    ...                              'bias': jnp.zeros(n_out)}
    >>> params = {'hidden_0': dense(3, 4), 'head_0': dense(4, 2),
    ...           'head_1': dense(4, 2)}
    >>> specs = mlp_layer_specs(params)
    >>> used = {'hidden_0': np.array([True, True, False, False])}
    >>> tx = clnp_partition(optax.adam(1e-3))
    >>> state = set_partition(tx.init(params), compute_partition(
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
      _check_like(partition.trainable, params, "trainable")
      _check_like(partition.zero, params, "zero")
      trainable = _as_bool_tree(partition.trainable)
      zero = _as_bool_tree(partition.zero)
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


def _replace_partition(state, partition: Partition):
  if isinstance(state, ClnpPartitionState):
    _check_like(partition.trainable, state.trainable, "trainable")
    _check_like(partition.zero, state.zero, "zero")
    return state._replace(trainable=_as_bool_tree(partition.trainable),
                          zero=_as_bool_tree(partition.zero)), True
  if isinstance(state, (tuple, list)):
    found, items = False, []
    for item in state:
      new, hit = _replace_partition(item, partition)
      found, items = found or hit, items + [new]
    if hasattr(state, "_fields"):
      return type(state)(*items), found
    return type(state)(items), found
  return state, False


def set_partition(state: Any, partition: Partition) -> Any:
  """Returns ``state`` with the masks of its :func:`clnp_partition` replaced.

  Works on the state of :func:`clnp_partition` itself or on any tuple/chain
  state containing one. The inner optimizer state is kept; reset it by
  calling ``tx.init`` first when a new task starts.

  Args:
    state: an optimizer state containing a :class:`ClnpPartitionState`.
    partition: the new masks, shaped like the old ones.

  Returns:
    The new state.

  Example:
    >>> dense = lambda n_in, n_out: {'kernel': jnp.ones((n_in, n_out)),
    ...                              'bias': jnp.zeros(n_out)}
    >>> params = {'hidden_0': dense(3, 4), 'head_0': dense(4, 2),
    ...           'head_1': dense(4, 2)}
    >>> specs = mlp_layer_specs(params)
    >>> used = {'hidden_0': np.array([True, True, False, False])}
    >>> tx = optax.chain(optax.clip(1.0), clnp_partition(optax.sgd(0.1)))
    >>> partition = compute_partition(params, specs, used, task=1)
    >>> state = set_partition(tx.init(params), partition)
    >>> bool(state[1].trainable['head_0']['kernel'].any())  # task 0's head
    False
  """
  new, found = _replace_partition(state, partition)
  if not found:
    raise ConfigError("set_partition: the state holds no clnp_partition state")
  return new


# ----------------------------------------------------------------------------
# Training helpers.


def l1_penalty(params: PyTree,
               trainable_masks: Union[PyTree, Partition, None],
               *,
               include_bias: bool = False) -> jax.Array:
  """Sums ``|w|`` over the trainable entries of the kernels.

  Leaves of rank <= 1 (biases, scales) are skipped unless ``include_bias``;
  the paper is silent on biases (?), hence the default.

  Args:
    params: the params pytree.
    trainable_masks: the ``trainable`` masks, or a whole :class:`Partition`;
      ``None`` sums over every entry, which gives the trainable entries the
      same gradient and is cheaper when :func:`clnp_partition` discards the
      frozen entries' gradients anyway.
    include_bias: also regularise rank <= 1 leaves.

  Returns:
    A float32 scalar; multiply by ``alpha`` in the loss.

  Example:
    >>> dense = lambda n_in, n_out: {'kernel': jnp.ones((n_in, n_out)),
    ...                              'bias': jnp.zeros(n_out)}
    >>> params = {'hidden_0': dense(3, 4), 'head_0': dense(4, 2),
    ...           'head_1': dense(4, 2)}
    >>> specs = mlp_layer_specs(params)
    >>> used = {'hidden_0': np.array([True, True, False, False])}
    >>> partition = compute_partition(params, specs, used, task=1)
    >>> float(l1_penalty(params, partition.trainable))  # 3*2 + 4*2 kernels
    14.0
    >>> ce = 0.5
    >>> loss = ce + 1e-4 * l1_penalty(params, partition.trainable)
  """
  if isinstance(trainable_masks, Partition):
    trainable_masks = trainable_masks.trainable
  if trainable_masks is None:
    return sum((jnp.sum(jnp.abs(p), dtype=jnp.float32)
                for p in jax.tree.leaves(params)
                if include_bias or jnp.ndim(p) >= 2),
               jnp.zeros((), jnp.float32))
  terms = [jnp.sum(jnp.where(m, jnp.abs(p), 0.0), dtype=jnp.float32)
           for p, m in zip(jax.tree.leaves(params),
                           jax.tree.leaves(trainable_masks))
           if include_bias or jnp.ndim(p) >= 2]
  return sum(terms, jnp.zeros((), jnp.float32))


def _sown(intermediates, name: str):
  """The activation sown under ``name`` or, failing that, ``name + '_act'``."""
  *parents, last = name.split("/")
  node = intermediates
  for part in parents:
    node = node.get(part, {})
  for key in (last, last + _ACT_SUFFIX):
    if key in node:
      value = node[key]
      # sow() appends one entry per call; the last is this forward pass's.
      return value[-1] if isinstance(value, (tuple, list)) else value
  raise ConfigError(f"no sown activation {name!r}; sown: "
                    f"{sorted(_flat(intermediates))}")


def unit_activity(model_apply: Callable[..., Any],
                  variables: PyTree,
                  inputs: Any,
                  layer_names: Sequence[str],
                  *,
                  reading: str = "mean",
                  batch_size: Optional[int] = None) -> dict[str, np.ndarray]:
  """Measures each unit's activity over held-out inputs.

  ``reading='mean'`` is the mean post-ReLU activation (the paper's reading
  (?)); ``'firing_rate'`` the fraction of positive activations. Conv units
  average over examples and spatial positions (before pooling (?)).

  Args:
    model_apply: ``model_apply(variables, x, mutable=['intermediates'])``
      returning ``(outputs, state)`` with the activations sown under
      ``state['intermediates'][name] == (h,)`` or under ``name + '_act'``
      (the project models' naming); wrap Linen's ``apply`` in a lambda to
      pass ``train=False`` or a task id.
    variables: the model variables.
    inputs: array ``[N, ...]`` of held-out inputs of the task.
    layer_names: sown names (``'/'`` for nested modules).
    reading: ``'mean'`` or ``'firing_rate'``.
    batch_size: examples per forward pass; ``None`` means all at once.

  Returns:
    ``{name: float64[units]}``.

  Example:
    >>> from sparcl_jax.models.mlp import MLP
    >>> model, x_val = MLP((4, 3), 2), jnp.ones((6, 5))
    >>> variables = model.init(jax.random.key(0), x_val)
    >>> act = unit_activity(model.apply, variables, x_val,
    ...                     ['hidden_0', 'hidden_1'], batch_size=4)
    >>> {name: a.shape for name, a in act.items()}
    {'hidden_0': (4,), 'hidden_1': (3,)}
  """
  if reading not in _READINGS:
    raise ConfigError(f"reading must be one of {_READINGS}, got {reading!r}")
  n = int(jnp.shape(inputs)[0])
  if n == 0:
    raise ConfigError("unit_activity needs at least one input")
  batch_size = n if batch_size is None else int(batch_size)
  if batch_size < 1:
    raise ConfigError(f"batch_size must be >= 1, got {batch_size}")

  @jax.jit
  def sums(v, x):
    _, state = model_apply(v, x, mutable=["intermediates"])
    out = {}
    for name in layer_names:
      h = _sown(state["intermediates"], name)
      h = h.reshape(-1, h.shape[-1])
      vals = h if reading == "mean" else (h > 0).astype(jnp.float32)
      out[name] = (jnp.sum(vals, axis=0, dtype=jnp.float32), h.shape[0])
    return out

  totals: dict[str, np.ndarray] = {}
  counts: dict[str, int] = {}
  for start in range(0, n, batch_size):
    batch = inputs[start:start + batch_size]
    for name, (s, c) in sums(variables, batch).items():
      totals[name] = totals.get(name, 0.0) + np.asarray(s, np.float64)
      counts[name] = counts.get(name, 0) + int(c)
  return {name: totals[name] / counts[name] for name in layer_names}


def prune_by_threshold(activity: Mapping[str, np.ndarray],
                       free_units: Mapping[str, np.ndarray],
                       theta: Union[float, Mapping[str, float]]
                       ) -> dict[str, np.ndarray]:
  """Keeps the free units whose activity is strictly above ``theta``.

  Args:
    activity: ``{layer: float[units]}`` from :func:`unit_activity`.
    free_units: ``{layer: bool[units]}``, i.e. ``~used``.
    theta: one threshold, or one per layer.

  Returns:
    ``{layer: bool[units]}`` of kept units (a subset of the free ones).

  Example:
    >>> act = {'hidden_0': np.array([0.0, 0.2, 0.01, 0.3])}
    >>> used = {'hidden_0': np.array([True, False, False, False])}
    >>> kept = prune_by_threshold(act, {k: ~u for k, u in used.items()}, 0.05)
    >>> kept['hidden_0'].tolist()
    [False, True, False, True]
  """
  kept = {}
  for name, free in free_units.items():
    t = theta[name] if isinstance(theta, Mapping) else theta
    kept[name] = np.asarray(free, bool) & (np.asarray(activity[name]) > t)
  return kept


class SearchResult(NamedTuple):
  """Outcome of :func:`graceful_forgetting_search`.

  Attributes:
    theta: chosen threshold (a float, or a per-layer dict with
      ``per_layer=True``); ``-inf`` when no candidate passed.
    quantile: the quantile theta came from, ``None`` for the fallback.
    kept: ``{layer: bool[units]}`` kept at ``theta``.
    accuracy: validation accuracy at ``theta`` (percent).
    accepted: whether ``accuracy >= acc_before - margin``.
    tuned: what ``finetune_fn`` returned at ``theta`` (``None`` without it).
    trials: ``(quantile, accuracy)`` of every evaluated candidate, in order.

  Example:
    >>> act = {'hidden_0': np.array([0.0, 0.2, 0.01, 0.3])}
    >>> free = {'hidden_0': np.array([False, True, True, True])}
    >>> evaluate = lambda kept: 97.0  # accuracy with the cut applied
    >>> res = graceful_forgetting_search(evaluate, act, free, 1.0, 97.5)
    >>> res.quantile, res.accepted, res.trials
    (1.0, True, ((1.0, 97.0),))
  """

  theta: Union[float, dict[str, float]]
  quantile: Optional[float]
  kept: dict[str, np.ndarray]
  accuracy: float
  accepted: bool
  tuned: Any
  trials: tuple[tuple[float, float], ...]


def _thresholds(activities, free_units, q: float, per_layer: bool):
  if per_layer:
    # A full layer keeps nothing new whatever its threshold.
    return {name: (float(np.quantile(np.asarray(activities[name])[free], q))
                   if free.any() else np.inf)
            for name, free in free_units.items()}
  pooled = np.concatenate([np.asarray(activities[name])[free]
                           for name, free in free_units.items()])
  return float(np.quantile(pooled, q))


def graceful_forgetting_search(
    evaluate_fn: Callable[..., float],
    activities: Mapping[str, np.ndarray],
    free_units: Mapping[str, np.ndarray],
    margin: float,
    acc_before: float,
    candidate_quantiles: Sequence[float] = DEFAULT_QUANTILES,
    *,
    finetune_fn: Optional[Callable[[dict[str, np.ndarray]], Any]] = None,
    per_layer: bool = False,
    strategy: str = "scan") -> SearchResult:
  """Chooses the most aggressive threshold whose accuracy stays in margin.

  Candidates are quantiles of the free units' activities, pooled over layers
  (the paper speaks of one theta (?)) or, with ``per_layer=True``, one
  quantile threshold per layer, which prunes more evenly when the layers'
  activity scales differ. With ``strategy="scan"`` they are tried from the
  highest quantile down and the first whose validation accuracy is
  ``>= acc_before - margin`` wins; ``strategy="bisect"`` assumes accuracy
  falls as the quantile rises and binary-searches the candidates for the
  highest that passes (about log2 of their number evaluations: the choice
  when each evaluation fine-tunes). If none passes, every free unit is kept
  (``theta = -inf``). Thresholds that keep the same units are evaluated
  once.

  Args:
    evaluate_fn: ``evaluate_fn(kept) -> accuracy`` in percent, with the cut
      applied (e.g. via :func:`apply_cut`); with ``finetune_fn`` it is called
      as ``evaluate_fn(kept, tuned)``.
    activities: ``{layer: float[units]}``.
    free_units: ``{layer: bool[units]}`` free before this task's commit.
    margin: accepted accuracy loss in percent points, in ``[0, 100]``.
    acc_before: validation accuracy before pruning, in percent.
    candidate_quantiles: quantiles in ``[0, 1]`` to try.
    finetune_fn: optional ``finetune_fn(kept) -> tuned`` run before each
      evaluation (the "with fine-tuning" variant).
    per_layer: one quantile threshold per layer instead of a pooled one.
    strategy: ``"scan"`` (every candidate from the top, exact for any
      accuracy curve) or ``"bisect"`` (binary search, for monotone curves).

  Returns:
    A :class:`SearchResult`.

  Example:
    >>> act = {'hidden_0': np.array([0.0, 0.2, 0.01, 0.3])}
    >>> free = {'hidden_0': np.array([False, True, True, True])}
    >>> # Stand-in for the accuracy of apply_cut(params, specs, used, kept):
    >>> acc = lambda kept: 95.0 + kept['hidden_0'].sum()
    >>> res = graceful_forgetting_search(acc, act, free, margin=1.0,
    ...                                  acc_before=97.5)
    >>> res.quantile, res.accuracy, res.kept['hidden_0'].tolist()
    (0.49, 97.0, [False, True, False, True])
  """
  if not 0.0 <= margin <= 100.0:
    raise ConfigError(f"margin must be in [0, 100] percent points, got "
                      f"{margin}")
  if not 0.0 <= acc_before <= 100.0:
    raise ConfigError(f"acc_before must be a percentage in [0, 100], got "
                      f"{acc_before}")
  qs = sorted({float(q) for q in candidate_quantiles}, reverse=True)
  if not qs or not all(0.0 <= q <= 1.0 for q in qs):
    raise ConfigError(f"candidate_quantiles must be non-empty and in [0, 1], "
                      f"got {list(candidate_quantiles)}")
  free_units = {k: np.asarray(v, bool) for k, v in free_units.items()}
  if not any(f.any() for f in free_units.values()):
    raise NoFreeUnitsError("graceful_forgetting_search: no free units to "
                           "prune; use a wider network")
  floor = acc_before - margin
  seen: dict[bytes, tuple[float, Any]] = {}
  trials = []

  def run(kept):
    key = b"".join(kept[k].tobytes() for k in sorted(kept))
    if key not in seen:
      if finetune_fn is None:
        seen[key] = (float(evaluate_fn(kept)), None)
      else:
        tuned = finetune_fn(kept)
        seen[key] = (float(evaluate_fn(kept, tuned)), tuned)
    return seen[key]

  def trial(q):
    theta = _thresholds(activities, free_units, q, per_layer)
    kept = prune_by_threshold(activities, free_units, theta)
    acc, tuned = run(kept)
    trials.append((q, acc))
    return SearchResult(theta, q, kept, acc, acc >= floor, tuned, ())

  if strategy == "scan":
    for q in qs:
      res = trial(q)
      if res.accepted:
        return res._replace(trials=tuple(trials))
  elif strategy == "bisect":
    # qs is descending: passing candidates are a suffix. Find its start.
    fail, best = -1, None
    lo_pass = len(qs)
    while lo_pass - fail > 1:
      mid = (fail + lo_pass) // 2
      res = trial(qs[mid])
      if res.accepted:
        lo_pass, best = mid, res
      else:
        fail = mid
    if best is not None:
      return best._replace(trials=tuple(trials))
  else:
    raise ConfigError(f"strategy must be 'scan' or 'bisect', got "
                      f"{strategy!r}")
  kept = {k: f.copy() for k, f in free_units.items()}
  acc, tuned = run(kept)
  return SearchResult(-np.inf, None, kept, acc, acc >= floor, tuned,
                      tuple(trials))


# ----------------------------------------------------------------------------
# Commit.


def _check_kept(used: UsedUnits, kept: UsedUnits) -> dict[str, np.ndarray]:
  new_used = {}
  for name, u in used.items():
    u = np.asarray(u, bool)
    k = np.asarray(kept.get(name, np.zeros_like(u)), bool)
    if k.shape != u.shape:
      raise ConfigError(f"kept units of {name!r} have shape {k.shape}, used "
                        f"has {u.shape}")
    new_used[name] = u | k
  return new_used


def _cut_masks(flat, specs, new_used, task) -> dict[str, np.ndarray]:
  """Kernel entries to zero once ``new_used`` is committed."""
  zero = {}
  for spec in specs:
    kshape = tuple(_leaf(flat, spec.kernel_path, spec).shape)
    rows = _input_rows(spec, new_used, kshape)
    if spec.role == "hidden":
      cols = _out_units(spec, new_used, kshape)
    elif spec.role == "shared_head" or spec.task == task:
      cols = np.ones(kshape[-1], bool)
    else:
      continue
    zero[spec.kernel_path] = _grid(~rows, cols, kshape)
  return zero


def apply_cut(params: PyTree,
              specs: Sequence[LayerSpec],
              used: UsedUnits,
              kept: UsedUnits,
              task: Optional[int] = None) -> PyTree:
  """Zeroes the outgoing weights of cut units (free and not kept).

  Cut units stop feeding this task's used/kept units and its head, which is
  how the network looks after :func:`commit_task` (without the re-init of free
  units, which cannot change this task's outputs). Use it inside the
  ``evaluate_fn`` of :func:`graceful_forgetting_search`.

  Args:
    params: the params pytree.
    specs: layer specs.
    used: units used before this task.
    kept: units this task keeps.
    task: the current task (selects its head among per-task heads).

  Returns:
    Params with the cut weights set to zero.

  Example:
    >>> dense = lambda n_in, n_out: {'kernel': jnp.ones((n_in, n_out)),
    ...                              'bias': jnp.zeros(n_out)}
    >>> params = {'hidden_0': dense(3, 4), 'head_0': dense(4, 2),
    ...           'head_1': dense(4, 2)}
    >>> specs = mlp_layer_specs(params)
    >>> used = {'hidden_0': np.array([True, True, False, False])}
    >>> kept = {'hidden_0': np.array([False, False, True, False])}
    >>> pruned = apply_cut(params, specs, used, kept, task=1)
    >>> pruned['head_1']['kernel'][:, 0].tolist()  # unit 3 is cut
    [1.0, 1.0, 1.0, 0.0]
  """
  new_used = _check_kept(used, kept)
  if any(s.role == "head" for s in specs) and task is None:
    raise ConfigError("apply_cut needs the task index with per-task heads")
  zero = _cut_masks(_flat(params), specs, new_used, task)
  return _map_by_path(
      lambda path, p: jnp.where(zero[path], jnp.zeros_like(p), p)
      if path in zero else p, params)


def commit_task(params: PyTree,
                specs: Sequence[LayerSpec],
                used: UsedUnits,
                kept: UsedUnits,
                rng: jax.Array,
                init_fn: Callable[[jax.Array], PyTree],
                task: Optional[int] = None
                ) -> tuple[PyTree, dict[str, np.ndarray]]:
  """Freezes a finished task's kept units and prepares the free ones.

  Adds ``kept`` to ``used``, zeroes the new interference entries and the cut
  units' outgoing weights into this task's head (see :func:`apply_cut`), and
  re-initialises the incoming weights and biases of the units still free
  from ``init_fn(rng)``.

  Args:
    params: params after training (and pruning) the task.
    specs: layer specs.
    used: units used before this task.
    kept: units this task keeps (from :func:`prune_by_threshold`).
    rng: PRNG key for the re-initialisation.
    init_fn: ``init_fn(rng) -> params`` giving freshly initialised params of
      the same structure, e.g. ``lambda k: model.init(k, x)['params']``.
    task: index of the task being committed (needed with per-task heads).

  Returns:
    ``(new_params, new_used)``.

  Example:
    >>> dense = lambda n_in, n_out: {'kernel': jnp.ones((n_in, n_out)),
    ...                              'bias': jnp.zeros(n_out)}
    >>> params = {'hidden_0': dense(3, 4), 'head_0': dense(4, 2),
    ...           'head_1': dense(4, 2)}
    >>> specs = mlp_layer_specs(params)
    >>> used = {'hidden_0': np.array([True, True, False, False])}
    >>> kept = {'hidden_0': np.array([False, False, True, False])}
    >>> init_fn = lambda k: jax.tree.map(jnp.zeros_like, params)
    >>> params, used = commit_task(params, specs, used, kept,
    ...                            jax.random.key(0), init_fn, task=1)
    >>> used['hidden_0'].tolist()
    [True, True, True, False]
    >>> params['hidden_0']['kernel'][0].tolist()  # free unit 3 re-initialised
    [1.0, 1.0, 1.0, 0.0]
  """
  new_used = _check_kept(used, kept)
  params = apply_cut(params, specs, used, kept, task)
  fresh = _flat(init_fn(rng))
  flat = _flat(params)
  reinit = {}
  for spec in _hidden(specs):
    kshape = tuple(_leaf(flat, spec.kernel_path, spec).shape)
    free = ~_out_units(spec, new_used, kshape)
    reinit[spec.kernel_path] = np.broadcast_to(free, kshape)
    if spec.bias_path is not None:
      reinit[spec.bias_path] = np.broadcast_to(
          free, _leaf(flat, spec.bias_path, spec).shape)

  def fn(path, p):
    if path not in reinit:
      return p
    f = fresh.get(path)
    if f is None or jnp.shape(f) != jnp.shape(p):
      raise ConfigError(f"init_fn gives no parameter of shape {jnp.shape(p)} "
                        f"at {path!r}")
    return jnp.where(reinit[path], jnp.asarray(f, p.dtype), p)

  return _map_by_path(fn, params), new_used


# ----------------------------------------------------------------------------
# Diagnostics.


def capacity_report(used_history: Sequence[UsedUnits],
                    activities: Optional[Sequence[Mapping[str, np.ndarray]]]
                    = None,
                    theta: float = 0.0) -> dict[str, Any]:
  """Summarises capacity per task and layer.

  Args:
    used_history: ``used`` dicts after each committed task, in order.
    activities: optional per-task activities (``activities[t]`` measured on
      task ``t``'s data); then ``reused`` counts earlier tasks' units whose
      activity on task ``t`` is above ``theta``.
    theta: activity threshold for ``reused``.

  Returns:
    ``{'units': {layer: width}, 'tasks': [{layer: {'used', 'free',
    'claimed', 'available', 'reused'}}]}`` with ints (``reused`` is ``None``
    without activities). ``available`` is the number of earlier tasks' units
    the task could read; ``claimed`` the units it added.

  Example:
    >>> used_after_0 = {'hidden_0': np.array([True, True, False, False])}
    >>> used_after_1 = {'hidden_0': np.array([True, True, True, False])}
    >>> rep = capacity_report([used_after_0, used_after_1])
    >>> rep['tasks'][1]['hidden_0']['free']
    1
    >>> rep['tasks'][1]['hidden_0']
    {'used': 3, 'free': 1, 'claimed': 1, 'available': 2, 'reused': None}
  """
  if not used_history:
    return {"units": {}, "tasks": []}
  if activities is not None and len(activities) != len(used_history):
    raise ConfigError(f"{len(activities)} activity sets for "
                      f"{len(used_history)} tasks")
  units = {k: int(np.size(v)) for k, v in used_history[0].items()}
  tasks = []
  for t, used in enumerate(used_history):
    row = {}
    for name in units:
      now = np.asarray(used[name], bool)
      before = (np.asarray(used_history[t - 1][name], bool) if t
                else np.zeros_like(now))
      reused = None
      if activities is not None:
        reused = int(np.sum(before & (np.asarray(activities[t][name]) > theta)))
      row[name] = {"used": int(now.sum()), "free": int((~now).sum()),
                   "claimed": int((now & ~before).sum()),
                   "available": int(before.sum()), "reused": reused}
    tasks.append(row)
  return {"units": units, "tasks": tasks}
