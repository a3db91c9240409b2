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
  (``bare_convnets.py``), and ``train.py`` itself with ResNet-18 on Split
  MNIST against that bare step (``--train_py``).

Inputs are random data of the real shapes (28x28x1 for the MLP, 32x32x3 for
the conv models; 16x16x3 in ``--quick``). ``--savings`` adds whole Split
MNIST runs of DER++ and SparCL-DER++ (real MNIST with ``--data_dir``, else
random data of its shape).

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
import os
import platform
import resource
import sys
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparcl_jax import ddr as ddr_lib
from sparcl_jax import masks as masks_lib
from sparcl_jax import rehearsal
from sparcl_jax.data import pipeline
from sparcl_jax.data import scenarios
from sparcl_jax.data.types import Dataset, Scenario
from sparcl_jax.models import registry
from sparcl_jax.tdm import tdm_masks
from sparcl_jax.training import config as config_lib
from sparcl_jax.training import loop
from sparcl_jax.training import losses
from sparcl_jax.training import optimizers
from sparcl_jax.training import steps
from sparcl_jax.training import timing
from sparcl_jax.training.config import RunConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bare_convnets  # pylint: disable=wrong-import-position


# Variants of the step benchmark, in table order.
STEP_METHODS = ("plain", "sgd", "derpp", "sparcl_derpp", "clnp_finetune",
                "clnp")
# Variants timed over whole simulated epochs: SparCL's mask work happens at
# set steps of an epoch, and DER++ is its paired baseline. The others do the
# same work on every step, so one chunk per sample measures them.
EPOCH_METHODS = ("derpp", "sparcl_derpp")


# ----------------------------------------------------------------------------
# Measuring.


class CompileCounter(timing.CompileTimer):
  """The library's compile timer, with ``count`` for its XLA compilations.

  ``seconds`` covers tracing, lowering and XLA compilation
  (:class:`sparcl_jax.training.timing.CompileTimer`).

  Example:
    >>> with CompileCounter() as counter:
    ...   _ = jax.jit(lambda x: x + 1)(1.0)
    >>> counter.count
    1
  """

  @property
  def count(self) -> int:
    return self.compiles


def time_interleaved(fns: dict[str, Callable[[int], Any]], repeats: int
                     ) -> dict[str, list[float]]:
  """Times each function ``repeats`` times, round-robin, in seconds.

  Interleaving spreads the machine's load (other processes, frequency
  changes) evenly over the variants, so their ratios stay meaningful on a
  busy machine.

  Args:
    fns: name -> ``fn(rep)``; its result is blocked on.
    repeats: calls per function.

  Returns:
    name -> list of ``repeats`` wall times.

  Example:
    >>> t = time_interleaved({'a': lambda r: jnp.ones(3)}, 2)
    >>> len(t['a'])
    2
  """
  times = {name: [] for name in fns}
  for rep in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(rep))
      times[name].append(time.perf_counter() - start)
  return times


def summarize(samples: Sequence[float], scale: float = 1.0) -> dict:
  """Median, quartiles, min and relative spread of timing samples.

  Args:
    samples: the measurements.
    scale: factor applied to every value (e.g. 1e3 / steps for ms/step).

  Returns:
    ``{'median', 'p25', 'p75', 'min', 'spread', 'n'}``; ``spread`` is the
    interquartile range over the median.

  Example:
    >>> summarize([1.0, 2.0, 3.0])['median']
    2.0
  """
  x = np.asarray(samples, np.float64) * scale
  median = float(np.median(x))
  p25, p75 = (float(v) for v in np.percentile(x, [25, 75]))
  return {"median": median, "p25": p25, "p75": p75, "min": float(x.min()),
          "spread": (p75 - p25) / median if median else 0.0, "n": len(x)}


def matmul_flops_per_s(n: int = 2048, repeats: int = 5) -> dict:
  """Practical peak: FLOP/s of an ``n x n`` float32 matmul (median).

  Args:
    n: matrix size.
    repeats: timed calls.

  Returns:
    ``{'n', 'flops_per_s', 'seconds'}``.

  Example:
    >>> matmul_flops_per_s(64, 2)['n']
    64
  """
  times = time_interleaved({"mm": _matmul_call(n, 1)}, repeats)["mm"]
  seconds = float(np.median(times))
  return {"n": n, "flops_per_s": 2.0 * n ** 3 / seconds, "seconds": seconds}


def memory_report() -> dict:
  """Peak host RSS and, where the backend reports it, device memory.

  Returns:
    ``{'host_peak_rss_mb', 'device_peak_bytes'}`` (the latter None when
    unreported, as on CPU).

  Example:
    >>> memory_report()['host_peak_rss_mb'] > 0
    True
  """
  rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  device_peak = None
  try:
    stats = jax.devices()[0].memory_stats()
    if stats:
      device_peak = stats.get("peak_bytes_in_use")
  except Exception:  # pylint: disable=broad-except
    device_peak = None
  return {"host_peak_rss_mb": rss_kb / 1024.0,
          "device_peak_bytes": device_peak}


def environment() -> dict:
  """Device, versions and CPU count of this run.

  Returns:
    A JSON-able dict.

  Example:
    >>> 'jax' in environment()
    True
  """
  import flax  # pylint: disable=import-outside-toplevel
  device = jax.devices()[0]
  return {"device": f"{device.platform}:{device.device_kind}",
          "backend": jax.default_backend(),
          "num_devices": jax.device_count(),
          "cpu_count": os.cpu_count(),
          "affinity_cpus": len(os.sched_getaffinity(0))
                           if hasattr(os, "sched_getaffinity") else None,
          "jax": jax.__version__, "jaxlib": jax.lib.__version__
                                            if hasattr(jax, "lib") else None,
          "flax": flax.__version__, "optax": optax.__version__,
          "numpy": np.__version__, "python": platform.python_version(),
          "machine": platform.machine()}


# ----------------------------------------------------------------------------
# Inputs.


