"""The benchmark harness: speed, overhead, FLOP/s and memory of the steps.

A top-level package of the repository, run from a checkout and not installed
with the library (setup.cfg's ``packages.find`` takes ``sparcl_jax`` only).
``experiments/benchmark.py`` is its command line; the modules are importable
on their own from the checkout's root (the tests use their building blocks
untimed):

* :mod:`~benchmarks.harness`: timing samples (interleaved, summarised),
  compile counting, the :class:`StepBench` record;
* :mod:`~benchmarks.machine`: device, versions and memory;
* :mod:`~benchmarks.inputs`: random scenarios and configs;
* :mod:`~benchmarks.convnets`: conv nets in plain JAX, written apart from
  the library's models;
* :mod:`~benchmarks.reference`: what the steps are held against
  (a dense matmul, a bare optax step, bare conv-net steps);
* :mod:`~benchmarks.chunks`: the library's train chunks, set up as its
  runners set them up;
* :mod:`~benchmarks.variants`: every step variant timed against the others;
* :mod:`~benchmarks.mlp` and :mod:`~benchmarks.conv`: the MLP and conv-model
  sections;
* :mod:`~benchmarks.runs`: whole epochs, whole runs and ``train.py``;
* :mod:`~benchmarks.structured`: structured (grouped) against
  unstructured SparCL-DER++ and dense DER++, per step and end to end;
* :mod:`~benchmarks.report`: the printed tables;
* :mod:`~benchmarks.suite`: every default section in one call.
"""
