"""CLNP's capacity plot: the used share of every layer after each task."""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from sparcl_jax.errors import ConfigError

CAPACITY_PLOT = "capacity.png"


def plot_capacity(workdir: str, results: Mapping[str, Any]) -> str:
  """Saves the used share of each layer against tasks as ``capacity.png``.

  Args:
    workdir: output directory.
    results: a CLNP run's results (its ``capacity_plot_data``).

  Returns:
    The PNG's path.

  Raises:
    ConfigError: the results hold no capacity data (not a CLNP run).

  Examples:
    >>> plot_capacity('/tmp/run', results)  # doctest: +SKIP
    '/tmp/run/capacity.png'
  """
  data = results.get("capacity_plot_data")
  if not data:
    raise ConfigError("plot_capacity needs the results of a --method=clnp "
                      "run (no capacity_plot_data).")
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(5, 3.2))
  for name, fractions in data["used_fraction"].items():
    ax.plot(data["tasks"], [100.0 * f for f in fractions], marker="o",
            label=f"{name} ({data['units'][name]} units)")
  ax.set_xlabel("after training task")
  ax.set_ylabel("used capacity (%)")
  ax.set_ylim(0, 100)
  ax.set_xticks(data["tasks"])
  ax.set_title(f"CLNP capacity on {results.get('scenario', {}).get('name', '')}")
  ax.legend(fontsize=7)
  fig.tight_layout()
  path = os.path.join(workdir, CAPACITY_PLOT)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
