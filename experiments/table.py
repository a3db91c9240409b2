"""Prints a Markdown table comparing finished runs.

Usage:
  python experiments/table.py --baseline=WORKDIR_A WORKDIR_A WORKDIR_B ...

Each WORKDIR holds a ``results.json`` written by ``experiments/train.py``.
Training FLOPs are shown as totals and as the factor saved against the
baseline run (the first one unless ``--baseline`` names another).

A run trained with ``--num_seeds=N`` (its results.json has ``per_seed``)
shows Class-IL and Task-IL as mean +- std over its seeds (numpy std,
ddof 0), and the table gains a ``seeds`` column and a line saying so;
its FLOPs and examples are the means over seeds and its wall time that of
the whole multi-seed run. Tables of single-seed runs are unchanged.
"""

import argparse
import json
import os
import sys


def _load(workdir):
  path = os.path.join(workdir, "results.json")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as err:
    raise SystemExit(f"table.py: error: cannot read {path} ({err}); run "
                     "experiments/train.py with that --workdir first.")


def _label(results):
  flags = results["flags"]
  label = flags["method"]
  if label.startswith("sparcl_"):
    parts = [p for p in ("tdm", "dgm", "ddr") if flags.get(p)]
    label += " (" + "+".join(p.upper() for p in parts) + ")"
  if flags["method"].startswith(("sparcl_", "snip_", "rigl_")) and flags.get(
      "tdm", True):
    label += f", s={flags['sparsity']}"
  return label


def _num_seeds(results):
  return len(results["per_seed"]) if "per_seed" in results else 1


def _accuracy(results, key):
  """``final[key]``, as mean +- std when the run has several seeds."""
  if "per_seed" not in results:
    return f"{results['final'][key]:.2f}"
  return f"{results['final'][key]:.2f} +- {results['final_std'][key]:.2f}"


def markdown_table(workdirs, baseline):
  """Returns the table as a string."""
  base = _load(baseline)
  runs = [_load(workdir) for workdir in workdirs]
  multi = any("per_seed" in r for r in runs)
  rows = []
  if multi:
    counts = sorted({_num_seeds(r) for r in runs})
    rows += [f"Class-IL, Task-IL: mean +- std over "
             f"{' or '.join(map(str, counts))} seeds (numpy std, ddof 0); "
             "training FLOPs and examples: mean over seeds; wall time: the "
             "whole multi-seed run.", ""]
  rows += ["| run | Class-IL | Task-IL | training FLOPs | FLOPs saved | "
           "examples | wall time (s) |" + (" seeds |" if multi else ""),
           "|---|---|---|---|---|---|---|" + ("---|" if multi else "")]
  for r in runs:
    saved = base["train_flops"] / r["train_flops"]
    row = (f"| {_label(r)} | {_accuracy(r, 'class_il')} | "
           f"{_accuracy(r, 'task_il')} | {r['train_flops']:.3g} | "
           f"{saved:.2f}x | {r['train_examples']:.0f} | "
           f"{r['wall_time_s']:.0f} |")
    if multi:
      row += f" {_num_seeds(r)} |"
    rows.append(row)
  return "\n".join(rows)


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--baseline", default=None)
  args = parser.parse_args(argv)
  print(markdown_table(args.workdirs, args.baseline or args.workdirs[0]))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
