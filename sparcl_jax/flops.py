"""Training FLOPs accounting, as counted by the SparCL paper.

Forward multiply-accumulates (MACs) per layer are read from the model itself:
the forward function is traced with ``jax.make_jaxpr`` and every
``dot_general`` / ``conv_general_dilated`` whose kernel operand comes from a
parameter leaf is charged to that leaf's path. This needs no hand tables and
works for Linen, NNX (pure state) and plain-function models alike; tracing
uses shapes only, so ``ShapeDtypeStruct`` params are fine and nothing is
compiled.

Training cost per example (paper, Sec. "Training FLOPs"): a masked layer with
forward cost ``F``, weight sparsity ``s_w`` and gradient sparsity ``s_g`` costs
``(1 - s_w) F`` forward, ``(1 - s_w) F`` backward to activations and
``(1 - s_g) F`` backward to weights; other layers ``3 F``. One MAC is two
FLOPs.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import jax.extend as jex
import numpy as np

from sparcl_jax.errors import ConfigError
from sparcl_jax.paths import path_to_str

PyTree = Any

# Primitives that only re-view or re-type an array: the result still "is" the
# parameter for attribution purposes.
_PASS_THROUGH = frozenset({
    'convert_element_type', 'reshape', 'copy', 'copy_p', 'squeeze',
    'expand_dims', 'transpose', 'reduce_precision', 'optimization_barrier',
    # A static slice of a parameter (one block of a grouped convolution's
    # kernel, run as its own convolution on CPU) is charged to the parameter.
    'slice',
})


def _is_var(v: Any) -> bool:
  return isinstance(v, jex.core.Var) and not isinstance(v, jex.core.Literal)


def _size(shape: tuple[int, ...]) -> int:
  return int(np.prod(shape)) if shape else 1


def _contraction_macs(eqn: Any, kernel_index: int) -> int:
  """MACs of one dot_general or conv: output elements x fan-in."""
  out_size = _size(eqn.outvars[0].aval.shape)
  if eqn.primitive.name == 'dot_general':
    (lhs_c, rhs_c), _ = eqn.params['dimension_numbers']
    contract = lhs_c if kernel_index == 0 else rhs_c
    shape = eqn.invars[kernel_index].aval.shape
    return out_size * _size(tuple(shape[d] for d in contract))
  # conv_general_dilated: fan-in = kernel size / output features.
  rhs = eqn.invars[1].aval.shape
  out_feature_dim = eqn.params['dimension_numbers'].rhs_spec[0]
  return out_size * (_size(rhs) // rhs[out_feature_dim])


def _sub_jaxprs(eqn: Any) -> list[tuple[Any, int]]:
  """Sub-jaxprs whose inputs line up with ``eqn``'s inputs, with repeats."""
  found = []
  for value in eqn.params.values():
    jaxpr = getattr(value, 'jaxpr', value)
    if isinstance(jaxpr, jex.core.Jaxpr) and len(jaxpr.invars) == len(
        eqn.invars):
      repeat = int(eqn.params.get('length', 1))
      found.append((jaxpr, repeat))
  return found


def _walk(jaxpr: Any, origin: dict[Any, str], totals: dict[str, int],
          repeat: int) -> None:
  """Accumulates MACs of ``jaxpr`` into ``totals`` by parameter path."""
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    srcs = [origin.get(v) if _is_var(v) else None for v in eqn.invars]
    if name in ('dot_general', 'conv_general_dilated'):
      # The kernel is normally the rhs; a parameter on the lhs also counts.
      idx = 1 if srcs[1] is not None else 0
      if srcs[idx] is not None:
        totals[srcs[idx]] = totals.get(srcs[idx], 0) + repeat * (
            _contraction_macs(eqn, idx))
      continue
    if name in _PASS_THROUGH and srcs and srcs[0] is not None:
      origin[eqn.outvars[0]] = srcs[0]
      continue
    if name == 'cond':
      _walk_cond(eqn, srcs, totals, repeat)
      continue
    for sub, sub_repeat in _sub_jaxprs(eqn):
      inner = {iv: s for iv, s in zip(sub.invars, srcs) if s is not None}
      _walk(sub, inner, totals, repeat * sub_repeat)


