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
  (``benchmarks/convnets.py``), and ``train.py`` itself with
  ResNet-18 on Split MNIST against that bare step (``--train_py``).

Inputs are random data of the real shapes (28x28x1 for the MLP, 32x32x3 for
the conv models; 16x16x3 in ``--quick``). ``--savings`` adds whole Split
MNIST runs of DER++ and SparCL-DER++ (real MNIST with ``--data_dir``, else
random data of its shape).

* structured sparsity (issue 13): ``--structured`` times the train chunks of
  dense DER++, structured (``--mask_structure=grouped``) and unstructured
  SparCL-DER++ at sparsity 0.75/0.90/0.95 on the MLP 784-2000-2000
  (interleaved, batch 32 and 256; ``--quick``: batch 32, fewer samples);
  ``--structured_runs`` runs the matching Split MNIST configs with
  ``train.py`` back to back (``--data_dir``) and tabulates training time,
  accuracy and FLOPs. ``--structured_conv`` times the same variants on
  ResNet-18 nf 20 at Split MNIST's 28x28x1 (issue 26);
  ``--structured_conv_32`` dense and structured on nf 20 and nf 64 at
  32x32x3.

* several seeds in one run (issue 16): ``--seeds`` runs ``train.py`` on
  ``--seeds_config`` (default: the DER++ paper's Split MNIST setting) with
  ``--num_seeds=1`` and ``--num_seeds=10``, alternating, and reports the
  ratio of their wall times.

The measuring lives in the checkout's top-level :mod:`benchmarks` package
(not installed with the library); this script is its command line and runs
from any current folder.

Usage:
  python experiments/benchmark.py --quick            # minutes on 2 CPU cores
  python experiments/benchmark.py --out=benchmark.json --savings \
      --data_dir=PATH/TO/mnist
  python experiments/benchmark.py --conv             # conv tables, 32x32x3
  python experiments/benchmark.py --train_py --data_dir=PATH/TO/mnist
  python experiments/benchmark.py --structured --out=structured.json
  python experiments/benchmark.py --structured_conv   # ResNet-18 structured
  python experiments/benchmark.py --structured_conv_32  # nf 20, 64 at 32x32x3
  python experiments/benchmark.py --structured_runs --data_dir=PATH/TO/mnist
  python experiments/benchmark.py --structured_conv_runs --data_dir=PATH/TO/data
  python experiments/benchmark.py --seeds --data_dir=PATH/TO/mnist
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

# The harness is a package of the checkout, not of the installed library: put
# the checkout (this script's folder's parent) first on the path so that
# ``benchmarks`` and this checkout's ``sparcl_jax`` import from any folder.
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _CHECKOUT)

# pylint: disable=wrong-import-position
from benchmarks import conv
from benchmarks import report
from benchmarks import runs
from benchmarks import seeds
from benchmarks import structured
from benchmarks import suite
from benchmarks.machine import environment
# pylint: enable=wrong-import-position

__all__ = ["main"]


# Work directories of the sections that run train.py, unless --workdir.
_WORKDIRS = {"train_py": "/tmp/sparcl_benchmark_train_py",
             "structured_runs": "/tmp/sparcl_benchmark_structured",
             "structured_conv_runs": "/tmp/sparcl_benchmark_structured_conv",
             "seeds": "/tmp/sparcl_benchmark_seeds"}
_SEEDS_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                             "configs", "split_mnist_derpp.cfg")


