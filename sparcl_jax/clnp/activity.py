"""CLNP's unit activity: an L1 penalty quiets units, then they are measured.

Each task trains with :func:`l1_penalty` so that units it does not need go
quiet; :func:`unit_activity` then reads every unit's activity on held-out
inputs, which the pruning search thresholds.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparcl_jax.clnp.partition import Partition
from sparcl_jax.clnp.specs import PyTree
from sparcl_jax.errors import ConfigError
from sparcl_jax.paths import flatten_to_dict

_READINGS = ("mean", "firing_rate")
# Flax forbids sowing under a submodule's name (Linen raises "Duplicate use
# of scope name", NNX "Expected ... to be a Variable"), so a layer's
# activations are sown under its name plus this suffix.
_ACT_SUFFIX = "_act"


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

  Examples:
    >>> dense = lambda n_in, n_out: {'kernel': jnp.ones((n_in, n_out)),
    ...                              'bias': jnp.zeros(n_out)}
    >>> params = {'hidden_0': dense(3, 4), 'head_0': dense(4, 2),
    ...           'head_1': dense(4, 2)}
    >>> specs = sc.mlp_layer_specs(params)
    >>> used = {'hidden_0': np.array([True, True, False, False])}
    >>> partition = sc.compute_partition(params, specs, used, task=1)
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
  """The activation sown under ``name + '_act'`` or else under ``name``."""
  *parents, last = name.split("/")
  node = intermediates
  for part in parents:
    node = node.get(part, {})
  for key in (last + _ACT_SUFFIX, last):
    if key in node:
      value = node[key]
      # sow() appends one entry per call; the last is this forward pass's.
      return value[-1] if isinstance(value, (tuple, list)) else value
  raise ConfigError(f"no sown activation {name + _ACT_SUFFIX!r} (nor "
                    f"{name!r}); sown: "
                    f"{sorted(flatten_to_dict(intermediates))}. Sow the "
                    "layer's post-ReLU activations under its name plus "
                    f"{_ACT_SUFFIX!r}, e.g. self.sow('intermediates', "
                    f"{last + _ACT_SUFFIX!r}, h) in Linen or "
                    f"self.sow(nnx.Intermediate, {last + _ACT_SUFFIX!r}, h) "
                    "in NNX")


def activity_sums(activations: jax.Array, reading: str = "mean",
                  valid: Optional[jax.Array] = None) -> jax.Array:
  """Per-unit sum over a batch of each example's activity reading.

  The kernel both activity measures share: :func:`unit_activity` (host
  loop) and the CLNP runner's device-side scan. An example's reading is
  averaged over positions first (a conv unit's map; one position for a
  dense layer), then summed over the batch's valid examples.

  Args:
    activations: ``[B, ..., units]`` post-ReLU activations.
    reading: ``'mean'`` (activation) or ``'firing_rate'`` (share > 0).
    valid: ``[B]`` bool, examples to count (None: all).

  Returns:
    float32 ``[units]``.

  Examples:
    >>> h = jnp.array([[0.0, 2.0], [1.0, 0.0], [5.0, 5.0]])
    >>> activity_sums(h, valid=jnp.array([True, True, False]))
    Array([1., 2.], dtype=float32)
    >>> activity_sums(h, "firing_rate")
    Array([2., 2.], dtype=float32)
  """
  h = activations.reshape(activations.shape[0], -1, activations.shape[-1])
  vals = h if reading == "mean" else (h > 0).astype(jnp.float32)
  if valid is not None:
    vals = jnp.where(valid[:, None, None], vals, 0.0)
  return jnp.sum(jnp.mean(vals, axis=1), axis=0)


@functools.lru_cache(maxsize=16)
def _nnx_sums_fn(graphdef, layer_names: tuple[str, ...], reading: str,
                 forward: Optional[Callable[[Any, Any], Any]]):
  """A jitted ``(state, x) -> {name: activity sums}``, one per model layout.

  Cached so that measuring every task of a loop compiles once.
  """
  call = forward or (lambda m, x: m(x))

  @jax.jit
  def sums(state, x):
    _, sown = nnx.capture(call, nnx.Intermediate)(nnx.merge(graphdef, state),
                                                  x)
    sown = nnx.to_pure_dict(sown)
    return {name: activity_sums(_sown(sown, name), reading)
            for name in layer_names}

  return sums


def _nnx_sums(model, forward, layer_names, reading):
  graphdef, state = nnx.split(model)
  key = (graphdef, tuple(layer_names), reading, forward)
  try:
    hash(key)
  except TypeError:  # unhashable static attributes: no cache
    return _nnx_sums_fn.__wrapped__(*key), state
  return _nnx_sums_fn(*key), state


@functools.lru_cache(maxsize=16)
def _linen_sums_fn(model_apply: Callable[..., Any],
                   layer_names: tuple[str, ...], reading: str):
  """A jitted ``(variables, x) -> {name: activity sums}``, one per apply.

  Cached like the NNX one, so that measuring every task of a loop with the
  same ``model_apply`` (e.g. ``model.apply``: bound methods of one module
  compare equal) compiles once.
  """

  @jax.jit
  def sums(v, x):
    _, state = model_apply(v, x, mutable=["intermediates"])
    return {name: activity_sums(_sown(state["intermediates"], name), reading)
            for name in layer_names}

  return sums


def _linen_sums(model_apply, layer_names, reading):
  key = (model_apply, tuple(layer_names), reading)
  try:
    hash(key)
  except TypeError:  # an unhashable callable: no cache
    return _linen_sums_fn.__wrapped__(*key)
  return _linen_sums_fn(*key)


def unit_activity(model: Any, *args: Any, reading: str = "mean",
                  batch_size: Optional[int] = None,
                  forward: Optional[Callable[[Any, Any], Any]] = None
                  ) -> dict[str, np.ndarray]:
  """Measures each unit's activity over held-out inputs.

  Called ``unit_activity(model_apply, variables, inputs, layer_names)`` for
  a Linen model and ``unit_activity(model, inputs, layer_names)`` for an
  ``nnx.Module``. ``reading='mean'`` is the mean post-ReLU activation (the
  paper's reading (?)); ``'firing_rate'`` the fraction of positive
  activations. Conv units average over examples and spatial positions
  (before pooling (?)).

  The model sows each layer's post-ReLU activations under
  ``LayerSpec.name + '_act'`` (see :class:`LayerSpec`): in Linen
  ``self.sow('intermediates', 'hidden_0_act', h)``, in NNX
  ``self.sow(nnx.Intermediate, 'hidden_0_act', h)``; a value sown under the
  plain name is read too, where Flax allows it. The NNX model is not
  changed: it runs on a copy under ``nnx.capture``, jitted.

  The jitted measure is cached per model: an NNX model's layout, a Linen
  ``model_apply`` (the same callable: ``model.apply`` of one module, or one
  wrapper built once outside the task loop, not a new ``lambda`` per call),
  so measuring every task compiles once.

  Args:
    model: Linen: ``model_apply(variables, x, mutable=['intermediates'])``
      returning ``(outputs, state)`` with the activations in
      ``state['intermediates']``; wrap Linen's ``apply`` in a lambda to pass
      ``train=False`` or a task id. NNX: the ``nnx.Module`` (put it in
      ``model.eval()`` mode first if it has dropout or batch norm).
    *args: Linen: ``variables, inputs, layer_names``; NNX: ``inputs,
      layer_names``. ``variables`` are the model variables; ``inputs`` an
      array ``[N, ...]`` of held-out inputs of the task; ``layer_names`` the
      :class:`LayerSpec` names (``'/'`` for nested modules).
    reading: ``'mean'`` or ``'firing_rate'``.
    batch_size: examples per forward pass; ``None`` means all at once.
    forward: NNX only: ``forward(model, x)`` runs the model, for a call that
      needs more than ``model(x)`` (e.g. ``lambda m, x: m(x, task=0)``).

  Returns:
    ``{name: float64[units]}``.

  Raises:
    ConfigError: bad arguments, or an activation was not sown.

  Examples:
    >>> from sparcl_jax.models.mlp import MLP
    >>> model, x_val = MLP((4, 3), 2), jnp.ones((6, 5))
    >>> variables = model.init(jax.random.key(0), x_val)
    >>> act = unit_activity(model.apply, variables, x_val,
    ...                     ['hidden_0', 'hidden_1'], batch_size=4)
    >>> {name: a.shape for name, a in act.items()}
    {'hidden_0': (4,), 'hidden_1': (3,)}

    The same with an NNX model:

    >>> from flax import nnx
    >>> class Net(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.hidden_0 = nnx.Linear(5, 4, rngs=rngs)
    ...     self.head = nnx.Linear(4, 2, rngs=rngs)
    ...   def __call__(self, x):
    ...     h = nnx.relu(self.hidden_0(x))
    ...     self.sow(nnx.Intermediate, 'hidden_0_act', h)
    ...     return self.head(h)
    >>> act = unit_activity(Net(nnx.Rngs(0)), x_val, ['hidden_0'])
    >>> act['hidden_0'].shape
    (4,)
  """
  if reading not in _READINGS:
    raise ConfigError(f"reading must be one of {_READINGS}, got {reading!r}")
  is_nnx = isinstance(model, nnx.Module)
  want = ("inputs, layer_names" if is_nnx
          else "variables, inputs, layer_names")
  if len(args) != want.count(",") + 1:
    raise ConfigError(f"unit_activity({'model' if is_nnx else 'model_apply'}"
                      f", {want}) takes {want.count(',') + 1} arguments "
                      f"after the model, got {len(args)}")
  layer_names = args[-1]
  if isinstance(layer_names, str):
    raise ConfigError(f"layer_names must be a sequence of names, got the "
                      f"string {layer_names!r}")
  if is_nnx:
    (inputs, layer_names), variables = args, None
    sums, variables = _nnx_sums(model, forward, layer_names, reading)
  else:
    if forward is not None:
      raise ConfigError("forward is for NNX models; wrap model_apply instead")
    variables, inputs, layer_names = args
    sums = _linen_sums(model, layer_names, reading)
  n = int(jnp.shape(inputs)[0])
  if n == 0:
    raise ConfigError("unit_activity needs at least one input")
  batch_size = n if batch_size is None else int(batch_size)
  if batch_size < 1:
    raise ConfigError(f"batch_size must be >= 1, got {batch_size}")

  totals: dict[str, np.ndarray] = {}
  for start in range(0, n, batch_size):
    batch = inputs[start:start + batch_size]
    for name, s in sums(variables, batch).items():
      totals[name] = totals.get(name, 0.0) + np.asarray(s, np.float64)
  return {name: totals[name] / n for name in layer_names}
