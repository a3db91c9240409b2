"""The benchmark harness: speed, overhead, FLOP/s and memory of the steps.

``experiments/benchmark.py`` is its command line; the modules are importable
on their own (the tests use their building blocks untimed):

* :mod:`~sparcl_jax.benchmarks.harness`: timing samples (interleaved,
  summarised), compile counting, the :class:`StepBench` record;
* :mod:`~sparcl_jax.benchmarks.machine`: device, versions and memory;
* :mod:`~sparcl_jax.benchmarks.inputs`: random scenarios and configs;
* :mod:`~sparcl_jax.benchmarks.convnets`: conv nets in plain JAX, written
  apart from the library's models;
* :mod:`~sparcl_jax.benchmarks.reference`: what the steps are held against
  (a dense matmul, a bare optax step, bare conv-net steps);
* :mod:`~sparcl_jax.benchmarks.chunks`: the library's train chunks, set up
  as its runners set them up;
* :mod:`~sparcl_jax.benchmarks.variants`: every step variant timed against
  the others;
* :mod:`~sparcl_jax.benchmarks.mlp` and :mod:`~sparcl_jax.benchmarks.conv`:
  the MLP and conv-model sections;
* :mod:`~sparcl_jax.benchmarks.runs`: whole epochs, whole runs and
  ``train.py``;
* :mod:`~sparcl_jax.benchmarks.structured`: structured (grouped) against
  unstructured SparCL-DER++ and dense DER++, per step and end to end;
* :mod:`~sparcl_jax.benchmarks.report`: the printed tables;
* :mod:`~sparcl_jax.benchmarks.suite`: every default section in one call.
"""
