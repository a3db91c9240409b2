"""Runs one continual-learning experiment.

Usage:
  python experiments/train.py --flagfile=experiments/configs/quickstart.cfg \
      --workdir=/tmp/quickstart

Every flag is listed by ``--help``; a flagfile holds one ``--flag=value`` per
line and may include other flagfiles with ``--flagfile=...``.
"""

import sys

from sparcl_jax.training import cli

if __name__ == "__main__":
  sys.exit(cli.main(sys.argv))