def random_scenario(image_shape: Sequence[int], train_per_task: int,
                    test_per_task: int = 64, num_tasks: int = 5,
                    augment: bool = False, seed: int = 0) -> Scenario:
  """A split scenario over random uint8 images of a real shape.

  Args:
    image_shape: (H, W, C).
    train_per_task: training examples per task (two classes per task).
    test_per_task: test examples per task.
    num_tasks: tasks; 10 classes are split evenly (must divide 10).
    augment: random crop and flip of training inputs.
    seed: numpy seed of the pixels.

  Returns:
    The scenario.

  Example:
    >>> random_scenario((8, 8, 1), 40).num_tasks
    5
  """
  rng = np.random.default_rng(seed)
  classes = 10
  per_class_train = -(-train_per_task * num_tasks // classes)
  per_class_test = -(-test_per_task * num_tasks // classes)
  shape = tuple(image_shape)
  train_y = np.repeat(np.arange(classes), per_class_train).astype(np.int32)
  test_y = np.repeat(np.arange(classes), per_class_test).astype(np.int32)
  dataset = Dataset(
      "random", rng.integers(0, 256, (len(train_y),) + shape, np.uint8),
      train_y, rng.integers(0, 256, (len(test_y),) + shape, np.uint8),
      test_y, classes)
  return scenarios.split_scenario(dataset, classes // num_tasks,
                                  augment=augment)


def make_config(method: str, model: str = "mlp", **changes) -> RunConfig:
  """A validated config with the benchmark's defaults.

  SparCL settings follow ``split_mnist_sparcl_derpp.cfg`` (sparsity 0.75,
  masks updated every epoch, DGM at 0.8 refreshed every 30 steps, DDR on).

  Args:
    method: ``RunConfig.method``.
    model: ``RunConfig.model``.
    **changes: other fields.

  Returns:
    The config.

  Example:
    >>> make_config('derpp').batch_size
    32
  """
  base = dict(workdir="/tmp/sparcl_benchmark", dataset="mnist",
              data_source="files", data_dir="/unused",
              method=method, model=model, hidden_sizes="2000,2000", nf=20,
              batch_size=32, minibatch_size=32, buffer_size=200, epochs=5,
              lr=0.03, alpha=0.2, beta=1.0, sparsity=0.75,
              mask_update_interval=1, gradient_sparsity=0.8, dgm_refresh=30,
              ddr_epochs="1,2,3,4", ddr_fraction=0.075, progress=False)
  base.update(changes)
  if method == "clnp":
    base.setdefault("optimizer", "adam")
  return config_lib.validate(RunConfig(**base))


class StepBench(NamedTuple):
  """One compiled training chunk ready to be called repeatedly.

  Attributes:
    call: ``call(rep) -> outputs``; runs ``steps`` train steps.
    steps: train steps per call.
    examples_per_step: forward/backward examples per step (replay included).
    macs_per_example: forward MACs of one example (dense).
    compile_s: seconds of the first (compiling) call.
    compiles: XLA compilations of the first call.
    note: how the step was built.
  """

  call: Callable[[int], Any]
  steps: int
  examples_per_step: int
  macs_per_example: int
  compile_s: float
  compiles: int
  note: str


def _model_and_params(config: RunConfig, scenario: Scenario):
  model = registry.make_model(
      config.model, scenario.num_outputs, hidden_sizes=config.hidden_widths,
      nf=config.nf, head=config.head,
      head_sizes=[len(t.classes) for t in scenario.tasks],
      conv_gradients=config.conv_gradients)
  variables = registry.init_model(model, jax.random.key(config.seed),
                                  (1,) + tuple(scenario.image_shape))
  return model, variables["params"], variables.get("batch_stats", {})


def _macs(model, params, batch_stats, scenario: Scenario) -> int:
  spec = loop.input_spec(scenario)
  return int(sum(loop._layer_macs(model, params, batch_stats,  # pylint: disable=protected-access
                                  spec).values()))


def _first_call(fn: Callable[[], Any]) -> tuple[float, int]:
  with CompileCounter() as counter:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    seconds = time.perf_counter() - start
  return seconds, counter.count


def build_plain_step(config: RunConfig, scenario: Scenario,
                     num_steps: int) -> StepBench:
  """A bare optax SGD step: no gather, no augmentation, no CL machinery.

  Each call is one jitted ``lax.scan`` over ``num_steps`` pre-made,
  normalised device batches (the same fusion the library's chunks use), so
  Python dispatch is not part of the step time.

  Args:
    config: model, batch size and learning rate.
    scenario: gives the input shape and number of outputs.
    num_steps: steps per call.

  Returns:
    The :class:`StepBench`.

  Example:
    >>> bench = build_plain_step(cfg, scenario, 10)  # doctest: +SKIP
  """
  model, params, batch_stats = _model_and_params(config, scenario)
  forward = steps.make_forward(model)
  tx = optax.sgd(config.lr)
  b = config.batch_size
  rng = np.random.default_rng(1)
  xs = jnp.asarray(rng.normal(size=(num_steps, b) + scenario.image_shape),
                   jnp.float32)
  ys = jnp.asarray(rng.integers(0, scenario.num_outputs, (num_steps, b)),
                   jnp.int32)

  def loss_fn(p, bs, x, y):
    logits, bs = forward(p, bs, x, None, True)
    return losses.cross_entropy(logits, y), bs

  def body(carry, batch):
    p, bs, opt = carry
    (loss, bs), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        p, bs, *batch)
    updates, opt = tx.update(grads, opt, p)
    return (optax.apply_updates(p, updates), bs, opt), loss

  @jax.jit
  def chunk(p, bs, opt, xs, ys):
    carry, losses_ = jax.lax.scan(body, (p, bs, opt), (xs, ys))
    return carry, losses_.sum()

  opt_state = tx.init(params)
  call = lambda rep: chunk(params, batch_stats, opt_state, xs, ys)
  compile_s, compiles = _first_call(lambda: call(0))
  return StepBench(call, num_steps, b,
                   _macs(model, params, batch_stats, scenario), compile_s,
                   compiles, "optax.sgd, fixed device batches, lax.scan")


def build_train_chunk(config: RunConfig, scenario: Scenario,
                      steps_per_epoch: int, task_id: int = 1,
                      epoch: int = 2) -> StepBench:
  """The library's train chunk of ``config.method``, set up as ``loop.run``.

  The chunk runs ``config.steps_per_call`` steps of task ``task_id`` (so
  replay is active) at epoch ``epoch``. Successive calls move through the
  epoch (``first_step`` = 0, K, 2K, ...) so that SparCL's periodic work (a
  DGM refresh every ``dgm_refresh`` steps, a TDM drop-and-grow at step 0)
  is amortised as in a real epoch of ``steps_per_epoch`` steps.

  Args:
    config: the run configuration.
    scenario: the data (each task needs ``steps_per_epoch * batch_size``
      training examples).
    steps_per_epoch: steps of the simulated epoch.
    task_id: the task trained.
    epoch: epoch within the task.

  Returns:
    The :class:`StepBench`.

  Example:
    >>> bench = build_train_chunk(make_config('derpp'), sc, 60)  # doctest: +SKIP
  """
  model, params, batch_stats = _model_and_params(config, scenario)
  spec = loop.input_spec(scenario)
  method = loop.method_spec(config)
  k = config.steps_per_call
  b = config.batch_size
  tx = optimizers.make_optimizer(config)
  opt_state = tx.init(params)
  if config.is_sparse:
    params = masks_lib.apply_mask(params, tdm_masks(opt_state))
  arrays = loop._TaskArrays(scenario, False)  # pylint: disable=protected-access
  index, owner, usable = arrays.train(task_id)
  if int(usable.sum()) < steps_per_epoch * b:
    raise ValueError("scenario too small for steps_per_epoch")
  buffer = None
  if method.replay:
    buffer = rehearsal.buffer_init(config.buffer_size, spec.image_shape,
                                   scenario.num_outputs)
    # A full buffer, as after the first task.
    x0, y0 = pipeline.gather_batch(
        pipeline.to_device(scenario),
        jnp.asarray(scenario.tasks[0].train_indices[:config.buffer_size]),
        0, "train", spec.permuted)
    buffer = buffer._replace(
        inputs=x0, labels=y0, num_seen=jnp.int32(config.buffer_size * 10))
  ddr = None
  if method.track_forgetting:
    ddr = ddr_lib.ddr_init(arrays.train_len)._replace(
        kept=jnp.asarray(usable))
  state = steps.TrainState(params, batch_stats, opt_state, buffer, ddr,
                           jax.random.key(3))
  chunk = steps.make_train_chunk(model, tx, method, spec, b, k,
                                 buffer_ops=rehearsal, ddr_ops=ddr_lib,
                                 mask_events=optimizers.mask_events(config))
  data = (pipeline.to_device(scenario), jnp.asarray(index),
          jnp.asarray(owner))
  order, _ = steps.make_epoch_order()(jax.random.key(4), jnp.asarray(usable))
  task_mask = jnp.asarray(np.isin(np.arange(scenario.num_outputs),
                                  scenario.tasks[task_id].classes))
  starts = list(range(0, steps_per_epoch, k))
  facts = [steps.StepFacts(jnp.int32(task_id), jnp.int32(epoch),
                           jnp.int32(s), jnp.int32(steps_per_epoch),
                           task_mask) for s in starts]
  call = lambda rep: chunk(state, data, order, facts[rep % len(facts)])
  compile_s, compiles = _first_call(lambda: call(0))
  replay_terms = {"": 0, "er": 1, "der": 1, "derpp": 2}[method.replay]
  examples = b + replay_terms * config.replay_batch_size
  return StepBench(call, k, examples,
                   _macs(model, params, batch_stats, scenario), compile_s,
                   compiles, f"steps.make_train_chunk ({config.method})")


def build_clnp_chunk(config: RunConfig, scenario: Scenario,
                     steps_per_epoch: int, task_id: int = 1) -> StepBench:
  """CLNP's train function (``clnp_runner``), or the fine-tuning twin.

  ``config.method == 'clnp'`` gives ``clnp_partition(adam)`` with the L1
  term; ``'single_task'`` gives the same function with plain adam (CLNP's
  fine-tuning baseline).

  Args:
    config: the run configuration.
    scenario: the data.
    steps_per_epoch: steps of the simulated epoch.
    task_id: task trained.

  Returns:
    The :class:`StepBench`.

  Example:
    >>> bench = build_clnp_chunk(make_config('clnp'), sc, 60)  # doctest: +SKIP
  """
  from sparcl_jax.training import clnp_runner  # pylint: disable=import-outside-toplevel
  model, params, _ = _model_and_params(config, scenario)
  spec = loop.input_spec(scenario)
  tx = clnp_runner.make_optimizer(config, config.epochs * steps_per_epoch)
  k = config.steps_per_call
  b = config.batch_size
  train = clnp_runner.make_train_function(model, tx, config, spec, b, k)
  arrays = loop._TaskArrays(scenario, False)  # pylint: disable=protected-access
  index, _, usable = arrays.train(task_id)
  state = clnp_runner.RunState(params, tx.init(params), None,
                               jax.random.key(3))
  data = (pipeline.to_device(scenario), jnp.asarray(index))
  order, _ = steps.make_epoch_order()(jax.random.key(4), jnp.asarray(usable))
  task_mask = jnp.asarray(np.isin(np.arange(scenario.num_outputs),
                                  scenario.tasks[task_id].classes))
  facts = [clnp_runner.ChunkFacts(jnp.int32(task_id), jnp.int32(s),
                                  jnp.int32(steps_per_epoch), task_mask)
           for s in range(0, steps_per_epoch, k)]
  call = lambda rep: train(state, data, order, facts[rep % len(facts)])
  compile_s, compiles = _first_call(lambda: call(0))
  return StepBench(call, k, b, _macs(model, params, {}, scenario), compile_s,
                   compiles, f"clnp_runner.make_train_function "
                             f"({config.method})")


# The bare step each library step is held against in the conv tables.
BARE_OF = {"sgd": "bare_sgd", "sgd_jax_conv_gradients": "bare_sgd",
           "derpp": "bare_derpp",
           "sparcl_derpp": "bare_derpp", "clnp_finetune": "bare_adam",
           "clnp": "bare_adam"}


def build_bare_step(kind: str, config: RunConfig, scenario: Scenario,
                    num_steps: int) -> StepBench:
  """A bare jitted step of an independently written conv net.

  The model comes from ``bare_convnets`` (plain JAX, no Flax, none of the
  library's code); each train step is one ``jax.jit`` call from Python on
  pre-made normalised device batches, so XLA sees every convolution at the
  top level and Python dispatch runs ahead asynchronously. This is the
  speed of the hardware the library's steps are measured against.

  Args:
    kind: ``'sgd'`` (cross-entropy, SGD), ``'adam'`` (the same with Adam at
      1e-3) or ``'derpp'`` (DER++'s loss: the stream batch plus ``alpha``
      times the logit MSE on one replay batch and ``beta`` times the
      cross-entropy on another, SGD).
    config: ``model`` (``resnet18`` or ``zenke_cnn``), ``nf``, batch sizes,
      ``lr``, ``alpha``, ``beta``.
    scenario: gives the input shape and number of outputs.
    num_steps: steps per call.

  Returns:
    The :class:`StepBench`.

  Example:
    >>> bench = build_bare_step('sgd', make_config('sgd', model='resnet18'),
    ...                         sc, 4)  # doctest: +SKIP
  """
  shape = tuple(scenario.image_shape)
  key = jax.random.key(config.seed)
  if config.model == "resnet18":
    params, state = bare_convnets.init_resnet18(key, config.nf,
                                                scenario.num_outputs,
                                                shape[-1])
    apply = bare_convnets.apply_resnet18
  elif config.model == "zenke_cnn":
    params, state = bare_convnets.init_zenke_cnn(key, scenario.num_outputs,
                                                 shape)
    apply = bare_convnets.apply_zenke_cnn
  else:
    raise ValueError(f"no bare model for {config.model!r}")
  tx = optax.adam(1e-3) if kind == "adam" else optax.sgd(config.lr)
  b, r = config.batch_size, config.replay_batch_size
  rng = np.random.default_rng(1)

  def batch(n):
    return (jnp.asarray(rng.normal(size=(n,) + shape), jnp.float32),
            jnp.asarray(rng.integers(0, scenario.num_outputs, n), jnp.int32))

  # Two batches per position so consecutive steps read different memory.
  batches = [(batch(b), batch(r), batch(r)) for _ in range(2)]
  targets = jnp.asarray(rng.normal(size=(r, scenario.num_outputs)),
                        jnp.float32)

  def loss_fn(p, st, stream, replay1, replay2, key):
    k0, k1, k2 = jax.random.split(key, 3)
    logits, st = apply(p, st, stream[0], k0)
    loss = losses.cross_entropy(logits, stream[1])
    if kind == "derpp":
      out1, st = apply(p, st, replay1[0], k1)
      out2, st = apply(p, st, replay2[0], k2)
      loss = (loss + config.alpha * jnp.mean((out1 - targets)**2) +
              config.beta * losses.cross_entropy(out2, replay2[1]))
    return loss, st

  @jax.jit
  def step(p, st, opt, stream, replay1, replay2, key):
    (loss, st), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        p, st, stream, replay1, replay2, key)
    updates, opt = tx.update(grads, opt, p)
    return optax.apply_updates(p, updates), st, opt, loss

  opt0 = tx.init(params)
  keys = list(jax.random.split(jax.random.key(2), num_steps))

  def call(rep):
    del rep
    p, st, opt = params, state, opt0
    for i in range(num_steps):
      p, st, opt, _ = step(p, st, opt, *batches[i % 2], keys[i])
    return p

  compile_s, compiles = _first_call(lambda: call(0))
  model, lib_params, lib_stats = _model_and_params(config, scenario)
  examples = b + (2 * r if kind == "derpp" else 0)
  return StepBench(call, num_steps, examples,
                   _macs(model, lib_params, lib_stats, scenario), compile_s,
                   compiles, f"bare_convnets.{config.model}, one jax.jit "
                             f"call per step ({kind})")


