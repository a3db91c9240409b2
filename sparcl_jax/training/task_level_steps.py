"""The jitted pieces of task-level runs (CLNP, EWC, SI, single-task).

One train function per run (a ``lax.scan`` over a fixed number of steps,
padded steps skipped) whose loss is the cross-entropy over the current
task's outputs plus the method's penalty (``Method.penalty``), and the
device-side unit activity (CLNP) and empirical Fisher (EWC).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from sparcl_jax import clnp as clnp_lib
from sparcl_jax import regularizers
from sparcl_jax.control_flow import run_if
from sparcl_jax.data import pipeline
from sparcl_jax.models import registry
from sparcl_jax.training import losses
from sparcl_jax.training import steps
from sparcl_jax.training.config import RunConfig

PyTree = Any
# Examples whose gradients are vectorised at once in the Fisher estimate.
FISHER_CHUNK = 50


class RunState(NamedTuple):
  """What the train function carries from step to step.

  Attributes:
    params: model parameters.
    opt_state: optimizer state (holds CLNP's partition masks).
    reg: the regulariser state (``EwcState``/``SiState``), else ``None``.
    rng: PRNG key, split every step.
  """

  params: PyTree
  opt_state: PyTree
  reg: Any
  rng: jax.Array


class ChunkFacts(NamedTuple):
  """Per-call facts of the train function (traced, so no recompiles)."""

  task_id: jax.Array
  first_step: jax.Array
  num_steps: jax.Array
  task_class_mask: jax.Array


def make_train_step(model, tx: optax.GradientTransformation,
                    config: RunConfig, inputs: steps.InputSpec) -> Callable:
  """Builds the reference train step of the task-level family (not jitted).

  The step, top to bottom: split the PRNG key; gather the batch at
  ``positions``, augment and normalise it; take the gradient of the task's
  cross-entropy (over the task's own outputs) and of the method's penalty
  (``Method.penalty``: CLNP's L1, EWC's or SI's quadratic term) and add them;
  let the optimizer update the parameters; for SI, accumulate the path
  integral. :func:`make_train_function` fuses many of these steps into one
  call and, for every method but SI, takes both gradients in one backward
  pass (``fused=True``).

  Args:
    model: Flax module (no batch norm).
    tx: optimizer (for CLNP wrapped in ``clnp_partition``).
    config: the run configuration (method and penalty strengths).
    inputs: static input description.

  Returns:
    ``step(state, data, positions, facts, fused=False) -> (state, loss)``,
    the loss being the task's cross-entropy without the penalty; ``data``
    is ``(device_data, example_index)``.

  Example:
    >>> step = make_train_step(model, tx, config, spec)  # doctest: +SKIP
  """
  forward = steps.make_forward(model)
  method = config.method_object
  penalty = method.penalty(config)
  track_si = method.accumulates_task_gradient

  def task_loss(params, x, y, rng, class_mask):
    logits, _ = forward(params, {}, x, rng, True)
    return losses.cross_entropy(losses.mask_logits(logits, class_mask), y)

  task_grad = jax.value_and_grad(task_loss)
  penalty_grad = jax.grad(penalty)

  def total_loss(params, x, y, rng, class_mask, opt_state, reg):
    ce = task_loss(params, x, y, rng, class_mask)
    return ce + penalty(params, opt_state, reg), ce

  # One backward pass for the task loss and the penalty: the penalty's
  # gradient is accumulated into the task gradient by autodiff instead of a
  # second gradient pytree and an add over every weight. Only the task loss
  # is reported, so XLA drops the penalty's value (a sum over every weight)
  # and keeps its cheap elementwise gradient.
  total_grad = jax.grad(total_loss, has_aux=True)

  def step(state: RunState, data, positions, facts: ChunkFacts,
           fused: bool = False):
    device_data, ex_index = data
    rng, k_aug, k_drop = jax.random.split(state.rng, 3)
    x, y = pipeline.gather_batch(device_data, ex_index[positions],
                                 facts.task_id, "train", inputs.permuted)
    if inputs.augment:
      x = pipeline.augment_batch(k_aug, x)
    x = pipeline.normalize(x, inputs.mean, inputs.std)
    if fused and not track_si:
      grads, loss = total_grad(state.params, x, y, k_drop,
                               facts.task_class_mask, state.opt_state,
                               state.reg)
    else:
      loss, g_task = task_grad(state.params, x, y, k_drop,
                               facts.task_class_mask)
      g_pen = penalty_grad(state.params, state.opt_state, state.reg)
      grads = jax.tree.map(jnp.add, g_task, g_pen)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    reg = state.reg
    if track_si:
      # SI's path integral takes the task gradient alone.
      reg = regularizers.si_accumulate(reg, g_task, state.params, params)
    return RunState(params, opt_state, reg, rng), loss

  return step


def make_train_function(model, tx: optax.GradientTransformation,
                        config: RunConfig, inputs: steps.InputSpec,
                        batch_size: int, steps_per_call: int) -> Callable:
  """Builds the one jitted train function of a run.

  ``steps_per_call`` fused reference steps (:func:`make_train_step`, with
  one backward pass for the loss and the penalty) in a ``lax.scan``.

  Args:
    model: Flax module (no batch norm).
    tx: optimizer (for CLNP wrapped in ``clnp_partition``).
    config: the run configuration (method and penalty strengths).
    inputs: static input description.
    batch_size: examples per step.
    steps_per_call: steps fused in one call; steps at or past
      ``facts.num_steps`` are skipped, so one compilation serves every task.

  Returns:
    ``train(state, data, order, facts) -> (state, summed_loss)``, the loss
    being the task's cross-entropy without the penalty; ``data`` is
    ``(device_data, example_index)`` and ``order`` holds positions into
    ``example_index`` in this epoch's order.

  Example:
    >>> train = make_train_function(model, tx, config, spec, 256, 100)
    ... # doctest: +SKIP
  """
  train_step = make_train_step(model, tx, config, inputs)

  def one_step(state: RunState, data, order, facts: ChunkFacts, step):
    positions = jax.lax.dynamic_slice(order, (step * batch_size,),
                                      (batch_size,))
    return train_step(state, data, positions, facts, fused=True)

  def train(state: RunState, data, order, facts: ChunkFacts):
    order = jnp.pad(order, (0, steps_per_call * batch_size))

    def body(carry, k):
      state, loss_sum = carry
      step = facts.first_step + k
      # A 0-or-1-trip loop rather than a cond: the partition masks pass
      # through every step and a cond would copy them.
      state, loss = run_if(
          step < facts.num_steps,
          lambda c: one_step(c[0], data, order, facts, step),
          (state, jnp.zeros((), jnp.float32)))
      return (state, loss_sum + loss), None

    (state, loss_sum), _ = jax.lax.scan(
        body, (state, jnp.zeros((), jnp.float32)), jnp.arange(steps_per_call))
    return state, loss_sum

  return jax.jit(train)


def _batched_index(index, count, batch_size):
  """Index array padded to whole batches, and the validity of each slot."""
  num = -(-index.shape[0] // batch_size)
  padded = jnp.pad(index, (0, num * batch_size - index.shape[0]))
  valid = jnp.arange(num * batch_size) < count
  return (padded.reshape(num, batch_size),
          valid.reshape(num, batch_size))


def make_activity(model, inputs: steps.InputSpec, layer_names: Sequence[str],
                  reading: str, batch_size: int) -> Callable:
  """Builds the jitted unit-activity measure over a task's validation split.

  :func:`sparcl_jax.clnp.unit_activity` on device-resident data, on the
  same kernel (:func:`sparcl_jax.clnp.activity_sums`): same readings (mean post-ReLU activation, or share of positive activations;
  conv units average over examples and positions before pooling), but one
  compilation per run and no host copy of the inputs.

  Args:
    model: Flax module sowing ``<layer>_act`` activations.
    inputs: static input description.
    layer_names: layers to measure.
    reading: ``'mean'`` or ``'firing_rate'``.
    batch_size: examples per forward pass.

  Returns:
    ``activity(params, device_data, index, count, task_id) -> {layer:
    float32[units]}`` over the first ``count`` entries of ``index``.

  Example:
    >>> act = make_activity(model, spec, ['hidden_0'], 'mean', 1000)
    ... # doctest: +SKIP
  """
  names = tuple(layer_names)

  def activity(params, device_data, index, count, task_id):
    batches, valid = _batched_index(index, count, batch_size)

    def body(sums, b):
      x, _ = pipeline.gather_batch(device_data, batches[b], task_id, "val",
                                   inputs.permuted)
      x = pipeline.normalize(x, inputs.mean, inputs.std)
      _, state = model.apply({"params": params}, x, train=False,
                             mutable=["intermediates"])
      acts = registry.collect_activations(state["intermediates"])
      return {name: sums[name] + clnp_lib.activity_sums(acts[name], reading,
                                                        valid[b])
              for name in names}, None

    zeros = {}
    for name in names:
      zeros[name] = jnp.zeros(_units(model, params, name), jnp.float32)
    sums, _ = jax.lax.scan(body, zeros, jnp.arange(batches.shape[0]))
    return {k: v / count.astype(jnp.float32) for k, v in sums.items()}

  return jax.jit(activity)


def _units(model, params, name: str) -> int:
  del model
  return params[name]["kernel"].shape[-1]


def make_fisher(model, inputs: steps.InputSpec,
                chunk: int = FISHER_CHUNK) -> Callable:
  """Builds the jitted empirical diagonal Fisher of one task.

  The mean over examples of the squared gradient of each example's
  log-likelihood under the task-masked softmax, as
  :func:`sparcl_jax.regularizers.fisher_diagonal` in ``'per_example'`` mode
  with the data's labels (on the same kernel,
  :func:`sparcl_jax.regularizers.squared_gradient_sum`), but on
  device-resident data.

  Args:
    model: Flax module.
    inputs: static input description.
    chunk: examples whose gradients are vectorised at once.

  Returns:
    ``fisher(params, device_data, index, count, task_id, class_mask) ->
    float32 pytree like params`` over the first ``count`` entries of the
    training-pool ``index``.

  Example:
    >>> fisher = make_fisher(model, spec)  # doctest: +SKIP
  """
  forward = steps.make_forward(model)

  def log_likelihood(params, x, y, class_mask):
    logits, _ = forward(params, {}, x[None], None, False)
    return -losses.cross_entropy(losses.mask_logits(logits, class_mask),
                                 y[None])

  per_example = jax.vmap(jax.grad(log_likelihood), in_axes=(None, 0, 0, None))

  def fisher(params, device_data, index, count, task_id, class_mask):
    batches, valid = _batched_index(index, count, chunk)

    def body(acc, b):
      x, y = pipeline.gather_batch(device_data, batches[b], task_id, "train",
                                   inputs.permuted)
      x = pipeline.normalize(x, inputs.mean, inputs.std)
      squares = regularizers.squared_gradient_sum(
          per_example(params, x, y, class_mask), valid[b])
      return jax.tree.map(jnp.add, acc, squares), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    acc, _ = jax.lax.scan(body, zeros, jnp.arange(batches.shape[0]))
    return jax.tree.map(lambda a: a / count.astype(jnp.float32), acc)

  return jax.jit(fisher)