def _sections(args: argparse.Namespace) -> dict:
  """The ``--conv``, ``--train_py`` and structured sections, printing as
  each ends."""
  results = {"environment": environment()}
  if args.conv:
    results["conv_steps"] = conv.conv_steps(False, 1024)
    results["conv_steps"]["resnet18_nf64"] = conv.paper_width_steps(1024)
    print("\n".join(report.format_conv_table(results["conv_steps"])))
    results["conv_epochs"] = conv.conv_epochs()
    print(report.format_conv_epochs(results["conv_epochs"]))
  if args.train_py:
    results["train_py"] = runs.train_py_against_bare(
        args.data_dir, args.workdir or _WORKDIRS["train_py"])
    print(report.format_train_py(results["train_py"]))
  if args.structured:
    # --quick: batch 32 only and 3 samples instead of 5.
    results["structured_steps"] = structured.structured_steps(
        batch_sizes=(32,) if args.quick else (32, 256),
        repeats=3 if args.quick else 5)
    print(report.format_structured_steps(results["structured_steps"]))
  if args.structured_conv:
    # ResNet-18 nf 20 on Split MNIST's shape, batch 32; short simulated
    # epochs (a ResNet chunk per variant compiles for tens of seconds). The
    # structured variants take the ResNet configs' SparCL settings; their
    # one epoch per task makes the timed epoch the task's first.
    results["structured_conv_steps"] = structured.structured_steps(
        batch_sizes=(32,), repeats=3 if args.quick else 5,
        steps_per_call=10, steps_per_epoch=30,
        model_flags={"model": "resnet18", "nf": 20},
        structured_flags=structured.resnet_structured_flags, epoch=0,
        unstructured=not args.quick)
    print(report.format_structured_steps(results["structured_conv_steps"]))
  if args.structured_conv_32:
    # The papers' input shape: ResNet-18 nf 20 and nf 64 on 32x32x3, dense
    # DER++ and structured SparCL-DER++ only; nf 64's step is about ten
    # times nf 20's, so its simulated epochs are shorter.
    results["structured_conv_32_steps"] = []
    for nf, steps in ((20, 30), (64, 10)):
      r = structured.structured_steps(
          batch_sizes=(32,), repeats=2 if args.quick else 3,
          steps_per_call=10, steps_per_epoch=steps,
          image_shape=(32, 32, 3),
          model_flags={"model": "resnet18", "nf": nf},
          structured_flags=structured.resnet_structured_flags, epoch=0,
          unstructured=False)
      results["structured_conv_32_steps"].append(r)
      print(report.format_structured_steps(r))
  if args.structured_runs:
    results["structured_runs"] = structured.structured_train_times(
        args.data_dir, args.workdir or _WORKDIRS["structured_runs"])
    print(report.format_structured_train_times(results["structured_runs"]))
  if args.structured_conv_runs:
    results["structured_conv_runs"] = structured.structured_train_times(
        None, args.workdir or _WORKDIRS["structured_conv_runs"],
        configs=structured.resnet_seed_runs(
            os.path.abspath(args.data_dir), range(args.run_seeds)))
    print(report.format_structured_train_times(
        results["structured_conv_runs"]))
    results["structured_conv_summary"] = structured.seed_summary(
        results["structured_conv_runs"])
    print(report.format_seed_summary(results["structured_conv_summary"]))
  if args.seeds:
    extra = [f"--data_dir={args.data_dir}"] if args.data_dir else []
    results["seeds"] = seeds.seeds_against_one(
        args.seeds_config, args.workdir or _WORKDIRS["seeds"],
        args.num_seeds, args.seeds_rounds, extra)
    print(seeds.format_seeds(results["seeds"]))
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
                      help="MNIST IDX folder for --savings, --train_py "
                           "and --structured_runs")
  parser.add_argument("--conv", action="store_true",
                      help="only the conv-model tables at full size "
                           "(ResNet-18 nf 20 and the Zenke CNN on 32x32x3 "
                           "against bare jitted steps)")
  parser.add_argument("--train_py", action="store_true",
                      help="only train.py with ResNet-18 nf 20 on Split "
                           "MNIST (--data_dir) against a bare step")
  parser.add_argument("--structured", action="store_true",
                      help="only the structured-sparsity step table: dense "
                           "DER++, structured and unstructured SparCL-DER++ "
                           "at sparsity 0.75/0.90/0.95 on the MLP "
                           "784-2000-2000, batch 32 and 256 (--quick: 32); "
                           "about 19 minutes on 2 busy CPU cores")
  parser.add_argument("--structured_conv", action="store_true",
                      help="only the structured-sparsity step table of "
                           "ResNet-18 nf 20 (28x28x1, batch 32): dense "
                           "DER++, structured (and, without --quick, "
                           "unstructured) SparCL-DER++ at 0.75/0.90/0.95")
  parser.add_argument("--structured_conv_32", action="store_true",
                      help="only the structured-sparsity step tables of "
                           "ResNet-18 nf 20 and nf 64 on 32x32x3, batch 32: "
                           "dense DER++ and structured SparCL-DER++ at "
                           "0.75/0.90/0.95")
  parser.add_argument("--structured_runs", action="store_true",
                      help="only whole Split MNIST runs (--data_dir) of the "
                           "MLP 784-2000-2000 configs, dense, structured and "
                           "unstructured, back to back with train.py")
  parser.add_argument("--structured_conv_runs", action="store_true",
                      help="only whole Split MNIST runs (--data_dir) of the "
                           "ResNet-18 configs, dense DER++ and structured "
                           "SparCL-DER++ at 0.75/0.90/0.95, --run_seeds "
                           "seeds, each seed's four back to back; about 85 "
                           "minutes on 2 CPU cores for 3 seeds")
  parser.add_argument("--run_seeds", type=int, default=3,
                      help="seeds (0, 1, ...) of --structured_conv_runs")
  parser.add_argument("--seeds", action="store_true",
                      help="only --num_seeds seeds in one vmapped train.py "
                           "run against one seed, alternating, on "
                           "--seeds_config (with --data_dir)")
  parser.add_argument("--seeds_config", default=_SEEDS_CONFIG,
                      help="flagfile of --seeds (default: the DER++ "
                           "paper's Split MNIST setting)")
  parser.add_argument("--num_seeds", type=int, default=10,
                      help="seeds of the many-seed run of --seeds")
  parser.add_argument("--seeds_rounds", type=int, default=2,
                      help="(one seed, many seeds) pairs --seeds runs")
  parser.add_argument("--workdir", default=None,
                      help="work directory of the --train_py run, parent "
                           "of the --structured_runs and "
                           "--structured_conv_runs runs (default "
                           f"{_WORKDIRS['train_py']}, "
                           f"{_WORKDIRS['structured_runs']}, "
                           f"{_WORKDIRS['structured_conv_runs']})")
  args = parser.parse_args(argv)
  if args.train_py and not args.data_dir:
    parser.error("--train_py needs --data_dir=PATH/TO/mnist")
  if args.structured_runs and not args.data_dir:
    parser.error("--structured_runs needs --data_dir=PATH/TO/mnist")
  if args.structured_runs and not os.path.isdir(args.data_dir):
    parser.error(f"--data_dir={args.data_dir} is not a folder")
  if args.structured_conv_runs and not args.data_dir:
    parser.error("--structured_conv_runs needs --data_dir=PATH/TO/data "
                 "(where MNIST is, or is to be downloaded)")
  if args.run_seeds < 1:
    parser.error("--run_seeds must be at least 1")
  if sum((args.train_py, args.structured_runs, args.structured_conv_runs,
          args.seeds)) > 1 and (
      args.workdir):
    parser.error("--workdir serves one of --train_py, --structured_runs and "
                 "--seeds; run them apart")
  if args.num_seeds < 1 or args.seeds_rounds < 1:
    parser.error("--num_seeds and --seeds_rounds must be at least 1")
  only = (args.conv or args.train_py or args.structured or
          args.structured_conv or args.structured_conv_32 or
          args.structured_runs or args.structured_conv_runs or args.seeds)
  if only:
    results = _sections(args)
  else:
    results = suite.run_benchmark(args.quick, args.savings,
                                  args.data_dir or None)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)
  if not only:
    print(report.format_table(results))
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