def build_step(name: str, config: RunConfig, scenario: Scenario,
               steps_per_epoch: int) -> StepBench:
  """Builds one variant of :data:`STEP_METHODS` or a ``bare_*`` step."""
  if name == "plain":
    return build_plain_step(config, scenario, config.steps_per_call)
  if name.startswith("bare_"):
    return build_bare_step(name[len("bare_"):], config, scenario,
                           config.steps_per_call)
  if name == "sgd_jax_conv_gradients":
    # The library's step as it was before conv_with_canonical_gradients.
    return build_train_chunk(
        config_lib.replace(config, method="sgd", conv_gradients="jax"),
        scenario, steps_per_epoch)
  if name in ("clnp", "clnp_finetune"):
    method = "clnp" if name == "clnp" else "single_task"
    cfg = config_lib.replace(config, method=method, optimizer="adam",
                             lr=1e-3)
    return build_clnp_chunk(cfg, scenario, steps_per_epoch)
  return build_train_chunk(config_lib.replace(config, method=name), scenario,
                           steps_per_epoch)


def _whole_epoch(call: Callable[[int], Any], num_calls: int
                 ) -> Callable[[int], Any]:
  """``fn(rep)`` running chunk calls ``0..num_calls-1``: one simulated epoch."""

  def epoch(rep):
    del rep
    out = None
    for i in range(num_calls):
      out = call(i)
    return out

  return epoch


