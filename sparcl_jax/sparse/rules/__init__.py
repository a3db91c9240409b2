"""TDM's drop and grow rules: one score function each, one file per rule.

A rule is a function ``score(inputs: ScoreInputs) -> scores`` returning a
pytree with an array of the leaf's shape at every sparse leaf (higher =
keep, for a drop rule; higher = grow first, for a grow rule). It may return
``None`` (for the whole tree or at a leaf) to express no preference: the
drop-and-grow engine then picks uniformly at random, at no ranking cost.
Hyper-parameters are keyword-only arguments with defaults, set with
``functools.partial``.

Every module of this package is imported with it, and its rules register
themselves by name, so adding a rule is adding one file::

  @register_grow_score('my_rule')
  def my_rule(inputs):
    return jax.tree.map(...)

``tdm(drop_score=..., grow_score=...)`` takes a registered name or any
such function.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, NamedTuple, Optional

import jax

from sparcl_jax.errors import ConfigError

PyTree = Any


class ScoreInputs(NamedTuple):
  """What a score rule may read at a mask update.

  Attributes:
    params: the weights before this step's update.
    grads: this step's gradient, before TDM masks it (dense: RigL's growth
      reads it at zero positions).
    last_grads: TDM's ``g_last``, the masked (and DGM-masked) gradient of
      the last recorded step, at sparse leaves (``None`` at dense leaves);
      all zeros until ``has_grads``.
    has_grads: bool scalar: whether ``last_grads`` holds a real gradient.
    masks: the current masks (bool at sparse leaves, ``None`` elsewhere).
    rng: a PRNG key for rules that draw random numbers; it differs at every
      mask update.

  Examples:
    >>> def magnitude(inputs: sc.ScoreInputs):  # a drop rule: keep large |w|
    ...   return jax.tree.map(jnp.abs, inputs.params)
    >>> params = {'hidden_0': {'kernel': jnp.arange(16.0).reshape(4, 4)}}
    >>> tx = sc.tdm(optax.sgd(0.0), sparsity=0.5, drop_score=magnitude)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> _, state = tx.update(grads, tx.init(params), params, epoch=0,
    ...                      step_in_epoch=0)
    >>> sc.tdm_masks(state)['hidden_0']['kernel'].any(axis=1).tolist()
    [False, False, True, True]
  """

  params: PyTree
  grads: PyTree
  last_grads: PyTree
  has_grads: jax.Array
  masks: PyTree
  rng: jax.Array


ScoreFn = Callable[[ScoreInputs], Optional[PyTree]]

_RULES: dict[str, dict[str, ScoreFn]] = {'drop': {}, 'grow': {}}


def _register(kind: str, name: str) -> Callable[[ScoreFn], ScoreFn]:
  def decorator(fn: ScoreFn) -> ScoreFn:
    if name in _RULES[kind]:
      raise ValueError(f'A {kind} score named {name!r} is already registered.')
    _RULES[kind][name] = fn
    return fn

  return decorator


def _lookup(kind: str, name: str) -> ScoreFn:
  if name not in _RULES[kind]:
    raise ConfigError(f'Unknown {kind} score {name!r}; known: '
                      f'{", ".join(sorted(_RULES[kind]))}.')
  return _RULES[kind][name]


def register_drop_score(name: str) -> Callable[[ScoreFn], ScoreFn]:
  """Decorator registering a drop rule under ``name``.

  Args:
    name: the name ``tdm(drop_score=name)`` and ``drop_score`` look up.

  Returns:
    A decorator that registers the function and returns it unchanged.

  Raises:
    ValueError: (when applied) if ``name`` is already taken.

  Examples:
    >>> register_drop_score('importance')(lambda inputs: None)
    Traceback (most recent call last):
    ...
    ValueError: A drop score named 'importance' is already registered.
  """
  return _register('drop', name)


def register_grow_score(name: str) -> Callable[[ScoreFn], ScoreFn]:
  """Decorator registering a grow rule under ``name``.

  Args:
    name: the name ``tdm(grow_score=name)`` and ``grow_score`` look up.

  Returns:
    A decorator that registers the function and returns it unchanged.

  Raises:
    ValueError: (when applied) if ``name`` is already taken.

  Examples:
    >>> register_grow_score('random')(lambda inputs: None)
    Traceback (most recent call last):
    ...
    ValueError: A grow score named 'random' is already registered.
  """
  return _register('grow', name)


def drop_score(name: str) -> ScoreFn:
  """The drop rule registered under ``name``.

  Args:
    name: a name from ``drop_score_names()``.

  Returns:
    The score function.

  Raises:
    ConfigError: if no drop rule has that name (the message lists them).

  Examples:
    >>> drop_score('importance').__name__
    'importance_drop'
  """
  return _lookup('drop', name)


def grow_score(name: str) -> ScoreFn:
  """The grow rule registered under ``name``.

  Args:
    name: a name from ``grow_score_names()``.

  Returns:
    The score function.

  Raises:
    ConfigError: if no grow rule has that name (the message lists them).

  Examples:
    >>> grow_score('gradient').__name__
    'gradient_growth'
  """
  return _lookup('grow', name)


def drop_score_names() -> tuple[str, ...]:
  """Names of the registered drop rules, sorted.

  Returns:
    A tuple of names.

  Examples:
    >>> 'importance' in drop_score_names()
    True
  """
  return tuple(sorted(_RULES['drop']))


def grow_score_names() -> tuple[str, ...]:
  """Names of the registered grow rules, sorted.

  Returns:
    A tuple of names.

  Examples:
    >>> {'gradient', 'random'} <= set(grow_score_names())
    True
  """
  return tuple(sorted(_RULES['grow']))


# Last, so that the rule modules find the registry defined when they import
# it; sorted, so that registration order does not depend on the file system.
for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
  importlib.import_module(f'{__name__}.{_module.name}')


__all__ = [
    'ScoreFn', 'ScoreInputs', 'drop_score', 'drop_score_names', 'grow_score',
    'grow_score_names', 'register_drop_score', 'register_grow_score',
]
