"""The MLP sections: its step table and how its step scales.

The MLP (784-2000-2000, the Split MNIST and Permuted MNIST model) runs on
random 28x28x1 data: its step time depends on the shapes only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from benchmarks import chunks
from benchmarks.harness import say, time_interleaved
from benchmarks.inputs import make_config, random_scenario
from benchmarks.variants import STEP_METHODS, benchmark_steps
from sparcl_jax.data.types import Scenario
from sparcl_jax.training import config as config_lib
from sparcl_jax.training.config import RunConfig


def mlp_steps(data: Scenario, quick: bool, peak_flops: float,
              matmul_n: int) -> dict:
  """Step tables of the MLP at batch 32 (every variant) and 256 (CLNP's).

  Simulated epochs are 200 steps (``quick``) or 300 (about the paper's Split
  CIFAR-10 epoch, 10000 examples at batch 32; a Split MNIST task is 375), in
  chunks of the library's default ``--steps_per_call`` (100), as
  ``train.py`` runs them. TDM updates the masks at the start of each one
  (every epoch, as in ``split_mnist_sparcl_derpp.cfg``; the paper's schedule
  does it every 5).

  Args:
    data: :func:`mlp_data` of the same ``quick``.
    quick: 200-step epochs and 5 samples instead of 300 and 9.
    peak_flops: matmul FLOP/s (replaced by the interleaved matmul's).
    matmul_n: size of the interleaved matmul reference.

  Returns:
    ``{'mlp_784_2000_2000': ..., 'mlp_784_2000_2000_batch256': ...}``, each
    as :func:`~benchmarks.variants.benchmark_steps` returns.

  Example:
    >>> mlp_steps(mlp_data(True), True, 1e11, 1024)  # doctest: +SKIP
  """
  spe = 200 if quick else 300
  models = {"mlp_784_2000_2000": (make_config("sgd"),
                                  data, STEP_METHODS, spe)}
  # The same MLP at batch 256, the batch of the Permuted MNIST (CLNP) configs
  # that train it; CLNP has no periodic work, so one chunk is an epoch.
  models["mlp_784_2000_2000_batch256"] = (
      make_config("sgd", batch_size=256, minibatch_size=256,
                  steps_per_call=10),
      random_scenario((28, 28, 1), 10 * 256),
      ("plain", "clnp_finetune", "clnp"), 10)
  out = {}
  for name, (cfg, images, methods, model_spe) in models.items():
    say(f"steps of {name}")
    k = cfg.steps_per_call
    spe_model = min(model_spe, (len(images.tasks[1].train_indices) //
                                cfg.batch_size) // k * k)
    out[name] = benchmark_steps(cfg, images, spe_model, 5 if quick else 9,
                                peak_flops, methods, matmul_n=matmul_n)
  return out


def mlp_data(quick: bool) -> Scenario:
  """Random 28x28x1 data with one simulated epoch per task at batch 32.

  Args:
    quick: 200-step epochs instead of 300.

  Returns:
    The scenario.

  Example:
    >>> len(mlp_data(True).tasks[1].train_indices)
    6400
  """
  return random_scenario((28, 28, 1), (200 if quick else 300) * 32)


def scaling(scenario: Scenario, base: RunConfig, steps_per_epoch: int,
            repeats: int, batch_sizes: Sequence[int],
            buffer_sizes: Sequence[int], widths: Sequence[str]) -> dict:
  """DER++ step time (ms, median) against batch size, buffer size and width.

  Args:
    scenario: MLP-shaped data.
    base: DER++ config.
    steps_per_epoch: simulated epoch length.
    repeats: timed calls per point (interleaved within each sweep).
    batch_sizes: stream (and replay) batch sizes.
    buffer_sizes: buffer sizes.
    widths: MLP ``hidden_sizes`` strings.

  Returns:
    ``{'batch_size': {...}, 'buffer_size': {...}, 'width': {...}}``, each
    mapping the value to the median ms per step.

  Example:
    >>> scaling(scenario, cfg, 30, 3, [16], [200], ['400,400'])
    ... # doctest: +SKIP
  """
  sweeps = {
      "batch_size": {str(v): config_lib.replace(base, batch_size=v,
                                                minibatch_size=v)
                     for v in batch_sizes},
      "buffer_size": {str(v): config_lib.replace(base, buffer_size=v)
                      for v in buffer_sizes},
      "width": {v: config_lib.replace(base, hidden_sizes=v) for v in widths},
  }
  out = {}
  for sweep, configs in sweeps.items():
    benches = {}
    for value, cfg in configs.items():
      spe = min(steps_per_epoch,
                len(scenario.tasks[1].train_indices) // cfg.batch_size)
      benches[value] = chunks.build_train_chunk(cfg, scenario, spe)
    times = time_interleaved({v: b.call for v, b in benches.items()},
                             repeats)
    out[sweep] = {v: float(np.median(times[v])) * 1e3 / benches[v].steps
                  for v in benches}
  return out


def full_scaling() -> dict:
  """The full benchmark's sweeps of the DER++ step of a 400-400 MLP.

  Batch sizes 16 to 128, buffers of 200 to 5000, widths 400 to 2000, 60-step
  epochs, 8 samples per point.

  Returns:
    As :func:`scaling`.

  Example:
    >>> full_scaling()  # doctest: +SKIP
  """
  return scaling(random_scenario((28, 28, 1), 60 * 128),
                 make_config("derpp", hidden_sizes="400,400"), 60, 8,
                 [16, 32, 64, 128], [200, 1000, 5000],
                 ["400,400", "1000,1000", "2000,2000"])