def _matmul_call(n: int, count: int) -> Callable[[int], Any]:
  """``fn(rep)`` running ``count`` dependent ``n x n`` float32 matmuls."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32) / np.sqrt(n)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)

  @jax.jit
  def chain(a, b):
    return jax.lax.fori_loop(0, count, lambda i, x: a @ x, b)

  jax.block_until_ready(chain(a, b))
  return lambda rep: chain(a, b)


def benchmark_steps(config: RunConfig, scenario: Scenario,
                    steps_per_epoch: int, repeats: int,
                    peak_flops: float,
                    methods: Sequence[str] = STEP_METHODS,
                    matmul_n: int = 0) -> dict:
  """Per-step time, compile time and FLOP/s of each step variant.

  Args:
    config: model, batch and SparCL settings (method is overridden).
    scenario: the data.
    steps_per_epoch: steps of the simulated epoch (see build_train_chunk);
      each timed sample of an ``EPOCH_METHODS`` variant runs a whole epoch
      of it, of the others one chunk.
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
    >>> r = benchmark_steps(cfg, sc, 60, 5, 1e11)  # doctest: +SKIP
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
  epochs = {name: _whole_epoch(b.call, calls[name])
            for name, b in benches.items()}
  matmuls = 16
  if matmul_n:
    epochs["matmul"] = _matmul_call(matmul_n, matmuls)
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
  # Ratios of per-call medians of interleaved runs.
  med = {n: out[n]["ms_per_step"]["median"] for n in out}
  for name in out:
    if "plain" in med:
      out[name]["ratio_to_plain"] = med[name] / med["plain"]
  if "sparcl_derpp" in med and "derpp" in med:
    out["sparcl_derpp"]["ratio_to_derpp"] = med["sparcl_derpp"] / med["derpp"]
  if "clnp" in med and "clnp_finetune" in med:
    out["clnp"]["ratio_to_finetune"] = med["clnp"] / med["clnp_finetune"]
  for name, bare in BARE_OF.items():
    if name in med and bare in med:
      out[name]["ratio_to_bare"] = med[name] / med[bare]
  return out


