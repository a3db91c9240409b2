"""The conv-model sections: library steps against bare jitted steps.

ResNet-18 and the Zenke CNN run through the library's steps as ``train.py``
runs them and, beside them, through a bare step of an independently written
twin (:mod:`~benchmarks.convnets`), so the tables say what the
library's loops cost on top of the hardware's speed.
"""

from __future__ import annotations

import time

import jax

from benchmarks.chunks import build_train_chunk
from benchmarks.harness import say, whole_epoch
from benchmarks.inputs import make_config, random_scenario
from benchmarks.variants import benchmark_steps

RESNET_METHODS = ("bare_sgd", "sgd", "sgd_jax_conv_gradients", "bare_derpp",
                  "derpp", "sparcl_derpp")
ZENKE_METHODS = ("bare_sgd", "sgd", "bare_adam", "clnp_finetune", "clnp")


def conv_steps(quick: bool, matmul_n: int, repeats: int = 0) -> dict:
  """Library steps of ResNet-18 nf 20 and the Zenke CNN against bare steps.

  Every library step runs as ``train.py`` runs it (``make_train_chunk`` or
  the task-level runner's train function, chunks of ``steps_per_call``
  steps, augmentation on, gathering from device-resident uint8 images); each
  bare step is :func:`~benchmarks.reference.build_bare_step` on
  the same batch shapes. ``sgd_jax_conv_gradients`` is the fine-tuning step
  with JAX's own conv gradients (``--conv_gradients=jax``), the library's
  step before ``conv_with_canonical_gradients``. DER++ and SparCL-DER++ are
  timed over whole simulated epochs (SparCL's drop-and-grow at the epoch
  start, a DGM refresh every 30 steps).

  Args:
    quick: 16x16x3 inputs, 5-step chunks and 20-step epochs (a few minutes
      on 2 CPU cores) instead of 32x32x3, 10-step chunks and 60-step epochs.
    matmul_n: size of the interleaved matmul reference.
    repeats: timed samples per variant (0: 3 quick, 5 otherwise).

  Returns:
    ``{'resnet18_nf20': {...}, 'zenke_cnn': {...}}`` as
    :func:`~benchmarks.variants.benchmark_steps` returns, with
    ``ratio_to_bare`` on the library steps and ``input_shape``.

  Example:
    >>> conv_steps(True, 256)  # doctest: +SKIP
  """
  side = 16 if quick else 32
  k, spe = (5, 20) if quick else (10, 60)
  repeats = repeats or (3 if quick else 5)
  images = random_scenario((side, side, 3), spe * 32, augment=True)
  out = {}
  for name, model, methods in (("resnet18_nf20", "resnet18", RESNET_METHODS),
                               ("zenke_cnn", "zenke_cnn", ZENKE_METHODS)):
    say(f"steps of {name} ({side}x{side}x3)")
    config = make_config("sgd", model=model, nf=20, steps_per_call=k)
    out[name] = benchmark_steps(config, images, spe, repeats, 0.0, methods,
                                matmul_n=matmul_n)
    out[name]["input_shape"] = [side, side, 3]
  return out


def paper_width_steps(matmul_n: int = 1024) -> dict:
  """ResNet-18 at the paper's width (nf 64), briefly, on 32x32x3.

  Its step time sets the projection of the ``split_cifar10_*.cfg`` runs;
  DER++ and SparCL-DER++ against the bare DER++ step, 2 samples of 2-step
  chunks.

  Args:
    matmul_n: size of the interleaved matmul reference.

  Returns:
    As :func:`conv_steps` returns for one model.

  Example:
    >>> paper_width_steps()  # doctest: +SKIP
  """
  say("steps of resnet18_nf64 (32x32x3)")
  images = random_scenario((32, 32, 3), 8 * 32, augment=True)
  out = benchmark_steps(
      make_config("sgd", model="resnet18", nf=64, steps_per_call=2),
      images, 4, 2, 0.0, ("bare_derpp", "derpp", "sparcl_derpp"),
      matmul_n=matmul_n)
  out["input_shape"] = [32, 32, 3]
  return out


def conv_epochs(nf: int = 20, steps_per_epoch: int = 312) -> dict:
  """Whole epochs of ResNet-18 DER++ and SparCL-DER++ on 32x32x3 data.

  One epoch of each (DER++ first), each a task-2 epoch of Split CIFAR-10's
  size (10,000 examples at batch 32: 312 steps) in the library's default
  chunks of 100 steps, with replay on and SparCL's drop-and-grow at its
  start (``split_cifar10_sparcl_derpp.cfg`` has one every 5th epoch). The
  timed epoch follows a first call that compiled the chunk.

  Args:
    nf: ResNet-18 width.
    steps_per_epoch: steps of the epoch.

  Returns:
    ``{'derpp': seconds, 'sparcl_derpp': seconds, 'steps': ...}`` plus
    ``'<method>_first_call_s'``: the compiling first call (compilation and
    one chunk of steps), not part of the timed epoch.

  Example:
    >>> conv_epochs(4, 8)  # doctest: +SKIP
  """
  images = random_scenario((32, 32, 3), steps_per_epoch * 32, test_per_task=8,
                           augment=True)
  out = {"nf": nf, "steps": steps_per_epoch}
  for method in ("derpp", "sparcl_derpp"):
    say(f"one {steps_per_epoch}-step epoch of ResNet-18 nf {nf} {method}")
    config = make_config(method, model="resnet18", nf=nf, steps_per_call=100)
    bench = build_train_chunk(config, images, steps_per_epoch)
    calls = -(-steps_per_epoch // bench.steps)
    start = time.perf_counter()
    jax.block_until_ready(whole_epoch(bench.call, calls)(0))
    out[method] = time.perf_counter() - start
    out[f"{method}_first_call_s"] = bench.compile_s
  return out
