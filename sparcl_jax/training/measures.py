"""Device-side measures of a trained network: unit activity and Fisher.

CLNP prunes by the activity of each unit on a task's validation split; EWC
weighs its penalty by the empirical diagonal Fisher. Both run over the
device-resident data in one compiled call per run.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from sparcl_jax import clnp as clnp_lib
from sparcl_jax import regularizers
from sparcl_jax.data import pipeline
from sparcl_jax.models import registry
from sparcl_jax import losses
from sparcl_jax.training import steps

# Examples whose gradients are vectorised at once in the Fisher estimate.
FISHER_CHUNK = 50


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

  Examples:
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

  Examples:
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
