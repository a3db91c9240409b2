"""What the library's steps are held against.

* a chain of large dense matmuls: the practical peak FLOP/s of the machine;
* a bare optax SGD step of the library's model (no gather, augmentation or
  continual-learning machinery): the cost of the step itself;
* a bare jitted step of an independently written conv net
  (:mod:`~benchmarks.convnets`): the speed of the hardware on
  the same architecture, with nothing of the library in it.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import convnets
from benchmarks.chunks import model_and_params, model_macs
from benchmarks.harness import (StepBench, first_call,
                                time_interleaved)
from sparcl_jax.data.types import Scenario
from sparcl_jax import losses
from sparcl_jax.training import steps
from sparcl_jax.training.config import RunConfig


def matmul_call(n: int, count: int) -> Callable[[int], Any]:
  """``fn(rep)`` running ``count`` dependent ``n x n`` float32 matmuls.

  The chain is compiled (and run once) before this returns, so every call
  of ``fn`` is a timed execution.

  Args:
    n: matrix size.
    count: matmuls per call, each on the previous one's product.

  Returns:
    ``fn(rep)`` returning the last product.

  Example:
    >>> matmul_call(4, 2)(0).shape
    (4, 4)
  """
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32) / np.sqrt(n)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)

  @jax.jit
  def chain(a, b):
    return jax.lax.fori_loop(0, count, lambda i, x: a @ x, b)

  jax.block_until_ready(chain(a, b))
  return lambda rep: chain(a, b)


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
  times = time_interleaved({"mm": matmul_call(n, 1)}, repeats)["mm"]
  seconds = float(np.median(times))
  return {"n": n, "flops_per_s": 2.0 * n ** 3 / seconds, "seconds": seconds}


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
    The :class:`~benchmarks.harness.StepBench`.

  Example:
    >>> from benchmarks.inputs import make_config, random_scenario
    >>> bench = build_plain_step(make_config('sgd', hidden_sizes='8'),
    ...                          random_scenario((4, 4, 1), 8), 3)
    >>> bench.steps, bench.macs_per_example  # 16 * 8 + 8 * 10
    (3, 208)
  """
  model, params, batch_stats = model_and_params(config, scenario)
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
  compile_s, compiles = first_call(lambda: call(0))
  return StepBench(call, num_steps, b,
                   model_macs(model, params, batch_stats, scenario),
                   compile_s, compiles,
                   "optax.sgd, fixed device batches, lax.scan")


# Bare step kinds: (optimizer, whether DER++'s two replay terms are added).
_BARE_KINDS = {"sgd": ("sgd", False), "adam": ("adam", False),
               "derpp": ("sgd", True)}


def build_bare_step(kind: str, config: RunConfig, scenario: Scenario,
                    num_steps: int) -> StepBench:
  """A bare jitted step of an independently written conv net.

  The model comes from :mod:`~benchmarks.convnets` (plain JAX,
  no Flax, none of the library's code); each train step is one ``jax.jit``
  call from Python on pre-made normalised device batches, so XLA sees every
  convolution at the top level and Python dispatch runs ahead
  asynchronously. This is the speed of the hardware the library's steps are
  measured against.

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
    The :class:`~benchmarks.harness.StepBench`.

  Example:
    >>> bench = build_bare_step('sgd', make_config('sgd', model='resnet18'),
    ...                         scenario, 4)  # doctest: +SKIP
  """
  shape = tuple(scenario.image_shape)
  key = jax.random.key(config.seed)
  if config.model == "resnet18":
    params, state = convnets.init_resnet18(key, config.nf,
                                           scenario.num_outputs, shape[-1])
    apply = convnets.apply_resnet18
  elif config.model == "zenke_cnn":
    params, state = convnets.init_zenke_cnn(key, scenario.num_outputs, shape)
    apply = convnets.apply_zenke_cnn
  else:
    raise ValueError(f"no bare model for {config.model!r}")
  optimizer, replays = _BARE_KINDS[kind]
  tx = optax.adam(1e-3) if optimizer == "adam" else optax.sgd(config.lr)
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
    if replays:
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

  compile_s, compiles = first_call(lambda: call(0))
  model, lib_params, lib_stats = model_and_params(config, scenario)
  examples = b + (2 * r if replays else 0)
  return StepBench(call, num_steps, examples,
                   model_macs(model, lib_params, lib_stats, scenario),
                   compile_s, compiles,
                   f"benchmarks.convnets.{config.model}, one jax.jit "
                   f"call per step ({kind})")
