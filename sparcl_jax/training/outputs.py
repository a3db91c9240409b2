"""What a run leaves in its work directory, and how it is written safely.

Layout: ``config`` (the resolved flags, itself a flagfile), ``results.json``,
``metrics.jsonl`` (one JSON object per epoch and per evaluation) and
``acc_matrix.png``. Files are written to a temporary name and renamed, so an
interrupted write never leaves half a results file.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Optional, Sequence

import numpy as np

from sparcl_jax.errors import ConfigError

RESULTS = "results.json"
CONFIG = "config"
METRICS_LOG = "metrics.jsonl"
HEATMAP = "acc_matrix.png"


def prepare_workdir(path: str, overwrite: bool) -> str:
  """Creates the work directory and checks it can take this run's results.

  Args:
    path: the directory.
    overwrite: whether finished results already there may be replaced.

  Returns:
    The absolute path.

  Raises:
    ConfigError: the directory cannot be created or written, or it holds
      finished results and ``overwrite`` is False.

  Example:
    >>> prepare_workdir("/tmp/sparcl_run", overwrite=False)  # doctest: +SKIP
    '/tmp/sparcl_run'
  """
  path = os.path.abspath(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"--workdir={path} is a file, not a directory; choose "
                      "another --workdir.")
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path):
      pass
  except OSError as err:
    raise ConfigError(f"cannot write to --workdir={path} "
                      f"({err.strerror}); choose a writable directory.")
  if os.path.exists(os.path.join(path, RESULTS)) and not overwrite:
    raise ConfigError(f"--workdir={path} already holds finished results "
                      f"({RESULTS}); choose another --workdir or pass "
                      "--overwrite to replace them.")
  return path


def write_atomic(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` through a temporary file and a rename."""
  directory = os.path.dirname(path) or "."
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_config(workdir: str, values: dict[str, Any]) -> None:
  """Writes the resolved flags as a flagfile that reproduces the run."""
  lines = []
  for name, value in values.items():
    if isinstance(value, bool):
      lines.append(f"--{name}" if value else f"--no{name}")
    else:
      lines.append(f"--{name}={value}")
  write_atomic(os.path.join(workdir, CONFIG), "\n".join(lines) + "\n")


def write_results(workdir: str, results: dict[str, Any]) -> None:
  write_atomic(os.path.join(workdir, RESULTS),
               json.dumps(results, indent=2, sort_keys=True) + "\n")


class MetricsLog:
  """Appends one JSON object per line to ``metrics.jsonl``.

  Args:
    workdir: the run's directory.
    keep_records: None starts a new log; a number resumes one, keeping that
      many records (those logged up to the checkpoint being resumed) and
      dropping later ones, which the resumed run logs again.
  """

  def __init__(self, workdir: str, keep_records: Optional[int] = None):
    self.path = os.path.join(workdir, METRICS_LOG)
    kept = []
    if keep_records is not None and os.path.exists(self.path):
      with open(self.path) as f:
        kept = f.readlines()[:keep_records]
    # A new run starts a new log; a half-finished earlier log is not results.
    write_atomic(self.path, "".join(kept))

  def __call__(self, record: dict[str, Any]) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")


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

  Example:
    >>> plot_acc_matrix("/tmp", [[90.0]], [[99.0]], "demo")  # doctest: +SKIP
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
  path = os.path.join(workdir, HEATMAP)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def summary_table(results: dict[str, Any]) -> str:
  """A plain-text table of a run's accuracies and summary metrics."""
  class_il = np.asarray(results["acc_matrix"]["class_il"])
  task_il = np.asarray(results["acc_matrix"]["task_il"])
  n = class_il.shape[0]
  lines = ["task  class-IL  task-IL   (accuracy after the last task, %)"]
  for j in range(n):
    lines.append(f"{j + 1:>4}  {class_il[-1, j]:8.2f}  {task_il[-1, j]:7.2f}")
  final = results["final"]
  lines.append(f"mean  {final['class_il']:8.2f}  {final['task_il']:7.2f}")
  lines.append(f"forgetting  class-IL {final['forgetting_class_il']:.2f}  "
               f"task-IL {final['forgetting_task_il']:.2f};  BWT class-IL "
               f"{final['bwt_class_il']:.2f}  task-IL "
               f"{final['bwt_task_il']:.2f}")
  lines.append(f"wall time {results['wall_time_s']:.1f} s")
  return "\n".join(lines)


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


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

  Example:
    >>> plot_sparsity("/tmp", {"hidden_0/kernel": {"sparsity": 0.75}},
    ...               "demo")  # doctest: +SKIP
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
  path = os.path.join(workdir, "sparsity.png")
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

  Example:
    >>> plot_data_kept("/tmp", [[100, 90], [100, 90]], "demo")  # doctest: +SKIP
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
  path = os.path.join(workdir, "data_kept.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
