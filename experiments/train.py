"""Runs one continual-learning experiment.

Usage:
  python experiments/train.py --flagfile=experiments/configs/quickstart.cfg \
      --workdir=/tmp/quickstart

``--help`` lists every flag with its default, grouped by what it configures
(data and scenario, model, method and rehearsal, SparCL sparsity, CLNP / EWC /
SI, training, outputs and resume, devices and hosts); ``--list_configs`` lists
the shipped configs (experiments/configs) with a line each. A flagfile holds
one ``--flag=value`` per line and may include other flagfiles with
``--flagfile=...``.
"""

import sys

from sparcl_jax.training import cli

if __name__ == "__main__":
  sys.exit(cli.main(sys.argv))
