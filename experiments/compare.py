"""Compares finished runs: one row per run, a warning on unlike settings.

Usage:
  python experiments/compare.py WORKDIR_A WORKDIR_B ...
  python experiments/compare.py --csv WORKDIR_A WORKDIR_B > runs.csv
  python experiments/compare.py --plot=frontier.png WORKDIR_A WORKDIR_B

Each WORKDIR holds a ``results.json`` written by ``experiments/train.py``;
FLOPs and training times are measured against the first. The logic is
``sparcl_jax.training.compare`` (importable from a notebook).
"""

import sys

from sparcl_jax.training import compare

if __name__ == "__main__":
  sys.exit(compare.main(sys.argv[1:]))
