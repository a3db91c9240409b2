"""Every default section of the benchmark in one process.

One process so that ratios across sections share the machine's state; the
sections run in the order of the printed table.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from benchmarks import conv
from benchmarks import mlp
from benchmarks import runs
from benchmarks.harness import say
from benchmarks.inputs import make_config, random_scenario
from benchmarks.machine import environment, memory_report
from benchmarks.reference import matmul_flops_per_s


def run_benchmark(quick: bool, savings: bool = False,
                  data_dir: Optional[str] = None) -> dict:
  """Runs every section and returns the results dict.

  Args:
    quick: the small version (about 6 minutes on 2 busy CPU cores).
    savings: add the whole Split MNIST runs.
    data_dir: MNIST folder for ``savings``.

  Returns:
    The JSON-able results.

  Example:
    >>> results = run_benchmark(quick=True)  # doctest: +SKIP
  """
  start = time.perf_counter()
  results: dict[str, Any] = {"environment": environment(), "quick": quick}
  results["matmul"] = matmul_flops_per_s(1024 if quick else 2048,
                                         5 if quick else 9)
  mlp_data = mlp.mlp_data(quick)
  results["steps"] = mlp.mlp_steps(mlp_data, quick,
                                   results["matmul"]["flops_per_s"],
                                   results["matmul"]["n"])
  results["conv_steps"] = conv.conv_steps(quick, results["matmul"]["n"])
  say("epoch throughput")
  results["epoch_throughput"] = {
      "mlp_784_2000_2000": runs.epoch_throughput(make_config("sgd"),
                                                 mlp_data, 3 if quick else 5)}
  if not quick:
    img = random_scenario((32, 32, 3), 16 * 32, augment=True)
    results["epoch_throughput"]["resnet18_nf20_augment"] = (
        runs.epoch_throughput(
            make_config("sgd", model="resnet18", nf=20, steps_per_call=8),
            img, 3))
  say("compilations of whole runs")
  results["compiles"] = runs.compile_counts()
  if not quick:
    results["scaling"] = mlp.full_scaling()
  results["scaling_tasks"] = {
      n: {k: v for k, v in r.items() if k in ("wall_s", "eval_s",
                                                "compiles")}
      for n, r in results["compiles"].items()}
  if savings:
    results["split_mnist_savings"] = runs.split_mnist_savings(data_dir)
  results["memory"] = memory_report()
  results["total_s"] = time.perf_counter() - start
  return results
