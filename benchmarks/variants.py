"""Every step variant timed against the others, in one interleaved run.

Per-step time, compile time, FLOP/s and the ratios the tables report
(to the plain step, SparCL-DER++ to DER++, CLNP to its fine-tuning twin,
each library conv step to its bare step) all come from one set of
interleaved samples, so the ratios share the machine's state.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from benchmarks import chunks
from benchmarks import reference
from benchmarks.harness import (StepBench, summarize,
                                time_interleaved, whole_epoch)
from sparcl_jax.data.types import Scenario
from sparcl_jax.training import config as config_lib
from sparcl_jax.training.config import RunConfig

# Variants of the step benchmark, in table order.
STEP_METHODS = ("plain", "sgd", "derpp", "sparcl_derpp", "clnp_finetune",
                "clnp")
# Variants timed over whole simulated epochs: SparCL's mask work happens at
# set steps of an epoch, and DER++ is its paired baseline. The others do the
# same work on every step, so one chunk per sample measures them.
EPOCH_METHODS = ("derpp", "sparcl_derpp")
# The bare step each library step is held against in the conv tables.
# Task-level variants: the method each runs (with Adam at 1e-3).
TASK_LEVEL_VARIANTS = {"clnp": "clnp", "clnp_finetune": "single_task"}
# Variants timed against a paired one: (that variant, the ratio's key).
PAIRED = {"sparcl_derpp": ("derpp", "ratio_to_derpp"),
          "clnp": ("clnp_finetune", "ratio_to_finetune")}
BARE_OF = {"sgd": "bare_sgd", "sgd_jax_conv_gradients": "bare_sgd",
           "derpp": "bare_derpp",
           "sparcl_derpp": "bare_derpp", "clnp_finetune": "bare_adam",
           "clnp": "bare_adam"}


def build_step(name: str, config: RunConfig, scenario: Scenario,
               steps_per_epoch: int) -> StepBench:
  """Builds one variant of :data:`STEP_METHODS` or a ``bare_*`` step.

  Args:
    name: ``'plain'``, ``'bare_<kind>'``, ``'sgd_jax_conv_gradients'``,
      ``'clnp'``, ``'clnp_finetune'`` or a rehearsal-family method.
    config: model, batch and SparCL settings (method is overridden).
    scenario: the data.
    steps_per_epoch: steps of the simulated epoch.

  Returns:
    The compiled :class:`~benchmarks.harness.StepBench`.

  Example:
    >>> from benchmarks.inputs import make_config, random_scenario
    >>> build_step('plain', make_config('sgd', hidden_sizes='8',
    ...                                 steps_per_call=2),
    ...            random_scenario((4, 4, 1), 8), 2).steps
    2
  """
  if name == "plain":
    return reference.build_plain_step(config, scenario, config.steps_per_call)
  if name.startswith("bare_"):
    return reference.build_bare_step(name[len("bare_"):], config, scenario,
                                     config.steps_per_call)
  if name == "sgd_jax_conv_gradients":
    # The library's step as it was before conv_with_canonical_gradients.
    return chunks.build_train_chunk(
        config_lib.replace(config, method="sgd", conv_gradients="jax"),
        scenario, steps_per_epoch)
  if name in TASK_LEVEL_VARIANTS:
    cfg = config_lib.replace(config, method=TASK_LEVEL_VARIANTS[name],
                             optimizer="adam",
                             lr=1e-3)
    return chunks.build_clnp_chunk(cfg, scenario, steps_per_epoch)
  return chunks.build_train_chunk(config_lib.replace(config, method=name),
                                  scenario, steps_per_epoch)


def benchmark_steps(config: RunConfig, scenario: Scenario,
                    steps_per_epoch: int, repeats: int,
                    peak_flops: float,
                    methods: Sequence[str] = STEP_METHODS,
                    matmul_n: int = 0) -> dict:
  """Per-step time, compile time and FLOP/s of each step variant.

  Args:
    config: model, batch and SparCL settings (method is overridden).
    scenario: the data.
    steps_per_epoch: steps of the simulated epoch (see
      :func:`~benchmarks.chunks.build_train_chunk`); each timed
      sample of an ``EPOCH_METHODS`` variant runs a whole epoch of it, of the
      others one chunk.
    repeats: timed samples per variant (interleaved).
    peak_flops: matmul FLOP/s for the efficiency column.
    methods: the variants.
    matmul_n: when > 0, the efficiency column uses instead an ``n x n``
      matmul timed interleaved with the variants, so that the machine's load
      weighs on the reference as on the steps.

  Returns:
    ``{variant: {...}}`` with ``ms_per_step`` (summary), ``ratio_to_plain``,
    ``compile_s``, ``flops_per_step``, ``flops_per_s``, ``fraction_of_peak``.

  Example:
    >>> r = benchmark_steps(cfg, scenario, 60, 5, 1e11)  # doctest: +SKIP
  """
  benches = {name: build_step(name, config, scenario, steps_per_epoch)
             for name in methods}
  calls = {name: max(1, steps_per_epoch // b.steps)
                 if name in EPOCH_METHODS else 1
           for name, b in benches.items()}
  # For EPOCH_METHODS each timed sample is one whole simulated epoch (every
  # chunk of it, in order), so SparCL's periodic work (a drop-and-grow at the
  # epoch start, a DGM refresh every 30 steps) weighs in each sample as in
  # real training, instead of making the per-chunk times bimodal.
  epochs = {name: whole_epoch(b.call, calls[name])
            for name, b in benches.items()}
  matmuls = 16
  if matmul_n:
    epochs["matmul"] = reference.matmul_call(matmul_n, matmuls)
  times = time_interleaved(epochs, repeats)
  if matmul_n:
    peak_flops = matmuls * 2.0 * matmul_n ** 3 / float(
        np.median(times.pop("matmul")))
  out = {}
  for name, bench in benches.items():
    per_step = summarize(times[name], 1e3 / (bench.steps * calls[name]))
    flops = 6.0 * bench.macs_per_example * bench.examples_per_step
    rate = flops / (per_step["median"] / 1e3)
    out[name] = {"ms_per_step": per_step, "compile_s": bench.compile_s,
                 "compiles": bench.compiles,
                 "examples_per_step": bench.examples_per_step,
                 "flops_per_step": flops, "flops_per_s": rate,
                 "fraction_of_peak": rate / peak_flops,
                 "peak_flops_per_s": peak_flops, "built_by": bench.note}
  _add_ratios(out)
  return out


def _add_ratios(out: dict) -> None:
  """Ratios of per-step medians of the interleaved runs, where both ran."""
  med = {n: out[n]["ms_per_step"]["median"] for n in out}
  for name in out:
    if "plain" in med:
      out[name]["ratio_to_plain"] = med[name] / med["plain"]
  for name, (base, key) in PAIRED.items():
    if name in med and base in med:
      out[name][key] = med[name] / med[base]
  for name, bare in BARE_OF.items():
    if name in med and bare in med:
      out[name]["ratio_to_bare"] = med[name] / med[bare]
