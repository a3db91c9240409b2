"""Compares finished runs: a table, a word on unlike settings, a plot.

``python experiments/compare.py WORKDIR...`` reads each run's
``results.json`` and prints one row per run: the run (its work directory's
name), the method and the SparCL parts that actually ran (results.json's
``parts``, not the flags), Class-IL, Task-IL, Class-IL forgetting and BWT,
the training FLOPs and their change against the first run, the training
time (``train_time_s``, net of compilation) and the speed-up against the
first run. A run of ``--num_seeds`` > 1 shows its accuracies as mean +- std
over seeds (numpy std, ddof 0), its FLOPs as the mean over seeds and its
time as the whole multi-seed run's.

FLOPs and times compare only between runs of one setting: when the runs
differ in a setting other than the method and its own flags (dataset,
scenario, tasks, epochs, model and its width, batch, buffer, seeds),
:func:`main` says so in one warning line on stderr.

Examples:
  >>> run = Run("dense", {"flags": {"method": "derpp"}, "train_flops": 4e12,
  ...                     "final": {"class_il": 88.5, "task_il": 99.1}})
  >>> row(run, run)["flops_change_pct"], row(run, run)["label"]
  (0.0, 'derpp')
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import sys
from typing import Any, Optional, Sequence

from sparcl_jax.errors import ConfigError

PROG = "compare.py"
RESULTS = "results.json"  # outputs.RESULTS, without importing the run code
# The settings that make runs comparable: the method's own flags
# (methods/settings.py) may differ, these may not (buffer_size where both
# methods have a buffer).
SETTINGS = ("dataset", "scenario", "num_tasks", "epochs", "model", "head",
            "hidden_sizes", "nf", "batch_size", "buffer_size", "num_seeds")
# Width flags: compared only between runs of one model (the other model's
# width flag is unused).
WIDTHS = {"hidden_sizes": "mlp", "nf": "resnet18"}
ACCURACIES = (("class_il", "Class-IL"), ("task_il", "Task-IL"),
              ("forgetting_class_il", "forgetting (Class-IL)"),
              ("bwt_class_il", "BWT (Class-IL)"))


class CompareError(ConfigError):
  """A workdir or results file that cannot be compared (one line)."""


@dataclasses.dataclass
class Run:
  """One finished run.

  Attributes:
    name: its work directory's name.
    results: its ``results.json``.
  """

  name: str
  results: dict[str, Any]

  @property
  def flags(self) -> dict[str, Any]:
    return self.results["flags"]

  @property
  def num_seeds(self) -> int:
    return len(self.results.get("per_seed", ())) or 1


def load_runs(workdirs: Sequence[str]) -> list[Run]:
  """Reads the ``results.json`` of each work directory.

  Args:
    workdirs: work directories of finished runs (or their results.json
      files).

  Returns:
    One :class:`Run` per workdir, in order.

  Raises:
    CompareError: a workdir or its results.json is missing, unreadable, or
      not a run's results.

  Examples:
    >>> import tempfile
    >>> workdir = tempfile.mkdtemp()
    >>> with open(os.path.join(workdir, "results.json"), "w") as f:
    ...   _ = f.write('{"final": {"class_il": 90.0, "task_il": 99.0}, '
    ...               '"flags": {"method": "er"}, "train_flops": 1e9}')
    >>> load_runs([workdir])[0].flags
    {'method': 'er'}
  """
  runs = []
  for workdir in workdirs:
    path, name = workdir, os.path.basename(os.path.normpath(workdir))
    if os.path.isdir(workdir):
      path = os.path.join(workdir, RESULTS)
    elif not os.path.exists(workdir):
      raise CompareError(f"{workdir}: no such work directory.")
    else:
      name = os.path.basename(os.path.dirname(os.path.abspath(workdir)))
    try:
      with open(path) as f:
        results = json.load(f)
    except FileNotFoundError:
      raise CompareError(f"{path} does not exist; run experiments/train.py "
                         "with that --workdir to the end first.") from None
    except OSError as err:
      raise CompareError(f"cannot read {path} ({err.strerror}).") from None
    except ValueError as err:  # UnicodeDecodeError included
      raise CompareError(f"{path} is not a run's results.json (not JSON: "
                         f"{err}).") from None
    final = results.get("final") if isinstance(results, dict) else None
    missing = [k for k in ("flags", "train_flops")
               if not isinstance(results, dict) or k not in results]
    missing += [f"final.{k}" for k in ("class_il", "task_il")
                if not isinstance(final, dict) or k not in final]
    if missing:
      raise CompareError(f"{path} is not the results.json of a run of "
                         f"experiments/train.py (it has no "
                         f"{', '.join(missing)}).")
    runs.append(Run(name, results))
  return runs


def label(run: Run) -> str:
  """The method, its weight sparsity when its weights were masked, and the
  parts that ran (``?`` when results.json predates ``parts``).

  Examples:
    >>> label(Run("s", {"flags": {"method": "sparcl_derpp", "sparsity": 0.98},
    ...                 "parts": ["TDM", "DDR"],
    ...                 "sparsity": {"masks": {}}}))
    'sparcl_derpp s=0.98'
  """
  text = run.flags["method"]
  if "masks" in run.results.get("sparsity", {}):
    text += f" s={run.flags.get('sparsity', '?')}"
  return text


def parts(run: Run) -> str:
  """The SparCL parts the run ran, ``TDM+DGM+DDR`` style; ``-`` for none,
  ``?`` for results without ``parts``.

  Examples:
    >>> parts(Run("s", {"parts": ["TDM", "DDR"]})), parts(Run("d", {}))
    ('TDM+DDR', '?')
  """
  if "parts" not in run.results:
    return "?"
  return "+".join(run.results["parts"]) or "-"


def setting_value(run: Run, name: str) -> Any:
  """The value of a comparable setting in ``run`` (None: not applicable).

  Examples:
    >>> setting_value(Run("a", {"flags": {}, "scenario": {"num_tasks": 5}}),
    ...               "num_tasks")
    5
  """
  if name == "num_seeds":
    return run.num_seeds
  if name == "num_tasks" and "num_tasks" in run.results.get("scenario", {}):
    return run.results["scenario"]["num_tasks"]  # what ran, not the flag
  if name in WIDTHS and run.flags.get("model") != WIDTHS[name]:
    return None
  return run.flags.get(name)


def setting_differences(runs: Sequence[Run]) -> dict[str, list[Any]]:
  """The comparable settings the runs differ in, with their values.

  A setting a run does not have (a buffer size for a method without buffer,
  an MLP width for a ResNet) is not compared for that run.

  Args:
    runs: the runs.

  Returns:
    ``{setting: [distinct values, in run order]}``, in :data:`SETTINGS`
    order; empty when the runs share every setting.

  Examples:
    >>> a = Run("a", {"flags": {"epochs": 1, "batch_size": 16}})
    >>> b = Run("b", {"flags": {"epochs": 10, "batch_size": 16}})
    >>> setting_differences([a, b])
    {'epochs': [1, 10]}
  """
  out = {}
  for name in SETTINGS:
    values = []
    for run in runs:
      value = setting_value(run, name)
      if value is not None and value not in values:
        values.append(value)
    if len(values) > 1:
      out[name] = values
  return out


def warning_line(differences: dict[str, list[Any]]) -> Optional[str]:
  """The warning on unlike settings, or None when there are none.

  Examples:
    >>> warning_line({"num_tasks": [2, 5], "epochs": [1, 10]})[:56]
    'warning: runs differ in num_tasks (2, 5), epochs (1, 10)'
  """
  if not differences:
    return None
  named = ", ".join(f"{name} ({', '.join(map(str, values))})"
                    for name, values in differences.items())
  return (f"warning: runs differ in {named}; their FLOPs and times are not "
          "comparable")


def row(run: Run, first: Run) -> dict[str, Any]:
  """One run's numbers, against ``first``'s FLOPs and training time.

  Args:
    run: the run.
    first: the run the others are measured against.

  Returns:
    ``run``, ``label``, ``parts``, each accuracy key of ``final`` and its
    ``_std`` (None for one seed or a missing key), ``train_flops``,
    ``flops_change_pct`` (100 * (flops / first's - 1)), ``train_time_s``,
    ``speedup`` (first's time / this one's; None without times), ``seeds``.

  Examples:
    >>> a = Run("a", {"flags": {"method": "derpp"}, "train_flops": 4e12,
    ...               "train_time_s": 30.0,
    ...               "final": {"class_il": 88.0, "task_il": 99.0}})
    >>> b = Run("b", dict(a.results, train_flops=1e12, train_time_s=20.0))
    >>> r = row(b, a)
    >>> r["flops_change_pct"], r["speedup"]
    (-75.0, 1.5)
  """
  results, final = run.results, run.results["final"]
  std = results.get("final_std", {}) if "per_seed" in results else {}
  out = {"run": run.name, "label": label(run), "parts": parts(run)}
  for key, _ in ACCURACIES:
    out[key] = final.get(key)
    out[key + "_std"] = std.get(key)
  out["train_flops"] = results["train_flops"]
  out["flops_change_pct"] = 100.0 * (results["train_flops"] /
                                     first.results["train_flops"] - 1.0)
  out["train_time_s"] = time = results.get("train_time_s")
  first_time = first.results.get("train_time_s")
  out["speedup"] = first_time / time if time and first_time else None
  out["seeds"] = run.num_seeds
  return out


def _mean_std(value, std) -> str:
  if value is None:
    return "-"
  return f"{value:.2f}" if std is None else f"{value:.2f} +- {std:.2f}"


def _seconds(value) -> str:
  if value is None:
    return "-"
  return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def markdown_table(runs: Sequence[Run]) -> str:
  """The comparison as a Markdown table under a note on its columns.

  Examples:
    >>> run = Run("dense", {"flags": {"method": "derpp"}, "train_flops": 4e12,
    ...                     "final": {"class_il": 88.5, "task_il": 99.1}})
    >>> print(markdown_table([run]).splitlines()[-1])
    | dense | derpp | ? | 88.50 | 99.10 | - | - | 4e+12 | +0% | - | - |
  """
  first = runs[0]
  multi = any(run.num_seeds > 1 for run in runs)
  note = (f"FLOPs vs first: change in training FLOPs against the first run "
          f"({first.name}), -62% = 62% fewer; speed-up: the first run's "
          "training time (train_time_s, net of compilation) over the run's.")
  if multi:
    counts = sorted({run.num_seeds for run in runs})
    note += (f" Accuracies: mean +- std over {' or '.join(map(str, counts))} "
             "seeds (numpy std, ddof 0); FLOPs: mean over seeds; time: the "
             "whole multi-seed run.")
  header = (["run", "method", "parts"] + [name for _, name in ACCURACIES] +
            ["training FLOPs", "FLOPs vs first", "train time (s)",
             "speed-up"] + (["seeds"] if multi else []))
  lines = [note, "", "| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  for run in runs:
    r = row(run, first)
    cells = [r["run"], r["label"], r["parts"]]
    cells += [_mean_std(r[key], r[key + "_std"]) for key, _ in ACCURACIES]
    cells += [f"{r['train_flops']:.3g}", f"{r['flops_change_pct']:+.0f}%",
              _seconds(r["train_time_s"]),
              "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"]
    if multi:
      cells.append(str(r["seeds"]))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def csv_table(runs: Sequence[Run]) -> str:
  """The comparison as CSV: one header row, then one row per run, numbers
  unformatted (an empty cell where a run has no value).

  Examples:
    >>> run = Run("dense", {"flags": {"method": "derpp"}, "train_flops": 4e12,
    ...                     "final": {"class_il": 88.5, "task_il": 99.1}})
    >>> print(csv_table([run]).splitlines()[0][:40])
    run,method,parts,class_il,class_il_std,t
  """
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  rows = [row(run, runs[0]) for run in runs]
  keys = [k for k in rows[0] if k != "label"]
  writer.writerow(["run", "method"] + keys[1:])
  for r in rows:
    writer.writerow([r["run"], r["label"]] +
                    ["" if r[k] is None else r[k] for k in keys[1:]])
  return out.getvalue()


def comparison_table(runs: Sequence[Run], fmt: str = "markdown") -> str:
  """The comparison of ``runs`` as ``fmt`` (``markdown`` or ``csv``).

  Examples:
    >>> run = Run("dense", {"flags": {"method": "derpp"}, "train_flops": 4e12,
    ...                     "final": {"class_il": 88.5, "task_il": 99.1}})
    >>> comparison_table([run], "csv") == csv_table([run])
    True
  """
  if fmt == "csv":
    return csv_table(runs)
  if fmt == "markdown":
    return markdown_table(runs)
  raise ValueError(f"fmt={fmt!r}: use 'markdown' or 'csv'")


def _pyplot():
  # Imported on first use (slow); Agg draws to files without a display.
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  from matplotlib import transforms  # pylint: disable=import-outside-toplevel
  return plt, transforms


def _label_heights(ys: Sequence[float], gap: float) -> list[float]:
  """Heights of labels beside points at ``ys``, pushed up to ``gap`` apart."""
  heights = [0.0] * len(ys)
  last = None
  for i in sorted(range(len(ys)), key=lambda i: ys[i]):
    heights[i] = ys[i] if last is None else max(ys[i], last + gap)
    last = heights[i]
  return heights


def plot_frontier(runs: Sequence[Run], path: str):
  """Draws accuracy against training time and against training FLOPs.

  Two panels, one point per run and accuracy (Class-IL filled, Task-IL
  hollow, joined by a thin line; error bars of one std for several seeds),
  each run labelled with its name and parts: up and left is better.

  Args:
    runs: the runs.
    path: the PNG to write.

  Returns:
    The matplotlib Figure (closed; its axes stay readable).

  Examples:
    >>> import tempfile
    >>> run = Run("dense", {"flags": {"method": "derpp"}, "train_flops": 4e12,
    ...                     "train_time_s": 9.0,
    ...                     "final": {"class_il": 88.5, "task_il": 99.1}})
    >>> figure = plot_frontier([run], tempfile.mktemp(suffix=".png"))
    >>> figure.axes[1].get_xlabel()
    'training FLOPs (log scale)'
  """
  plt, transforms = _pyplot()
  rows = [row(run, runs[0]) for run in runs]
  figure, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
  accuracies = [r[k] for r in rows for k in ("class_il", "task_il")]
  low = max(0.0, min(accuracies) - 8)
  high = min(100.0, max(accuracies) + 4)
  for ax, key, xlabel in (
      (axes[0], "train_time_s", "training time (s, net of compilation)"),
      (axes[1], "train_flops", "training FLOPs (log scale)")):
    shown = [r for r in rows if r[key] is not None]
    for r in shown:
      ax.plot([r[key]] * 2, [r["class_il"], r["task_il"]], color="0.75",
              lw=1, zorder=1)
      for acc, marker, face, color in (("class_il", "o", "C0", "C0"),
                                       ("task_il", "s", "white", "C1")):
        ax.errorbar(r[key], r[acc], yerr=r[acc + "_std"], fmt=marker,
                    markersize=8, capsize=4, color=color,
                    markerfacecolor=face, zorder=2)
    beside = ax.transData + transforms.ScaledTranslation(
        0.2, 0, figure.dpi_scale_trans)  # 0.2 inch right of the point
    heights = _label_heights([r["class_il"] for r in shown],
                             0.055 * (high - low))
    for r, height in zip(shown, heights):
      text = r["run"] + ("" if r["parts"] in "-?" else f" ({r['parts']})")
      ax.annotate(text, (r[key], r["class_il"]), (r[key], height),
                  textcoords=beside, fontsize=9, va="center",
                  arrowprops=dict(arrowstyle="-", color="0.5", lw=0.6,
                                  shrinkA=0, shrinkB=5))
    values = [r[key] for r in shown]
    if key == "train_flops" and values:
      ax.set_xscale("log")
      ax.set_xlim(min(values) / 2, max(values) * 6)
    elif values:
      ax.set_xlim(0, max(values) * 1.5)
    ax.set_xlabel(xlabel)
    ax.grid(True, alpha=0.3)
  axes[0].set_ylim(low, high)
  axes[0].set_ylabel("accuracy after the last task (%)")
  handles = [plt.Line2D([], [], marker="o", ls="", color="C0",
                        label="Class-IL"),
             plt.Line2D([], [], marker="s", ls="", color="C1",
                        markerfacecolor="white", label="Task-IL")]
  figure.legend(handles=handles, loc="upper right", ncol=2, frameon=False)
  figure.suptitle(f"Accuracy against training cost, {len(rows)} runs "
                  "(up and to the left is better)", x=0.4)
  warning = warning_line(setting_differences(runs))
  if warning:  # the plot travels without the terminal's warning
    figure.text(0.4, 0.91, warning.replace("warning: ", ""), ha="center",
                color="C3", fontsize=9)
  figure.tight_layout(rect=(0, 0, 1, 0.9 if warning else 0.95))
  figure.savefig(path, dpi=120)
  plt.close(figure)
  return figure


class _Parser(argparse.ArgumentParser):
  """argparse whose errors are one line, ``compare.py: error: ...``."""

  def error(self, message):
    print(f"{self.prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Prints the comparison of the runs named in ``argv``.

  Args:
    argv: the arguments after the program name: ``WORKDIR...``, and
      ``--csv`` or ``--plot FILE``.

  Returns:
    0, or 2 after one ``compare.py: error: ...`` line on stderr (a
    missing workdir or results file, a file that is not a run's results,
    an unknown flag).

  Examples:
    >>> main(["/no/such/run"])
    2
  """
  parser = _Parser(prog=PROG, description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR",
                      help="work directories of finished runs; the first "
                           "is the one FLOPs and times are measured against")
  parser.add_argument("--csv", action="store_true",
                      help="print CSV instead of Markdown")
  parser.add_argument("--plot", metavar="FILE",
                      help="also draw accuracy against training time and "
                           "FLOPs to this PNG")
  try:
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  except SystemExit as exit_:
    return int(exit_.code or 0)
  try:
    runs = load_runs(args.workdirs)
    warning = warning_line(setting_differences(runs))
    if warning:
      print(warning, file=sys.stderr)
    print(comparison_table(runs, "csv" if args.csv else "markdown"),
          end="" if args.csv else "\n")
    if args.plot:
      try:
        plot_frontier(runs, args.plot)
      except OSError as err:
        raise CompareError(f"cannot write --plot={args.plot} "
                           f"({err.strerror or err}).") from None
  except CompareError as err:
    print(f"{PROG}: error: {err}", file=sys.stderr)
    return 2
  return 0
