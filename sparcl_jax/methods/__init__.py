"""Continual-learning methods, registered by name.

Each method is an object (a subclass of :class:`Method`) that tells the
training loop what is particular to it: its replay loss, how its optimizer
is built, whether it keeps a buffer, what it does at a task's end, what it
adds to the FLOPs count, and which flags it reads (its ``settings`` class,
:mod:`sparcl_jax.methods.settings`). ``--method=NAME`` looks the name up here;
no other code compares method names.

Every module of this package is imported when the package is, so a new
method is one new file whose class carries the :func:`register` decorator.

Examples:
  >>> from sparcl_jax import methods
  >>> methods.get("derpp").replay_batches
  2
  >>> "derpp" in methods.names()
  True
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Optional

from sparcl_jax.errors import ConfigError
from sparcl_jax.methods.base import (REHEARSAL, TASK_LEVEL, Method,
                                     base_optimizer, gradient_masking,
                                     mask_schedule, sparse_filter)

_REGISTRY: dict[str, Method] = {}


def register(cls: type) -> type:
  """Class decorator: registers one instance of ``cls`` under ``cls.name``.

  Args:
    cls: a :class:`Method` subclass with a unique ``name``.

  Returns:
    ``cls`` unchanged.

  Raises:
    ValueError: the name is empty or taken.

  Examples:
    >>> @register
    ... class Example(Method):
    ...   name = "example_fine_tuning"
    >>> get("example_fine_tuning").uses_buffer
    False
    >>> _ = _REGISTRY.pop("example_fine_tuning")
  """
  method = cls()
  if not method.name or method.name in _REGISTRY:
    raise ValueError(f"method name {method.name!r} is empty or taken")
  _REGISTRY[method.name] = method
  return cls


def get(name: str) -> Method:
  """Returns the registered method called ``name``.

  Args:
    name: a method name, as given to ``--method``.

  Returns:
    The method object.

  Raises:
    ConfigError: no method has that name (the message lists them).

  Examples:
    >>> get("er").replay
    'er'
  """
  if name not in _REGISTRY:
    raise ConfigError(f"--method={name!r} is not known; choose one of: "
                      f"{', '.join(names())}.")
  return _REGISTRY[name]


def names(family: Optional[str] = None) -> tuple[str, ...]:
  """Names of the registered methods, optionally of one family only.

  Args:
    family: ``methods.REHEARSAL``, ``methods.TASK_LEVEL``, or None for all.

  Returns:
    The names, in a stable order (by ``Method.order``, then name).

  Examples:
    >>> names(TASK_LEVEL)
    ('clnp', 'ewc', 'si', 'single_task')
  """
  chosen = [m for m in _REGISTRY.values()
            if family is None or m.family == family]
  return tuple(m.name for m in sorted(chosen, key=lambda m: (m.order, m.name)))


for _module in pkgutil.iter_modules(__path__):
  if _module.name != "base":
    importlib.import_module(f"{__name__}.{_module.name}")
