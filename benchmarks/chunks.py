"""The library's train chunks, set up the way its runners set them up.

This is the one benchmark module that assembles the training package's
pieces by hand (``loop.run`` does it inside a whole
run), so that a single chunk of steps can be called and timed repeatedly at
a chosen task and epoch.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sparcl_jax import ddr as ddr_lib
from sparcl_jax import flops as flops_lib
from sparcl_jax.sparse import masks as masks_lib
from sparcl_jax.replay import buffer as replay_buffer
from benchmarks.harness import StepBench, first_call
from sparcl_jax.data import pipeline
from sparcl_jax.data.types import Scenario
from sparcl_jax.models import registry
from sparcl_jax.sparse.tdm import tdm_masks
from sparcl_jax.methods import rehearsal_hooks
from sparcl_jax.methods import task_level
from sparcl_jax.training import families
from sparcl_jax.training import optimizers
from sparcl_jax.training import run_state
from sparcl_jax.training import steps
from sparcl_jax.training import tasks
from sparcl_jax.training.config import RunConfig

PyTree = Any


def model_and_variables(config: RunConfig, scenario: Scenario
                        ) -> tuple[Any, dict[str, PyTree]]:
  """The library's model of ``config`` and all its initial variables.

  With ``--mask_structure=grouped`` the model is the grouped one of
  ``loop.run`` (its hidden layers hold only their kept rows) and the
  variables include its ``'sparsity'`` collection (the kept rows), which
  the grouped optimizer takes over.

  Args:
    config: model, widths, head, conv gradients and (grouped) sparsity.
    scenario: gives the input shape, outputs and task heads.

  Returns:
    ``(model, variables)``: ``'params'``, plus ``'batch_stats'`` with batch
    norm and ``'sparsity'`` for a grouped model.

  Example:
    >>> from benchmarks.inputs import make_config, random_scenario
    >>> _, variables = model_and_variables(
    ...     make_config('sparcl_derpp', hidden_sizes='8', sparsity=0.5,
    ...                 mask_structure='grouped', mask_group=4),
    ...     random_scenario((4, 4, 1), 8))
    >>> sorted(variables), variables['sparsity']['hidden_0']['rows'].shape
    (['params', 'sparsity'], (2, 8))
  """
  # The grouped layers' arguments only for grouped runs, as loop.run passes
  # them, so every other model is built exactly as before.
  grouped = (dict(group=config.group_size, sparsity=config.sparsity)
             if config.grouped else {})
  model = registry.make_model(
      config.model, scenario.num_outputs, hidden_sizes=config.hidden_widths,
      nf=config.nf, head=config.head,
      head_sizes=[len(t.classes) for t in scenario.tasks],
      conv_gradients=config.conv_gradients, **grouped)
  variables = registry.init_model(model, jax.random.key(config.seed),
                                  (1,) + tuple(scenario.image_shape))
  return model, variables


def model_and_params(config: RunConfig, scenario: Scenario
                     ) -> tuple[Any, PyTree, PyTree]:
  """The library's model of ``config`` and its initial variables.

  A grouped model's kept rows are left out (see
  :func:`model_and_variables`).

  Args:
    config: model, widths, head and conv gradients.
    scenario: gives the input shape, outputs and task heads.

  Returns:
    ``(model, params, batch_stats)``; ``batch_stats`` is ``{}`` without
    batch norm.

  Example:
    >>> from benchmarks.inputs import make_config, random_scenario
    >>> _, params, stats = model_and_params(
    ...     make_config('sgd', hidden_sizes='8'), random_scenario((4, 4, 1), 8))
    >>> len(jax.tree.leaves(params)), stats
    (4, {})
  """
  model, variables = model_and_variables(config, scenario)
  return model, variables["params"], variables.get("batch_stats", {})


def model_macs(model, params: PyTree, batch_stats: PyTree,
               scenario: Scenario) -> int:
  """Dense forward MACs of one example, traced from the model.

  Counted as ``loop.run`` counts them for its FLOP totals, so that the
  benchmark's FLOP/s and a run's FLOPs agree.

  Args:
    model: Flax module.
    params: its parameters.
    batch_stats: its batch-norm statistics (``{}`` without).
    scenario: gives the input shape.

  Returns:
    MACs per example.

  Example:
    >>> from benchmarks.inputs import make_config, random_scenario
    >>> data = random_scenario((4, 4, 1), 8)
    >>> model_macs(*model_and_params(make_config('sgd', hidden_sizes='8'),
    ...                              data), data)  # 16 * 8 + 8 * 10
    208
  """
  return flops_lib.forward_macs(run_state.model_layer_macs(
      model, params, batch_stats, scenario.image_shape))


def dense_model_macs(config: RunConfig, scenario: Scenario, model,
                     params: PyTree, batch_stats: PyTree,
                     kept_rows: PyTree = None) -> int:
  """:func:`model_macs` of the dense model a run stands for.

  A grouped model is counted as the dense model of the same widths (its
  kernels in the dense view), as ``loop.run`` counts it, so that grouped,
  unstructured and dense variants report the same dense FLOPs per step and
  their times compare directly. Every other model is counted as is.

  Args:
    config: the run configuration.
    scenario: gives the input shape, outputs and task heads.
    model: the run's model.
    params: its parameters.
    batch_stats: its batch-norm statistics (``{}`` without).
    kept_rows: a grouped model's ``'sparsity'`` collection (else unused).

  Returns:
    Dense forward MACs per example.

  Example:
    >>> from benchmarks.inputs import make_config, random_scenario
    >>> data = random_scenario((4, 4, 1), 8)
    >>> cfg = make_config('sparcl_derpp', hidden_sizes='8', sparsity=0.5,
    ...                   mask_structure='grouped', mask_group=4)
    >>> model, v = model_and_variables(cfg, data)
    >>> dense_model_macs(cfg, data, model, v['params'], {}, v['sparsity'])
    208
  """
  return flops_lib.forward_macs(run_state.run_layer_macs(
      config, scenario, model, params, batch_stats, kept_rows,
      tasks.input_spec(scenario)))


def _task_setup(scenario: Scenario, task_id: int):
  """Padded index arrays and the class masks of one task (its own, and
  every task's so far), as the loop builds them."""
  arrays = tasks.TaskArrays(scenario, False)
  index, owner, usable = arrays.train(task_id)
  class_masks = tasks.class_masks(scenario)
  task_mask = jnp.asarray(class_masks[task_id])
  seen_mask = jnp.asarray(class_masks[:task_id + 1].any(0))
  return arrays, index, owner, usable, task_mask, seen_mask


def build_train_chunk(config: RunConfig, scenario: Scenario,
                      steps_per_epoch: int, task_id: int = 1,
                      epoch: int = 2) -> StepBench:
  """The library's train chunk of ``config.method``, set up as ``loop.run``.

  The chunk runs ``config.steps_per_call`` steps of task ``task_id`` (so
  replay is active) at epoch ``epoch``. Successive calls move through the
  epoch (``first_step`` = 0, K, 2K, ...) so that SparCL's periodic work (a
  DGM refresh every ``dgm_refresh`` steps, a TDM drop-and-grow at step 0)
  is amortised as in a real epoch of ``steps_per_epoch`` steps.

  A grouped config (``--mask_structure=grouped``) runs the grouped model,
  its kept rows owned by :func:`sparcl_jax.sparse.grouped_tdm.grouped_tdm`, as
  ``loop.run`` does; its ``macs_per_example`` are the dense model's.

  Args:
    config: the run configuration.
    scenario: the data (each task needs ``steps_per_epoch * batch_size``
      training examples).
    steps_per_epoch: steps of the simulated epoch.
    task_id: the task trained.
    epoch: epoch within the task.

  Returns:
    The :class:`~benchmarks.harness.StepBench`.

  Example:
    >>> from benchmarks.inputs import make_config, random_scenario
    >>> bench = build_train_chunk(
    ...     make_config('derpp', hidden_sizes='8', batch_size=8,
    ...                 minibatch_size=8, buffer_size=16, steps_per_call=2),
    ...     random_scenario((4, 4, 1), 32), 4)
    >>> bench.steps, bench.examples_per_step
    (2, 24)
  """
  model, variables = model_and_variables(config, scenario)
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  # A grouped model's kept rows belong to its optimizer (grouped_tdm), which
  # the chunk then reads them from; its params hold the kept weights only,
  # so there is no mask to apply.
  kept_rows = variables.get("sparsity") if config.grouped else None
  spec = tasks.input_spec(scenario)
  hooks = rehearsal_hooks.make_hooks(config)
  k = config.steps_per_call
  b = config.batch_size
  tx = optimizers.make_optimizer(config, kept_rows=kept_rows)
  opt_state = tx.init(params)
  if config.is_sparse and not config.grouped:
    params = masks_lib.apply_mask(params, tdm_masks(opt_state))
  arrays, index, owner, usable, task_mask, seen_mask = _task_setup(
      scenario, task_id)
  if int(usable.sum()) < steps_per_epoch * b:
    raise ValueError("scenario too small for steps_per_epoch")
  buffer = None
  if hooks.spec.replay:
    buffer = replay_buffer.buffer_init(config.buffer_size, spec.image_shape,
                                   scenario.num_outputs)
    # A full buffer, as after the first task.
    x0, y0 = pipeline.gather_batch(
        pipeline.to_device(scenario),
        jnp.asarray(scenario.tasks[0].train_indices[:config.buffer_size]),
        0, "train", spec.permuted)
    buffer = buffer._replace(
        inputs=x0, labels=y0, num_seen=jnp.int32(config.buffer_size * 10))
  ddr = None
  if hooks.spec.track_forgetting:
    ddr = ddr_lib.ddr_init(arrays.train_len)._replace(
        kept=jnp.asarray(usable))
  state = steps.TrainState(params, batch_stats, opt_state,
                           rehearsal_hooks.ReplayState(buffer, ddr),
                           jax.random.key(3))
  chunk = steps.make_train_chunk(model, tx, hooks, spec, b, k,
                                 mask_events=optimizers.mask_events(config))
  data = (pipeline.to_device(scenario), jnp.asarray(index),
          jnp.asarray(owner))
  order, _ = jax.jit(pipeline.epoch_order)(jax.random.key(4),
                                           jnp.asarray(usable))
  facts = [steps.StepFacts(jnp.int32(task_id), jnp.int32(epoch),
                           jnp.int32(s), jnp.int32(steps_per_epoch),
                           task_mask, seen_mask)
           for s in range(0, steps_per_epoch, k)]
  call = lambda rep: chunk(state, data, order, facts[rep % len(facts)])
  compile_s, compiles = first_call(lambda: call(0))
  examples = b + (config.method_object.replay_batches *
                  config.replay_batch_size)
  return StepBench(call, k, examples,
                   dense_model_macs(config, scenario, model, params,
                                    batch_stats, kept_rows),
                   compile_s, compiles,
                   f"steps.make_train_chunk ({config.method}"
                   f"{', grouped' if config.grouped else ''})")


def build_clnp_chunk(config: RunConfig, scenario: Scenario,
                     steps_per_epoch: int, task_id: int = 1) -> StepBench:
  """CLNP's train function (the task-level runner's), or the fine-tuning twin.

  ``config.method == 'clnp'`` gives ``clnp_partition(adam)`` with the L1
  term; ``'single_task'`` gives the same function with plain adam (CLNP's
  fine-tuning baseline).

  Args:
    config: the run configuration.
    scenario: the data.
    steps_per_epoch: steps of the simulated epoch.
    task_id: task trained.

  Returns:
    The :class:`~benchmarks.harness.StepBench`.

  Example:
    >>> bench = build_clnp_chunk(make_config('clnp'), scenario, 60)
    ... # doctest: +SKIP
  """
  model, params, _ = model_and_params(config, scenario)
  spec = tasks.input_spec(scenario)
  tx = families.make_task_optimizer(config,
                                    config.epochs * steps_per_epoch)
  k = config.steps_per_call
  b = config.batch_size
  hooks = task_level.make_hooks(config)
  train = steps.make_train_chunk(model, tx, hooks, spec, b, k)
  _, index, owner, usable, task_mask, seen_mask = _task_setup(scenario,
                                                              task_id)
  state = steps.TrainState(params, {}, tx.init(params),
                           hooks.init_state(params), jax.random.key(3))
  data = (pipeline.to_device(scenario), jnp.asarray(index),
          jnp.asarray(owner))
  order, _ = jax.jit(pipeline.epoch_order)(jax.random.key(4),
                                           jnp.asarray(usable))
  facts = [steps.StepFacts(jnp.int32(task_id), jnp.int32(0), jnp.int32(s),
                           jnp.int32(steps_per_epoch), task_mask, seen_mask)
           for s in range(0, steps_per_epoch, k)]
  call = lambda rep: train(state, data, order, facts[rep % len(facts)])
  compile_s, compiles = first_call(lambda: call(0))
  return StepBench(call, k, b, model_macs(model, params, {}, scenario),
                   compile_s, compiles,
                   f"steps.make_train_chunk ({config.method})")


class EpochChunk(NamedTuple):
  """A fine-tuning chunk and what one epoch of it needs.

  Attributes:
    chunk: ``chunk(state, data, order, facts) -> (state, loss)``, jitted.
    state: its initial :class:`~sparcl_jax.training.steps.TrainState`.
    data: its device data.
    usable: the task's usable positions (device), for the epoch order.
    task_mask: the task's class mask.
    seen_mask: the class mask of every task so far.
    steps_per_call: steps fused in one call.
    num_steps: steps of one full epoch.
  """

  chunk: Callable
  state: steps.TrainState
  data: tuple
  usable: jax.Array
  task_mask: jax.Array
  seen_mask: jax.Array
  steps_per_call: int
  num_steps: int


def epoch_chunk(config: RunConfig, scenario: Scenario,
                task_id: int) -> EpochChunk:
  """A fine-tuning chunk of task ``task_id``, set up as ``loop.run``.

  Args:
    config: a config without replay or sparsity ('sgd').
    scenario: the data.
    task_id: the task trained.

  Returns:
    The :class:`EpochChunk`.

  Example:
    >>> from benchmarks.inputs import make_config, random_scenario
    >>> parts = epoch_chunk(make_config('sgd', hidden_sizes='8',
    ...                                 batch_size=8, minibatch_size=8),
    ...                     random_scenario((4, 4, 1), 32), 1)
    >>> parts.steps_per_call, parts.num_steps
    (4, 4)
  """
  model, params, batch_stats = model_and_params(config, scenario)
  tx = optimizers.make_optimizer(config)
  b = config.batch_size
  _, index, owner, usable, task_mask, seen_mask = _task_setup(scenario,
                                                              task_id)
  num_steps = int(usable.sum()) // b
  k = min(config.steps_per_call, num_steps)
  hooks = rehearsal_hooks.make_hooks(config)
  chunk = steps.make_train_chunk(model, tx, hooks,
                                 tasks.input_spec(scenario), b, k)
  data = (pipeline.to_device(scenario), jnp.asarray(index),
          jnp.asarray(owner))
  state = steps.TrainState(params, batch_stats, tx.init(params),
                           hooks.init_state(params), jax.random.key(0))
  return EpochChunk(chunk, state, data, jnp.asarray(usable), task_mask,
                    seen_mask, k, num_steps)