def _walk_cond(eqn: Any, srcs: list[Optional[str]], totals: dict[str, int],
               repeat: int) -> None:
  """Charges the costliest branch of a ``cond`` (its first operand is the
  branch index).

  A grouped convolution picks its execution per backend
  (``lax.platform_dependent``, traced as a ``cond`` on the platform): its
  branches compute the same products, so any one gives its MACs; for other
  conds the costliest branch is an upper bound.
  """
  best: dict[str, int] = {}
  for branch in eqn.params['branches']:
    jaxpr = getattr(branch, 'jaxpr', branch)
    inner = {iv: s for iv, s in zip(jaxpr.invars, srcs[1:]) if s is not None}
    found: dict[str, int] = {}
    _walk(jaxpr, inner, found, repeat)
    if sum(found.values()) > sum(best.values()):
      best = found
  for path, macs in best.items():
    totals[path] = totals.get(path, 0) + macs


def _leading_axes(inputs: tuple[Any, ...]) -> set[int]:
  """The sizes of the first axis of every input leaf with one."""
  return {int(leaf.shape[0]) for leaf in jax.tree_util.tree_leaves(inputs)
          if len(getattr(leaf, 'shape', np.shape(leaf))) >= 1}


def layer_macs(apply_fn: Callable[..., Any], params: PyTree, *inputs: Any,
               batch_size: Optional[int] = None) -> dict[str, int]:
  """Forward MACs per example of every kernel, read from a traced forward.

  The forward pass is traced once on the given inputs (nothing is
  compiled); the MACs of the batch are divided by its size, so the result is
  per example whatever batch the inputs have.

  Args:
    apply_fn: ``apply_fn(params, *inputs)``, the model's forward pass.
    params: parameter pytree (arrays or ``ShapeDtypeStruct``); the keys of
      the result are its ``'/'``-joined leaf paths (so a Linen variables
      dict gives ``'params/...'`` keys, its ``['params']`` entry gives none).
    *inputs: example inputs (arrays or ``ShapeDtypeStruct``), batched along
      their first axis.
    batch_size: the inputs' batch size; None reads it from the inputs: the
      size of the first axis, which every input with one must share (inputs
      without any axis count as a batch of 1). Pass it for inputs whose
      first axis is not the batch (``batch_size=1`` for one unbatched
      example).

  Returns:
    ``{kernel path: MACs per example}`` for every leaf used as the kernel of
    a matrix product or convolution. Products between activations only are
    not counted.

  Raises:
    ConfigError: if ``batch_size`` is not positive, or is None and the
      inputs' first axes differ.

  Examples:
    >>> p = {'w': jax.ShapeDtypeStruct((4, 3), jnp.float32)}
    >>> x = jax.ShapeDtypeStruct((2, 4), jnp.float32)
    >>> layer_macs(lambda p, x: x @ p['w'], p, x)  # batch of 2, per example
    {'w': 12}
    >>> layer_macs(lambda p, x: x @ p['w'], p, x, batch_size=1)  # the batch
    {'w': 24}
  """
  if batch_size is None:
    leading = _leading_axes(inputs)
    if len(leading) > 1:
      raise ConfigError(
          f'layer_macs: the inputs\' first axes differ ({sorted(leading)}), '
          'so the batch size is unclear; pass batch_size=.')
    batch_size = leading.pop() if leading else 1
  if int(batch_size) < 1:
    raise ConfigError(f'layer_macs: batch_size must be >= 1, got '
                      f'{batch_size}.')
  closed = jax.make_jaxpr(apply_fn)(params, *inputs)
  paths = [path_to_str(kp) for kp, _ in
           jax.tree_util.tree_flatten_with_path(params)[0]]
  # make_jaxpr flattens (params, *inputs) in order: params come first.
  param_vars = closed.jaxpr.invars[:len(paths)]
  origin = dict(zip(param_vars, paths))
  totals: dict[str, int] = {}
  _walk(closed.jaxpr, origin, totals, 1)
  return {path: macs // int(batch_size) for path, macs in totals.items()}


def _look_alike(path: str, known: list[str]) -> Optional[str]:
  """A layer path that differs from ``path`` by a leading or trailing part."""
  for k in known:
    if (k.endswith('/' + path) or path.endswith('/' + k) or
        k.startswith(path + '/') or path.startswith(k + '/')):
      return k
  return None


def _check_paths(layer_macs_: Mapping[str, float],
                 sparsities: Mapping[str, float], name: str) -> None:
  """Raises if ``sparsities`` names a path that is not a counted layer."""
  unknown = sorted(set(sparsities) - set(layer_macs_))
  if not unknown:
    return
  known = sorted(layer_macs_)
  alike = _look_alike(unknown[0], known)
  hint = (f"'{unknown[0]}' looks like layer '{alike}': give layer_macs and "
          'the masks the same tree (e.g. both variables[\'params\'])'
          if alike else f'the layers are {known[:4]}'
          f"{' ...' if len(known) > 4 else ''}")
  raise ConfigError(
      f'train_flops: {name} names {len(unknown)} path(s) that are no layer '
      f'of layer_macs ({unknown[:3]}{" ..." if len(unknown) > 3 else ""}); '
      f'key it by layer_macs\' paths: {hint}.')


def train_flops(layer_macs_: Mapping[str, float],
                weight_sparsity: Optional[Mapping[str, float]] = None,
                grad_sparsity: Optional[Mapping[str, float]] = None,
                num_examples: float = 1) -> float:
  """Training FLOPs of ``num_examples`` forward+backward passes.

  Args:
    layer_macs_: ``{path: forward MACs per example}`` from ``layer_macs``.
    weight_sparsity: ``{path: s_w}`` of the masked layers, keyed by
      ``layer_macs_``'s paths; layers missing here are dense.
    grad_sparsity: ``{path: s_g}``, keyed the same way; a masked layer
      missing here uses its weight sparsity (a weight-masked gradient is at
      least that sparse).
    num_examples: examples processed (stream examples kept by DDR plus
      replayed buffer examples).

  Returns:
    Total FLOPs (2 per MAC) as a float.

  Raises:
    ConfigError: if a sparsity names a path that is not in ``layer_macs_``
      (for example masks of ``variables['params']`` against MACs of the
      whole ``variables``, whose paths start with ``'params/'``): such a
      layer would otherwise count as dense.

  Examples:
    >>> train_flops({'a': 10, 'b': 100}, {'b': 0.5}, {'b': 0.8}, 2)
    600.0
    >>> macs = {'params/b': 100}
    >>> train_flops(macs, {'b': 0.5})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sparcl_jax.errors.ConfigError: train_flops: weight_sparsity names 1 ...
  """
  weight_sparsity = dict(weight_sparsity or {})
  grad_sparsity = dict(grad_sparsity or {})
  _check_paths(layer_macs_, weight_sparsity, 'weight_sparsity')
  _check_paths(layer_macs_, grad_sparsity, 'grad_sparsity')
  per_example = 0.0
  for path, macs in layer_macs_.items():
    s_w = float(weight_sparsity.get(path, 0.0))
    s_g = float(grad_sparsity.get(path, s_w))
    per_example += ((1.0 - s_w) * 2 + (1.0 - s_g)) * float(macs)
  return 2.0 * per_example * float(num_examples)


def dense_train_flops(layer_macs_: Mapping[str, float],
                      num_examples: float = 1) -> float:
  """Training FLOPs of the dense model: ``6 x MACs`` per example.

  Args:
    layer_macs_: ``{path: forward MACs per example}``.
    num_examples: examples processed.

  Returns:
    Total FLOPs as a float.

  Examples:
    >>> dense_train_flops({'a': 10, 'b': 100}, 2)
    1320.0
  """
  return train_flops(layer_macs_, None, None, num_examples)


def forward_macs(layer_macs_: Mapping[str, float]) -> int:
  """Total dense forward MACs per example.

  Args:
    layer_macs_: ``{path: forward MACs per example}``.

  Returns:
    The sum over layers.

  Examples:
    >>> forward_macs({'a': 10, 'b': 100})
    110
  """
  return int(sum(layer_macs_.values()))


__all__ = ['dense_train_flops', 'forward_macs', 'layer_macs', 'train_flops']
