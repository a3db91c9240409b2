"""The plots a run leaves in its work directory, drawn from its results.

``acc_matrix.png`` (the Class-IL and Task-IL accuracy matrices, every run),
``sparsity.png`` (the final sparsity of each sparse layer, runs with masks)
and ``data_kept.png`` (the examples each epoch trained on, which DDR
shrinks; rehearsal-family runs).
CLNP's ``capacity.png`` is :mod:`sparcl_jax.training.capacity_plot`'s.
Every file name here is one of :data:`outputs.RUN_OUTPUTS
<sparcl_jax.training.outputs.RUN_OUTPUTS>`, so that ``--overwrite`` replaces
it.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

ACC_MATRIX_PLOT = "acc_matrix.png"
SPARSITY_PLOT = "sparsity.png"
DATA_KEPT_PLOT = "data_kept.png"


def _pyplot():
  # Imported on first use: matplotlib's import is slow, and only runs that
  # reach their end draw. Agg draws to files without a display.
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def plot_acc_matrix(workdir: str, class_il: Sequence[Sequence[float]],
                    task_il: Sequence[Sequence[float]], title: str) -> str:
  """Saves side-by-side heat maps of the Class-IL and Task-IL matrices.

  Args:
    workdir: directory for ``acc_matrix.png``.
    class_il: R[i][j] in percent.
    task_il: R[i][j] in percent.
    title: figure title.

  Returns:
    The PNG's path.

  Examples:
    >>> import os, tempfile
    >>> path = plot_acc_matrix(tempfile.mkdtemp(), [[90.0]], [[99.0]], "demo")
    >>> os.path.basename(path)
    'acc_matrix.png'
  """
  plt = _pyplot()
  mats = [np.asarray(class_il), np.asarray(task_il)]
  n = mats[0].shape[0]
  fig, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * n, 2 + 0.6 * n))
  for ax, mat, name in zip(axes, mats, ("Class-IL", "Task-IL")):
    ax.imshow(mat, vmin=0, vmax=100, cmap="viridis")
    ax.set_title(name)
    ax.set_xlabel("evaluated task j")
    ax.set_ylabel("after training task i")
    ax.set_xticks(range(n), [str(k + 1) for k in range(n)])
    ax.set_yticks(range(n), [str(k + 1) for k in range(n)])
    for i in range(n):
      for j in range(n):
        ax.text(j, i, f"{mat[i, j]:.0f}", ha="center", va="center",
                color="white" if mat[i, j] < 60 else "black", fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  path = os.path.join(workdir, ACC_MATRIX_PLOT)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_sparsity(workdir: str, layers: dict[str, dict[str, Any]],
                  title: str) -> str:
  """Saves a bar chart of the final sparsity of every sparse layer.

  Args:
    workdir: directory for ``sparsity.png``.
    layers: ``{path: {"sparsity": float, ...}}`` as in ``results.json``'s
      ``sparsity.masks.layers``.
    title: figure title.

  Returns:
    The PNG's path.

  Examples:
    >>> import os, tempfile
    >>> path = plot_sparsity(tempfile.mkdtemp(),
    ...                      {"hidden_0/kernel": {"sparsity": 0.75}}, "demo")
    >>> os.path.basename(path)
    'sparsity.png'
  """
  plt = _pyplot()
  names = list(layers)
  values = [layers[n]["sparsity"] for n in names]
  fig, ax = plt.subplots(figsize=(6, 1.5 + 0.3 * len(names)))
  ax.barh(range(len(names)), values)
  ax.set_yticks(range(len(names)), names, fontsize=7)
  ax.set_xlim(0, 1)
  ax.invert_yaxis()
  ax.set_xlabel("sparsity (share of zero weights)")
  ax.set_title(title)
  fig.tight_layout()
  path = os.path.join(workdir, SPARSITY_PLOT)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_data_kept(workdir: str, kept_per_epoch: Sequence[Sequence[int]],
                   title: str) -> str:
  """Saves the number of training examples used in every epoch of every task.

  Args:
    workdir: directory for ``data_kept.png``.
    kept_per_epoch: ``[task][epoch]`` example counts (DDR shrinks them).
    title: figure title.

  Returns:
    The PNG's path.

  Examples:
    >>> import os, tempfile
    >>> path = plot_data_kept(tempfile.mkdtemp(), [[100, 90], [100, 90]],
    ...                       "demo")
    >>> os.path.basename(path)
    'data_kept.png'
  """
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 3))
  for task, counts in enumerate(kept_per_epoch):
    ax.plot(range(1, len(counts) + 1), counts, marker="o", label=f"task {task + 1}")
  ax.set_xlabel("epoch in task")
  ax.set_ylabel("training examples kept")
  ax.set_title(title)
  ax.legend(fontsize=7)
  fig.tight_layout()
  path = os.path.join(workdir, DATA_KEPT_PLOT)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
