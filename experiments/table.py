"""Prints a Markdown table comparing finished runs.

Usage:
  python experiments/table.py --baseline=WORKDIR_A WORKDIR_A WORKDIR_B ...

Each WORKDIR holds a ``results.json`` written by ``experiments/train.py``.
Training FLOPs are shown as totals and as the factor saved against the
baseline run (the first one unless ``--baseline`` names another).
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


def markdown_table(workdirs, baseline):
  """Returns the table as a string."""
  base = _load(baseline)
  rows = ["| run | Class-IL | Task-IL | training FLOPs | FLOPs saved | "
          "examples | wall time (s) |",
          "|---|---|---|---|---|---|---|"]
  for workdir in workdirs:
    r = _load(workdir)
    saved = base["train_flops"] / r["train_flops"]
    rows.append(
        f"| {_label(r)} | {r['final']['class_il']:.2f} | "
        f"{r['final']['task_il']:.2f} | {r['train_flops']:.3g} | "
        f"{saved:.2f}x | {r['train_examples']} | {r['wall_time_s']:.0f} |")
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
