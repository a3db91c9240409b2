"""The thin Python loop over tasks and epochs of one continual-learning run.

All per-step work happens in the jitted functions of
:mod:`sparcl_jax.training.steps`; this module moves the data to the device
once, orders each epoch, calls the fused train chunks, and evaluates after
every task.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np  # the doctests use it

from sparcl_jax import ddr as ddr_lib
from sparcl_jax import methods
from sparcl_jax import rehearsal
from sparcl_jax.sparse.grouped_tdm import sparsity_variables
from sparcl_jax.data import pipeline
from sparcl_jax.data.types import Scenario
from sparcl_jax.errors import ConfigError
from sparcl_jax.training import accounting
from sparcl_jax.training import checkpoint as checkpoint_lib
from sparcl_jax.training import clnp_runner
from sparcl_jax.training import config as config_lib
from sparcl_jax.training import optimizers
from sparcl_jax.training import resume_checks
from sparcl_jax.training import run_state
# Re-exported: callers read a run's MACs as loop.run_layer_macs.
from sparcl_jax.training.run_state import (build_scenario, load_datasets,  # pylint: disable=unused-import
                                          method_spec, run_layer_macs)
from sparcl_jax.training import seeds
from sparcl_jax.training import sharding as sharding_lib
from sparcl_jax.training import steps
from sparcl_jax.training import tasks
from sparcl_jax.training.tasks import input_spec  # pylint: disable=unused-import
from sparcl_jax.training import timing
from sparcl_jax.training.config import RunConfig

LogFn = Callable[[dict], None]

def run(config: RunConfig, scenario: Optional[Scenario] = None,
        log_fn: Optional[LogFn] = None,
        checkpoints: Optional[checkpoint_lib.Checkpointer] = None,
        start_time: Optional[float] = None) -> dict[str, Any]:
  """Trains a method on every task of a scenario and evaluates after each.

  With ``config.num_seeds`` > 1, :func:`sparcl_jax.training.seeds.run`
  trains every seed (vmapped over a seed axis where it can) and returns
  their combined results.

  Args:
    config: validated run configuration.
    scenario: the scenario to use (the first seed's); built from
      ``config`` when None.
    log_fn: called with one JSON-able dict per epoch and per evaluation.
    checkpoints: when given, the run resumes from its newest checkpoint (if
      any), saves one after every task and every
      ``checkpoints.every_steps`` steps, and stops with
      :class:`~sparcl_jax.training.checkpoint.RunInterrupted` after saving
      when a stop is requested (see ``checkpoint.stop_on_signals``).
      Task-level methods (CLNP, EWC, SI, single-task) run in
      :func:`sparcl_jax.training.clnp_runner.run`, with the same
      checkpoints.
    start_time: ``time.perf_counter()`` when the run began (e.g. before
      its caller loaded ``scenario``), for ``wall_time_s``; default now.

  Returns:
    The results dict (see README, "results.json"): accuracy matrices in
    percent, summary metrics, timings, and the flags.

  Example:
    >>> import tempfile
    >>> from sparcl_jax.training.config import validate
    >>> config = validate(RunConfig(
    ...     workdir=tempfile.mkdtemp(), dataset="digits", data_source="digits",
    ...     epochs=1, num_tasks=2, hidden_sizes="16", progress=False,
    ...     tensorboard=False))
    >>> results = run(config)  # a few seconds on a CPU
    >>> np.shape(results["acc_matrix"]["class_il"])
    (2, 2)
    >>> 0.0 <= results["final"]["class_il"] <= 100.0
    True
  """
  config_lib.validate(config)
  log = log_fn or (lambda record: None)
  start = time.perf_counter() if start_time is None else start_time
  if config.num_seeds > 1:
    return seeds.run(config, scenario, log, start, checkpoints, run_one=run)
  with timing.CompileTimer() as compiles:
    if scenario is None:
      scenario = build_scenario(config)
    if checkpoints is not None and checkpoints.data is None:
      checkpoints.data = resume_checks.data_fingerprint(scenario,
                                                         config.data_dir)
    if config.method_object.family == methods.TASK_LEVEL:
      return clnp_runner.run(config, scenario, log, start, checkpoints,
                             compiles)
    return _run_rehearsal_family(config, scenario, log, start, checkpoints,
                                 compiles)


def _run_rehearsal_family(config: RunConfig, scenario: Scenario, log: LogFn,
                          start: float,
                          checkpoints: Optional[checkpoint_lib.Checkpointer],
                          compiles: timing.CompileTimer) -> dict[str, Any]:
  """``run`` for every method but the CLNP family."""
  run_state.check_sizes(config, scenario)
  num_tasks = scenario.num_tasks
  model = run_state.make_run_model(config, scenario)
  spec = input_spec(scenario)
  method = method_spec(config)
  joint = config.method_object.joint
  arrays = tasks.TaskArrays(scenario, joint)
  batch_size = config.batch_size
  steps_per_call = max(1, min(config.steps_per_call,
                              arrays.train_len // batch_size))

  mesh = sharding_lib.make_mesh(config.num_devices, batch_size)
  if (mesh is not None and method.replay and
      method.replay_batch_size % mesh.size):
    raise ConfigError(f"the replay mini-batch ({method.replay_batch_size}) "
                      f"cannot be split over {mesh.size} devices; set "
                      f"--minibatch_size to a multiple of {mesh.size}.")
  device_data = pipeline.to_device(
      scenario, None if mesh is None else sharding_lib.replicated(mesh))
  state, tx, kept_rows = run_state.initial_state(config, scenario, model,
                                                 spec, device_data)
  params, batch_stats = state.params, state.batch_stats
  fresh_model = lambda key: run_state.init_variables(model, spec, key)
  state = sharding_lib.replicate(state, mesh)
  class_masks = tasks.class_masks(scenario)

  chunk = steps.make_train_chunk(model, tx, method, spec, batch_size,
                                 steps_per_call, buffer_ops=rehearsal,
                                 ddr_ops=ddr_lib,
                                 batch_sharding=None if mesh is None else
                                 sharding_lib.batch_sharded(mesh),
                                 mask_events=optimizers.mask_events(config))
  epoch_order = steps.make_epoch_order()
  evaluate = steps.make_evaluate(model, spec, config.eval_batch_size,
                                 arrays.test_len)
  ddr_remove = jax.jit(ddr_lib.ddr_remove)
  ddr_schedule = ddr_lib.DDRSchedule(config.ddr_epoch_list,
                                     config.ddr_fraction)
  counter = accounting.FlopsCounter(run_state.run_layer_macs(
      config, scenario, model, params, batch_stats, kept_rows, spec))
  grad_sparsity = run_state.dgm_sparsities(config, params, kept_rows)
  replay_terms = config.method_object.replay_batches

  kept_per_epoch = []
  # Net of compilation; a resumed run counts this process's share only.
  train_time = eval_time = 0.0
  steps_here = 0
  record = tasks.RunRecord(num_tasks, log)
  progress, log = record.progress, record.log
  no_order = jnp.zeros(arrays.train_len, jnp.int32)
  resume, first_task = None, 0
  if checkpoints is not None and checkpoints.exists():

    def like(meta):
      train = state
      if meta["has_ddr"]:
        train = state._replace(ddr=ddr_lib.ddr_init(arrays.train_len))
      return {"train": train, "order": no_order}

    tree, meta = tasks.restore_checkpoint(checkpoints, config, like)
    state = tree["train"]
    record.restore(meta)
    kept_per_epoch = [list(k) for k in meta["kept_per_epoch"]]
    (counter.train_flops, counter.dense_train_flops,
     counter.examples) = meta["flops"]
    if meta["in_task"]:
      resume = dict(meta, order=tree["order"])
    first_task = meta["task"]

  def save_checkpoint(position: dict[str, Any], where: str,
                      order=no_order) -> None:
    tasks.save_checkpoint(
        checkpoints, config, {"train": state, "order": order},
        dict(position, **record.meta(), kept_per_epoch=kept_per_epoch,
             flops=[counter.train_flops, counter.dense_train_flops,
                    counter.examples],
             has_ddr=state.ddr is not None),
        state.params, where)

  for t in range(first_task, num_tasks):
    task_start = time.perf_counter()
    resuming_task = resume is not None
    if joint and t > 0 and not resuming_task:
      rng, init_rng = jax.random.split(state.rng)
      params, batch_stats, _ = fresh_model(init_rng)
      state = state._replace(params=params, batch_stats=batch_stats, rng=rng)
    if not config.is_sparse and not resuming_task:
      # A fresh optimizer per task, as in the papers' code. Sparse methods
      # keep theirs: it holds the masks (their base optimizer, SGD without
      # momentum, has no state of its own).
      state = state._replace(opt_state=tx.init(state.params))
    ex_index, ex_task, usable = arrays.train(t)
    data = (device_data, jax.device_put(ex_index), jax.device_put(ex_task))
    usable_dev = jax.device_put(usable)
    task_size = int(usable.sum())
    if method.track_forgetting and not resuming_task:
      # One capacity for every task: the chunk compiles once.
      state = state._replace(
          ddr=ddr_lib.ddr_init(task_size, capacity=arrays.train_len))
    task_mask = jnp.asarray(
        class_masks[:t + 1].any(0) if joint else class_masks[t])
    seen_so_far = jnp.asarray(class_masks[:t + 1].any(0))
    replay_active = bool(method.replay) and (t > 0 or
                                             method.replay_first_task)
    bar = tasks.progress_bar((task_size // batch_size) * config.epochs,
                    f"task {t + 1}/{num_tasks}", config.progress)
    if not resuming_task:
      kept_per_epoch.append([])
    for epoch in range(resume["epoch"] if resuming_task else 0,
                       config.epochs):
      if resume is not None:
        # Mid-epoch restart: this epoch's order and sums come from the
        # checkpoint, so the remaining steps see exactly the same batches.
        order, count = resume["order"], resume["count"]
        num_steps, buffer_seen = resume["num_steps"], resume["buffer_seen"]
        loss_sum = jnp.asarray(resume["loss_sum"], jnp.float32)
        first_step, resume = resume["step"], None
        bar.update(first_step)
      else:
        order_rng, remove_rng, rng = jax.random.split(state.rng, 3)
        state = state._replace(rng=rng)
        if method.track_forgetting:
          removal = ddr_schedule.removal_count(epoch, task_size)
          if removal:
            state = state._replace(ddr=ddr_remove(state.ddr, remove_rng,
                                                  jnp.int32(removal)))
          usable_dev = state.ddr.kept
        order, count = epoch_order(order_rng, usable_dev)
        num_steps = int(count) // batch_size
        buffer_seen = int(state.buffer.num_seen) if method.replay else 0
        loss_sum = jnp.zeros(())
        first_step = 0
      chunk_losses = []
      epoch_start = compiles.mark()
      for first in range(first_step, num_steps, steps_per_call):
        facts = steps.StepFacts(
            task_id=jnp.int32(t), epoch=jnp.int32(epoch),
            first_step=jnp.int32(first), num_steps=jnp.int32(num_steps),
            task_class_mask=task_mask, seen_class_mask=seen_so_far)
        state, chunk_loss = chunk(state, data, order, facts)
        loss_sum = loss_sum + chunk_loss
        done = min(steps_per_call, num_steps - first)
        bar.update(done)
        chunk_losses.append((first, chunk_loss))
        before, progress.steps_done = (progress.steps_done,
                                       progress.steps_done + done)
        steps_here += done
        if checkpoints is not None and (
            checkpoints.stop_requested or
            checkpoints.due(before, progress.steps_done)):
          tasks.check_loss(loss_sum, chunk_losses, t, num_tasks, epoch,
                      num_steps, steps_per_call, checkpoints)
          save_checkpoint(
              {"task": t, "in_task": True, "epoch": epoch,
               "step": first + done, "count": int(count),
               "num_steps": num_steps, "buffer_seen": buffer_seen,
               "loss_sum": float(loss_sum)},
              f"task {t + 1} of {num_tasks}, epoch {epoch + 1}, step "
              f"{first + done} of {num_steps}", order)
      tasks.check_loss(loss_sum, chunk_losses, t, num_tasks, epoch, num_steps,
                  steps_per_call, checkpoints)
      train_time += compiles.excluding_compiles(epoch_start)
      weight_sparsity = run_state.weight_sparsities(config, state)
      stream = num_steps * batch_size
      replayed = accounting.replayed_examples(
          num_steps, batch_size, method.replay_batch_size, replay_terms,
          replay_active, buffer_seen)
      epoch_flops = counter.add(stream + replayed, weight_sparsity,
                                grad_sparsity)
      kept_per_epoch[-1].append(int(count))
      log({"event": "epoch", "task": t, "epoch": epoch, "steps": num_steps,
           "kept": int(count), "examples": stream,
           "replayed_examples": replayed, "train_flops": epoch_flops,
           "train_flops_so_far": counter.train_flops,
           "loss": float(loss_sum) / max(num_steps, 1),
           "global_step": progress.steps_done,
           "weight_sparsity": weight_sparsity})
    bar.close()
    eval_start = compiles.mark()
    for j in range(num_tasks):
      test_index = scenario.tasks[j].test_indices
      correct_class, correct_task = evaluate(
          state.params, state.batch_stats, device_data, "test",
          jnp.asarray(tasks.pad(test_index, arrays.test_len)),
          jnp.int32(len(test_index)), jnp.int32(j), seen_so_far,
          jnp.asarray(class_masks[j]),
          sparsity_variables(state.opt_state))
      record.set_accuracy(t, j, (
          100.0 * int(correct_class) / len(test_index),
          100.0 * int(correct_task) / len(test_index)))
    eval_time += compiles.excluding_compiles(eval_start)
    record.end_task(t, time.perf_counter() - task_start)
    if checkpoints is not None:
      save_checkpoint({"task": t + 1, "in_task": False},
                      f"the end of task {t + 1} of {num_tasks}")

  results = record.results(config, scenario, start, compiles, train_time,
                           eval_time, steps_here)
  results.update(run_state.final_keys(config, state, counter,
                                      kept_per_epoch))
  return results

