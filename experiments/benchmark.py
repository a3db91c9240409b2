"""Speed, overhead, FLOP/s, memory and scaling of the training steps.

Measures, in one process so that ratios share the machine's state:

* per-step wall time (after compilation) of a plain optax SGD step and of the
  fine-tuning, DER++, SparCL-DER++ and CLNP steps, as ratios to the plain
  step; variants are timed interleaved (round-robin) and summarised by
  their median and quartiles;
* the compile time of each step and the number of compilations of whole
  multi-task runs (2 and 5 tasks);
* whole-epoch throughput (ordering, gathering, augmentation and the host loop
  included) against the bare step time;
* achieved FLOP/s of every step against a large dense matmul's (the practical
  peak of this machine), the matmul timed interleaved with the steps;
* peak host RSS (and device memory where the backend reports it);
* scaling of the step with batch size, buffer size and model width, and of a
  whole run with the number of tasks.

* the conv models (ResNet-18 nf 20, the Zenke CNN) through the library's
  steps against a bare jitted step of an independently written twin
  (``sparcl_jax/benchmarks/convnets.py``), and ``train.py`` itself with
  ResNet-18 on Split MNIST against that bare step (``--train_py``).

Inputs are random data of the real shapes (28x28x1 for the MLP, 32x32x3 for
the conv models; 16x16x3 in ``--quick``). ``--savings`` adds whole Split
MNIST runs of DER++ and SparCL-DER++ (real MNIST with ``--data_dir``, else
random data of its shape).

The measuring lives in :mod:`sparcl_jax.benchmarks`; this script is its
command line.

Usage:
  python experiments/benchmark.py --quick            # minutes on 2 CPU cores
  python experiments/benchmark.py --out=benchmark.json --savings \
      --data_dir=PATH/TO/mnist
  python experiments/benchmark.py --conv             # conv tables, 32x32x3
  python experiments/benchmark.py --train_py --data_dir=PATH/TO/mnist
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from sparcl_jax.benchmarks import conv
from sparcl_jax.benchmarks import report
from sparcl_jax.benchmarks import runs
from sparcl_jax.benchmarks import suite
from sparcl_jax.benchmarks.machine import environment

__all__ = ["main"]


def _conv_and_train_py(args: argparse.Namespace) -> dict:
  """The ``--conv`` and ``--train_py`` sections, printing as each ends."""
  results = {"environment": environment()}
  if args.conv:
    results["conv_steps"] = conv.conv_steps(False, 1024)
    results["conv_steps"]["resnet18_nf64"] = conv.paper_width_steps(1024)
    print("\n".join(report.format_conv_table(results["conv_steps"])))
    results["conv_epochs"] = conv.conv_epochs()
    print(report.format_conv_epochs(results["conv_epochs"]))
  if args.train_py:
    results["train_py"] = runs.train_py_against_bare(args.data_dir,
                                                     args.workdir)
    print(report.format_train_py(results["train_py"]))
  return results


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Command-line entry point.

  Args:
    argv: arguments (without the program name); None reads sys.argv.

  Returns:
    The exit status.

  Example:
    >>> main(['--quick', '--out=/tmp/b.json'])  # doctest: +SKIP
  """
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="small version, about 6 minutes on 2 CPUs")
  parser.add_argument("--out", default="benchmark.json",
                      help="where to write the JSON results")
  parser.add_argument("--savings", action="store_true",
                      help="add whole Split MNIST runs (DER++ vs SparCL)")
  parser.add_argument("--data_dir", default="",
                      help="MNIST IDX folder for --savings")
  parser.add_argument("--conv", action="store_true",
                      help="only the conv-model tables at full size "
                           "(ResNet-18 nf 20 and the Zenke CNN on 32x32x3 "
                           "against bare jitted steps)")
  parser.add_argument("--train_py", action="store_true",
                      help="only train.py with ResNet-18 nf 20 on Split "
                           "MNIST (--data_dir) against a bare step")
  parser.add_argument("--workdir", default="/tmp/sparcl_benchmark_train_py",
                      help="work directory of the --train_py run")
  args = parser.parse_args(argv)
  if args.train_py and not args.data_dir:
    parser.error("--train_py needs --data_dir=PATH/TO/mnist")
  if args.conv or args.train_py:
    results = _conv_and_train_py(args)
  else:
    results = suite.run_benchmark(args.quick, args.savings,
                                  args.data_dir or None)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)
  if not (args.conv or args.train_py):
    print(report.format_table(results))
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
