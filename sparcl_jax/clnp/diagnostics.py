"""CLNP's diagnostics: how much capacity each task claimed and reused."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from sparcl_jax.clnp.specs import UsedUnits
from sparcl_jax.errors import ConfigError


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

  Examples:
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


def capacity_plot_data(used_history: Sequence[Mapping[str, np.ndarray]]
                       ) -> dict[str, Any]:
  """Used share of every hidden layer after each committed task.

  Args:
    used_history: ``used`` dicts after each task, in order.

  Returns:
    ``{'tasks': [1..T], 'units': {layer: width}, 'used_fraction': {layer:
    [fraction after task 1, ...]}}``.

  Examples:
    >>> capacity_plot_data([{'hidden_0': np.array([True, False])}])
    {'tasks': [1], 'units': {'hidden_0': 2}, 'used_fraction': {'hidden_0': [0.5]}}
  """
  if not used_history:
    return {"tasks": [], "units": {}, "used_fraction": {}}
  names = list(used_history[0])
  return {
      "tasks": list(range(1, len(used_history) + 1)),
      "units": {n: int(np.size(used_history[0][n])) for n in names},
      "used_fraction": {n: [float(np.mean(u[n])) for u in used_history]
                        for n in names},
  }