# ----------------------------------------------------------------------------
# Whole epochs and whole runs.


def epoch_throughput(config: RunConfig, scenario: Scenario,
                     repeats: int) -> dict:
  """Examples/s of whole fine-tuning epochs through ``loop``'s pieces.

  One epoch is what ``loop.run`` does per epoch: order the task's examples
  on the device, then call the train chunk until the epoch is done (the
  host loop, gathering and augmentation included). The bare step is the
  plain SGD step of the same model and batch size.

  Args:
    config: fine-tuning config ('sgd').
    scenario: the data.
    repeats: epochs timed (interleaved with the bare step).

  Returns:
    ``{'examples_per_s', 'epoch_ms_per_step', 'bare_ms_per_step',
    'ratio_to_bare'}``.

  Example:
    >>> epoch_throughput(make_config('sgd'), sc, 3)  # doctest: +SKIP
  """
  model, params, batch_stats = _model_and_params(config, scenario)
  spec = loop.input_spec(scenario)
  tx = optimizers.make_optimizer(config)
  b = config.batch_size
  arrays = loop._TaskArrays(scenario, False)  # pylint: disable=protected-access
  index, owner, usable = arrays.train(1)
  num_steps = int(usable.sum()) // b
  k = min(config.steps_per_call, num_steps)
  chunk = steps.make_train_chunk(model, tx, loop.method_spec(config), spec, b,
                                 k)
  epoch_order = steps.make_epoch_order()
  data = (pipeline.to_device(scenario), jnp.asarray(index),
          jnp.asarray(owner))
  usable_dev = jnp.asarray(usable)
  task_mask = jnp.asarray(np.isin(np.arange(scenario.num_outputs),
                                  scenario.tasks[1].classes))
  state0 = steps.TrainState(params, batch_stats, tx.init(params), None, None,
                            jax.random.key(0))

  def one_epoch(rep):
    state = state0
    order, count = epoch_order(jax.random.key(rep), usable_dev)
    n = int(count) // b
    for first in range(0, n, k):
      facts = steps.StepFacts(jnp.int32(1), jnp.int32(0), jnp.int32(first),
                              jnp.int32(n), task_mask)
      state, _ = chunk(state, data, order, facts)
    return state.params

  bare = build_plain_step(config, scenario, k)
  jax.block_until_ready(one_epoch(0))
  times = time_interleaved({"epoch": one_epoch, "bare": bare.call}, repeats)
  epoch_ms = summarize(times["epoch"], 1e3 / num_steps)
  bare_ms = summarize(times["bare"], 1e3 / k)
  return {"steps_per_epoch": num_steps, "augment": bool(scenario.augment),
          "examples_per_s": num_steps * b / float(np.median(times["epoch"])),
          "epoch_ms_per_step": epoch_ms, "bare_ms_per_step": bare_ms,
          "ratio_to_bare": epoch_ms["median"] / bare_ms["median"]}


def count_run_compiles(config: RunConfig, scenario: Scenario) -> dict:
  """Compilations and wall time of one whole ``loop.run``.

  Args:
    config: the run configuration.
    scenario: the data.

  Returns:
    ``{'compiles', 'compile_s', 'compiles_after_first_task', 'wall_s',
    'eval_s'}``; ``eval_s`` is the time spent after each task's last epoch
    (the evaluation of every task).

  Example:
    >>> count_run_compiles(cfg, sc)['compiles_after_first_task']  # doctest: +SKIP
    0
  """
  marks = []
  last_epoch = {}

  def log(record):
    now = time.perf_counter()
    if record.get("event") == "epoch":
      last_epoch["t"] = now
    if record.get("event") == "eval":
      marks.append((counter.count, now - last_epoch.get("t", now)))

  with CompileCounter() as counter:
    start = time.perf_counter()
    loop.run(config, scenario, log_fn=log)
    wall = time.perf_counter() - start
  return {"num_tasks": scenario.num_tasks, "compiles": counter.count,
          "compile_s": counter.seconds,
          "compiles_after_first_task": counter.count - marks[0][0],
          "wall_s": wall, "eval_s": float(sum(m[1] for m in marks))}


