"""CLNP's layer specs: which kernel connects which units of which layers.

CLNP's masks know nothing of the model beyond a list of :class:`LayerSpec`
entries, one per layer whose units can be used or free (and one per output
head). :func:`chain_layer_specs` describes a plain chain of layers;
:func:`mlp_layer_specs` and :func:`cnn_layer_specs` models laid out like the
project's. Each takes the params as they come: a Linen params dict, an
``nnx.State`` such as ``nnx.state(model, nnx.Param)`` (its ``nnx.Variable``
leaves are read through their values), or its pure dict.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from sparcl_jax.errors import ConfigError
from sparcl_jax.paths import flatten_to_dict

PyTree = Any
UsedUnits = Mapping[str, np.ndarray]

_KINDS = ("dense", "conv", "flatten_dense")
_ROLES = ("hidden", "head", "shared_head")


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """How one layer's kernel connects units of two layers.

  Attributes:
    name: unit-layer name, the key of this layer in ``used`` dicts. The
      model sows the layer's post-ReLU activations under ``name + '_act'``
      for :func:`unit_activity` (``self.sow('intermediates',
      'hidden_0_act', h)`` in Linen, ``self.sow(nnx.Intermediate,
      'hidden_0_act', h)`` in NNX): Flax reserves ``name`` itself for the
      layer's submodule (Linen raises "Duplicate use of scope name", NNX
      "Expected 'hidden_0' to be a Variable"). A value sown under ``name``
      is read too where nothing else holds that name.
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

  Examples:
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
      ``<name>/kernel`` and ``<name>/bias`` (``'/'`` joins nested modules'
      names, e.g. ``'block/conv_0'``).
    params: the params pytree (used for shapes only): a Linen dict, an
      ``nnx.State`` or its pure dict.
    heads: head names; with ``shared_head=False`` the i-th is task i's head.
    shared_head: whether ``heads`` is one head shared by every task.

  Returns:
    A tuple of :class:`LayerSpec`, hidden layers first.

  Examples:
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
  flat = flatten_to_dict(params)
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
    params: MLP params (a Linen params dict or an ``nnx.State``) with
      top-level keys ``hidden_<i>`` and either one shared ``head``
      (``head/kernel``) or per-task heads, at ``head_<t>`` or at
      ``head/head_<t>``.

  Returns:
    The layer specs (see :func:`chain_layer_specs`).

  Examples:
    >>> from sparcl_jax.models.mlp import MLP
    >>> variables = MLP((4, 3), 2).init(jax.random.key(0), jnp.zeros((1, 5)))
    >>> specs = mlp_layer_specs(variables['params'])
    >>> [(s.name, s.role) for s in specs]
    [('hidden_0', 'hidden'), ('hidden_1', 'hidden'), ('head', 'shared_head')]

    An NNX model's state, as ``nnx.state`` gives it:

    >>> from flax import nnx
    >>> class Net(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.hidden_0 = nnx.Linear(5, 4, rngs=rngs)
    ...     self.head_0 = nnx.Linear(4, 2, rngs=rngs)
    ...     self.head_1 = nnx.Linear(4, 2, rngs=rngs)
    >>> specs = mlp_layer_specs(nnx.state(Net(nnx.Rngs(0)), nnx.Param))
    >>> [(s.name, s.role, s.task) for s in specs]
    [('hidden_0', 'hidden', None), ('head_0', 'head', 0), ('head_1', 'head', 1)]
  """
  hidden = sorted((k for k in params.keys() if re.fullmatch(r"hidden_\d+", k)),
                  key=lambda k: int(k.split("_")[1]))
  heads, shared = _detect_heads(params)
  return chain_layer_specs(hidden, params, heads, shared_head=shared)


def cnn_layer_specs(params: PyTree) -> tuple[LayerSpec, ...]:
  """Describes the project Zenke CNN: ``conv_<i>``, ``dense_<i>``, heads.

  Args:
    params: CNN params (a Linen dict or an ``nnx.State``) with
      ``conv_<i>``, ``dense_<i>`` and heads named as for
      :func:`mlp_layer_specs`.

  Returns:
    The layer specs; ``dense_0`` is a ``'flatten_dense'`` layer.

  Examples:
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


# Lookups the partition and the commit share.


def _leaf(flat: Mapping[str, Any], path: str, spec: LayerSpec):
  if path not in flat:
    raise ConfigError(f"LayerSpec {spec.name!r}: no parameter at path "
                      f"{path!r}; known paths: {sorted(flat)}")
  return flat[path]


def _hidden(specs: Sequence[LayerSpec]) -> list[LayerSpec]:
  return [s for s in specs if s.role == "hidden"]