def digits_scenario(num_tasks: int) -> Scenario:
  """Split digits (scikit-learn's 8x8 digits) cut into ``num_tasks`` tasks.

  Args:
    num_tasks: 2 or 5 (must divide 10).

  Returns:
    The scenario.

  Example:
    >>> digits_scenario(2).num_tasks
    2
  """
  from sparcl_jax.data import sources  # pylint: disable=import-outside-toplevel
  return scenarios.split_scenario(sources.load_digits(0), 10 // num_tasks)


def compile_counts(method: str = "sparcl_derpp",
                   task_counts: Sequence[int] = (2, 5)) -> dict:
  """Compilations of whole runs on split digits with different task counts.

  Every counted run starts from empty compilation caches
  (``jax.clear_caches``), so module-level jitted functions compiled by an
  earlier run are counted again and the runs compare like with like.

  Args:
    method: the method run.
    task_counts: numbers of tasks.

  Returns:
    ``{str(num_tasks): count_run_compiles(...)}``.

  Example:
    >>> compile_counts('derpp', (2,))  # doctest: +SKIP
  """
  config = make_config(method, dataset="digits", data_source="digits",
                       hidden_sizes="64,64", epochs=2, batch_size=16,
                       minibatch_size=16, buffer_size=50, steps_per_call=8,
                       ddr_epochs="1", mask_update_interval=1)
  out = {}
  for n in task_counts:
    jax.clear_caches()
    out[str(n)] = count_run_compiles(config_lib.replace(config, num_tasks=n),
                                     digits_scenario(n))
  return out


# ----------------------------------------------------------------------------
# Scaling.


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
    >>> scaling(sc, cfg, 30, 3, [16], [200], ['400,400'])  # doctest: +SKIP
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
      benches[value] = build_train_chunk(cfg, scenario, spe)
    times = time_interleaved({v: b.call for v, b in benches.items()},
                             repeats)
    out[sweep] = {v: float(np.median(times[v])) * 1e3 / benches[v].steps
                  for v in benches}
  return out


# ----------------------------------------------------------------------------
# Wall-clock savings of SparCL on Split MNIST.


def split_mnist_savings(data_dir: Optional[str], epochs: int = 5) -> dict:
  """Whole Split MNIST runs of DER++ and SparCL-DER++ (the CPU configs).

  Args:
    data_dir: folder with the MNIST IDX files; None uses random data of
      MNIST's shape and size.
    epochs: epochs per task.

  Returns:
    Per method: wall time, training examples, training FLOPs (sparse
    accounting) and final accuracy; plus the ratios.

  Example:
    >>> split_mnist_savings(None, 1)  # doctest: +SKIP
  """
  if data_dir:
    from sparcl_jax.data import sources  # pylint: disable=import-outside-toplevel
    scenario = scenarios.split_scenario(
        sources.load_dataset("mnist", "files", data_dir), 2)
    source = "mnist files"
  else:
    scenario = random_scenario((28, 28, 1), 12000, 2000)
    source = "random data of MNIST's shape"
  common = dict(hidden_sizes="400,400", epochs=epochs, steps_per_call=100,
                eval_batch_size=1000)
  out = {"data": source}
  for method in ("derpp", "sparcl_derpp"):
    config = make_config(method, **common)
    result = loop.run(config, scenario)
    out[method] = {"wall_s": result["wall_time_s"],
                   "train_examples": result["train_examples"],
                   "train_flops": result["train_flops"],
                   "dense_train_flops": result["dense_train_flops"],
                   "final": result["final"]}
  d, s = out["derpp"], out["sparcl_derpp"]
  out["wall_ratio"] = s["wall_s"] / d["wall_s"]
  out["examples_ratio"] = s["train_examples"] / d["train_examples"]
  out["flops_ratio"] = s["train_flops"] / d["train_flops"]
  return out


# ----------------------------------------------------------------------------
# Conv models against bare jitted steps.

RESNET_METHODS = ("bare_sgd", "sgd", "sgd_jax_conv_gradients", "bare_derpp",
                  "derpp", "sparcl_derpp")
ZENKE_METHODS = ("bare_sgd", "sgd", "bare_adam", "clnp_finetune", "clnp")


def conv_steps(quick: bool, matmul_n: int, repeats: int = 0) -> dict:
  """Library steps of ResNet-18 nf 20 and the Zenke CNN against bare steps.

  Every library step runs as ``train.py`` runs it (``make_train_chunk`` or
  the CLNP runner's train function, chunks of ``steps_per_call`` steps,
  augmentation on, gathering from device-resident uint8 images); each bare
  step is :func:`build_bare_step` on the same batch shapes.
  ``sgd_jax_conv_gradients`` is the fine-tuning step with JAX's own conv
  gradients (``--conv_gradients=jax``), the library's step before
  ``conv_with_canonical_gradients``. DER++ and SparCL-DER++ are timed over
  whole simulated epochs (SparCL's drop-and-grow at the epoch start, a DGM
  refresh every 30 steps).

  Args:
    quick: 16x16x3 inputs, 5-step chunks and 20-step epochs (a few minutes
      on 2 CPU cores) instead of 32x32x3, 10-step chunks and 60-step epochs.
    matmul_n: size of the interleaved matmul reference.
    repeats: timed samples per variant (0: 3 quick, 5 otherwise).

  Returns:
    ``{'resnet18_nf20': {...}, 'zenke_cnn': {...}}`` as
    :func:`benchmark_steps` returns, with ``ratio_to_bare`` on the library
    steps.

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
    _say(f"steps of {name} ({side}x{side}x3)")
    config = make_config("sgd", model=model, nf=20, steps_per_call=k)
    out[name] = benchmark_steps(config, images, spe, repeats, 0.0, methods,
                                matmul_n=matmul_n)
    out[name]["input_shape"] = [side, side, 3]
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
    _say(f"one {steps_per_epoch}-step epoch of ResNet-18 nf {nf} {method}")
    config = make_config(method, model="resnet18", nf=nf, steps_per_call=100)
    bench = build_train_chunk(config, images, steps_per_epoch)
    calls = -(-steps_per_epoch // bench.steps)
    start = time.perf_counter()
    jax.block_until_ready(_whole_epoch(bench.call, calls)(0))
    out[method] = time.perf_counter() - start
    out[f"{method}_first_call_s"] = bench.compile_s
  return out


def train_py_against_bare(data_dir: str, workdir: str,
                          bare_steps: int = 20) -> dict:
  """``train.py`` on Split MNIST with ResNet-18 nf 20 against a bare step.

  Runs ``experiments/train.py``'s code (``cli.main``) with ``--model=resnet18
  --nf=20 --method=sgd --batch_size=32`` (one epoch per task, 5 tasks) and
  reads its per-step time from ``results.json`` (``ms_per_step``: training
  and evaluation per train step, compilation excluded). The bare jitted step
  of :mod:`bare_convnets`' ResNet-18 on 28x28x1 batches of 32 is timed in
  the same process just before and just after the run.

  Args:
    data_dir: folder with the MNIST IDX files.
    workdir: the run's work directory (must not hold results).
    bare_steps: bare steps per timed sample (three samples before the run,
      three after).

  Returns:
    ``{'train_py_ms_per_step', 'bare_ms_per_step', 'ratio', ...}``.

  Example:
    >>> train_py_against_bare('PATH/TO/mnist', '/tmp/w')  # doctest: +SKIP
  """
  from sparcl_jax.training import cli  # pylint: disable=import-outside-toplevel
  args = ["train.py", "--dataset=mnist", "--data_source=files",
          f"--data_dir={data_dir}", "--scenario=split", "--num_tasks=5",
          "--model=resnet18", "--nf=20", "--method=sgd", "--batch_size=32",
          "--epochs=1", "--lr=0.03", "--seed=0", "--noprogress",
          "--notensorboard", f"--workdir={workdir}"]
  mnist = random_scenario((28, 28, 1), 64)
  bare = build_bare_step("sgd", make_config("sgd", model="resnet18", nf=20),
                         mnist, bare_steps)
  before = time_interleaved({"bare": bare.call}, 3)["bare"]
  _say("train.py: ResNet-18 nf 20 on Split MNIST")
  status = cli.main(args)
  if status:
    raise RuntimeError(f"train.py exited with status {status}")
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  after = time_interleaved({"bare": bare.call}, 3)["bare"]
  bare_ms = summarize(before + after, 1e3 / bare_steps)
  keys = ("ms_per_step", "train_time_s", "eval_time_s", "compile_time_s",
          "train_steps", "wall_time_s")
  return {"command": " ".join(args), **{k: results[k] for k in keys},
          "final": results["final"], "bare_ms_per_step": bare_ms,
          "ratio": results["ms_per_step"] / bare_ms["median"]}


# ----------------------------------------------------------------------------
# Driver.


def _say(message: str) -> None:
  print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr,
        flush=True)


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
  peak = results["matmul"]["flops_per_s"]
  # Simulated epochs: 200 steps (--quick) or 300 (about the paper's Split
  # CIFAR-10 epoch, 10000 examples at batch 32; a Split MNIST task is 375),
  # in chunks of the library's default --steps_per_call (100), as train.py
  # runs them. TDM updates the masks at the start of each one (every epoch,
  # as in split_mnist_sparcl_derpp.cfg; the paper's schedule does it every
  # 5).
  spe = 200 if quick else 300
  mlp_data = random_scenario((28, 28, 1), spe * 32)
  models = {"mlp_784_2000_2000": (make_config("sgd"), mlp_data,
                                  STEP_METHODS, spe)}
  # The same MLP at batch 256, the batch of the Permuted MNIST (CLNP) configs
  # that train it; CLNP has no periodic work, so one chunk is an epoch.
  models["mlp_784_2000_2000_batch256"] = (
      make_config("sgd", batch_size=256, minibatch_size=256,
                  steps_per_call=10),
      random_scenario((28, 28, 1), 10 * 256),
      ("plain", "clnp_finetune", "clnp"), 10)
  results["steps"] = {}
  for name, (cfg, sc, methods, model_spe) in models.items():
    _say(f"steps of {name}")
    k = cfg.steps_per_call
    spe_model = min(model_spe, (len(sc.tasks[1].train_indices) //
                                cfg.batch_size) // k * k)
    results["steps"][name] = benchmark_steps(
        cfg, sc, spe_model, 5 if quick else 9, peak, methods,
        matmul_n=results["matmul"]["n"])
  results["conv_steps"] = conv_steps(quick, results["matmul"]["n"])
  _say("epoch throughput")
  results["epoch_throughput"] = {
      "mlp_784_2000_2000": epoch_throughput(make_config("sgd"), mlp_data,
                                            3 if quick else 5)}
  if not quick:
    img = random_scenario((32, 32, 3), 16 * 32, augment=True)
    results["epoch_throughput"]["resnet18_nf20_augment"] = epoch_throughput(
        make_config("sgd", model="resnet18", nf=20, steps_per_call=8), img, 3)
  _say("compilations of whole runs")
  results["compiles"] = compile_counts()
  if not quick:
    scale_data = random_scenario((28, 28, 1), 60 * 128)
    results["scaling"] = scaling(
        scale_data, make_config("derpp", hidden_sizes="400,400"), 60, 8,
        [16, 32, 64, 128], [200, 1000, 5000], ["400,400", "1000,1000",
                                               "2000,2000"])
  results["scaling_tasks"] = {
      n: {k: v for k, v in r.items() if k in ("wall_s", "eval_s",
                                                "compiles")}
      for n, r in results["compiles"].items()}
  if savings:
    results["split_mnist_savings"] = split_mnist_savings(data_dir)
  results["memory"] = memory_report()
  results["total_s"] = time.perf_counter() - start
  return results


def format_table(results: dict) -> str:
  """The human-readable summary printed after a run.

  Args:
    results: the dict of :func:`run_benchmark`.

  Returns:
    The table as text.

  Example:
    >>> print(format_table(results))  # doctest: +SKIP
  """
  env = results["environment"]
  lines = [f"device {env['device']}, {env['cpu_count']} CPUs, jax "
           f"{env['jax']}, flax {env['flax']}, optax {env['optax']}",
           f"matmul {results['matmul']['n']}^2: "
           f"{results['matmul']['flops_per_s'] / 1e9:.1f} GFLOP/s", ""]
  header = (f"{'model':<28}{'step':<15}{'ms/step':>9}{'IQR%':>7}"
            f"{'x plain':>9}{'compile s':>11}{'GFLOP/s':>9}{'% peak':>8}")
  lines.append(header)
  for model, variants in results["steps"].items():
    for name, r in variants.items():
      ms = r["ms_per_step"]
      lines.append(
          f"{model:<28}{name:<15}{ms['median']:>9.2f}"
          f"{100 * ms['spread']:>7.1f}{r.get('ratio_to_plain', 1.0):>9.2f}"
          f"{r['compile_s']:>11.1f}{r['flops_per_s'] / 1e9:>9.1f}"
          f"{100 * r['fraction_of_peak']:>8.1f}")
    peak = next(iter(variants.values()))["peak_flops_per_s"]
    lines.append(f"{'':<28}interleaved matmul reference: {peak / 1e9:.1f} "
                 "GFLOP/s")
    lines.extend(_paired_ratio_lines(variants, " " * 28))
  lines.append("")
  lines.extend(format_conv_table(results.get("conv_steps", {})))
  for name, r in results["epoch_throughput"].items():
    lines.append(f"epoch {name}: {r['examples_per_s']:.0f} examples/s, "
                 f"{r['epoch_ms_per_step']['median']:.2f} ms/step vs bare "
                 f"{r['bare_ms_per_step']['median']:.2f} -> "
                 f"{r['ratio_to_bare']:.3f}x")
  for n, r in results["compiles"].items():
    lines.append(f"whole run, {n} tasks: {r['compiles']} compilations "
                 f"({r['compile_s']:.1f} s), {r['compiles_after_first_task']}"
                 f" after task 1, {r['wall_s']:.1f} s wall, "
                 f"{r['eval_s']:.2f} s evaluating")
  for sweep, points in results.get("scaling", {}).items():
    lines.append(f"scaling DER++ step vs {sweep}: " + ", ".join(
        f"{v}: {ms:.2f} ms" for v, ms in points.items()))
  if "split_mnist_savings" in results:
    s = results["split_mnist_savings"]
    lines.append(
        f"Split MNIST ({s['data']}): DER++ {s['derpp']['wall_s']:.1f} s, "
        f"SparCL-DER++ {s['sparcl_derpp']['wall_s']:.1f} s "
        f"(x{s['wall_ratio']:.2f} wall, x{s['examples_ratio']:.2f} examples,"
        f" x{s['flops_ratio']:.2f} FLOPs counted sparse)")
  mem = results["memory"]
  lines.append(f"peak host RSS {mem['host_peak_rss_mb']:.0f} MB, device peak "
               f"{mem['device_peak_bytes']}")
  lines.append(f"total {results['total_s']:.0f} s")
  return "\n".join(lines)


def format_conv_table(conv: dict) -> list[str]:
  """Lines of the conv-model table: each step against its bare step.

  Args:
    conv: the dict of :func:`conv_steps`.

  Returns:
    The lines (empty without conv results).

  Example:
    >>> format_conv_table({})
    []
  """
  lines = []
  for model, variants in conv.items():
    shape = "x".join(str(v) for v in variants.get("input_shape", []))
    lines.append(f"{model} ({shape}, batch 32){'':<6}{'ms/step':>9}"
                 f"{'IQR%':>7}{'x bare':>8}{'compile s':>11}")
    for name, r in variants.items():
      if name == "input_shape":
        continue
      ms = r["ms_per_step"]
      ratio = r.get("ratio_to_bare")
      lines.append(f"  {name:<32}{ms['median']:>9.1f}"
                   f"{100 * ms['spread']:>7.1f}"
                   f"{'' if ratio is None else f'{ratio:.3f}':>8}"
                   f"{r['compile_s']:>11.1f}")
    lines.extend(_paired_ratio_lines(variants, "  "))
    lines.append("")
  return lines


def _paired_ratio_lines(variants: dict, indent: str) -> list[str]:
  """SparCL-DER++ / DER++ and CLNP / Adam fine-tuning, where both ran."""
  lines = []
  if "sparcl_derpp" in variants:
    lines.append(f"{indent}SparCL-DER++ / DER++ = "
                 f"{variants['sparcl_derpp']['ratio_to_derpp']:.3f}")
  if "clnp" in variants:
    lines.append(f"{indent}CLNP / fine-tuning (adam) = "
                 f"{variants['clnp']['ratio_to_finetune']:.3f}")
  return lines


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
    results = {"environment": environment()}
    if args.conv:
      results["conv_steps"] = conv_steps(False, 1024)
      # The paper's width, briefly: its step time sets the projection of
      # the split_cifar10_*.cfg runs.
      _say("steps of resnet18_nf64 (32x32x3)")
      images = random_scenario((32, 32, 3), 8 * 32, augment=True)
      results["conv_steps"]["resnet18_nf64"] = benchmark_steps(
          make_config("sgd", model="resnet18", nf=64, steps_per_call=2),
          images, 4, 2, 0.0, ("bare_derpp", "derpp", "sparcl_derpp"),
          matmul_n=1024)
      results["conv_steps"]["resnet18_nf64"]["input_shape"] = [32, 32, 3]
      print("\n".join(format_conv_table(results["conv_steps"])))
      results["conv_epochs"] = conv_epochs()
      e = results["conv_epochs"]
      print(f"one 312-step epoch of ResNet-18 nf 20 on 32x32x3: DER++ "
            f"{e['derpp']:.0f} s, SparCL-DER++ {e['sparcl_derpp']:.0f} s")
    if args.train_py:
      r = train_py_against_bare(args.data_dir, args.workdir)
      results["train_py"] = r
      print(f"train.py ResNet-18 nf 20, Split MNIST: {r['ms_per_step']:.1f} "
            f"ms/step (training {r['train_time_s']:.0f} s + evaluation "
            f"{r['eval_time_s']:.0f} s over {r['train_steps']} steps, "
            f"compilation {r['compile_time_s']:.0f} s excluded); bare step "
            f"{r['bare_ms_per_step']['median']:.1f} ms -> {r['ratio']:.3f}x")
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)
    print(f"wrote {args.out}")
    return 0
  results = run_benchmark(args.quick, args.savings, args.data_dir or None)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)
  print(format_table(results))
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
