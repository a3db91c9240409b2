"""Several seeds of a rehearsal-family run as one program vmapped over seeds.

Every per-seed array of the run (weights, optimizer state with its masks,
buffer, DDR statistics, PRNG key) carries a leading seed axis, and the
jitted train chunk, epoch order, DDR removal and evaluation of
:mod:`sparcl_jax.training.steps` run under ``jax.vmap`` over it: one call
trains every seed. The initial state of each seed is built exactly as its
single-seed run builds it (:func:`run_state.initial_state`) and then
stacked, so seed ``s`` follows its own run step for step; vmapped matrix
products may round differently in the last bit, which can change a
prediction or two.

What may differ between seeds stays per seed: data arrays that differ
(the digits source's train/test split, seeded labels or permutations) are
stacked, the others shared; a step fact (task masks, the epoch's step
count) is batched only when seeds disagree on it. Seeds whose epochs have
different step counts (DDR removes only examples a seed has learnt) run in
lockstep to the longest; a seed's surplus steps are masked no-ops (the
chunk's ``step < num_steps`` guard, per seed under vmap).
"""

from __future__ import annotations

import signal
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparcl_jax import ddr as ddr_lib
from sparcl_jax import rehearsal
from sparcl_jax.data import pipeline
from sparcl_jax.data.types import Scenario
from sparcl_jax.sparse.grouped_tdm import sparsity_variables
from sparcl_jax.training import accounting
from sparcl_jax.training import checkpoint as checkpoint_lib
from sparcl_jax.training import optimizers
from sparcl_jax.training import run_state
from sparcl_jax.training import steps
from sparcl_jax.training import tasks
from sparcl_jax.training import timing
from sparcl_jax.training.config import RunConfig

LogFn = Callable[[dict], None]


def stack(trees: Sequence[Any]) -> Any:
  """Stacks same-structured pytrees along a new leading (seed) axis.

  Args:
    trees: the per-seed pytrees.

  Returns:
    One pytree whose leaves have a leading axis of ``len(trees)``.

  Example:
    >>> stack([{"w": jnp.zeros(2)}, {"w": jnp.ones(2)}])["w"].shape
    (2, 2)
  """
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree: Any, index: int) -> Any:
  """Seed ``index``'s slice of a stacked pytree.

  Example:
    >>> unstack({"w": jnp.arange(4).reshape(2, 2)}, 1)["w"]
    Array([2, 3], dtype=int32)
  """
  return jax.tree.map(lambda leaf: leaf[index], tree)


def shared_or_stacked(values: Sequence[Any]):
  """``(value, axis)``: the first value and ``None`` when all are equal,
  else the stacked values and 0 (a vmap ``in_axes`` entry).

  Example:
    >>> shared_or_stacked([np.int32(3), np.int32(3)])
    (Array(3, dtype=int32), None)
  """
  host = [np.asarray(v) for v in values]
  if all(np.array_equal(h, host[0]) for h in host[1:]):
    return jnp.asarray(host[0]), None
  return jnp.asarray(np.stack(host)), 0


def device_data(scenarios: Sequence[Scenario]):
  """Every seed's data on the device: shared arrays once, the rest stacked.

  Args:
    scenarios: every seed's scenario (equal shapes).

  Returns:
    ``(data, axes)``: a :class:`~sparcl_jax.data.pipeline.DeviceData` and
    the matching vmap ``in_axes`` (None for a shared field, 0 for a
    stacked one).

  Example:
    >>> data, axes = device_data([scenario, scenario])  # doctest: +SKIP
    >>> axes.train_images is None  # doctest: +SKIP
    True
  """
  first = scenarios[0]

  def same(scenario):
    pools = ("train_images", "train_labels", "test_images", "test_labels")
    return (all(getattr(scenario, n) is getattr(first, n) or np.array_equal(
        getattr(scenario, n), getattr(first, n)) for n in pools) and
            all(np.array_equal(np.asarray(a.permutation),
                               np.asarray(b.permutation)) and
                a.label_offset == b.label_offset
                for a, b in zip(scenario.tasks, first.tasks)))

  if all(same(s) for s in scenarios[1:]):
    data = pipeline.to_device(first)
    return data, jax.tree.map(lambda _: None, data)
  each = [pipeline.to_device(s) for s in scenarios]
  fields = [shared_or_stacked(values) for values in zip(*each)]
  return (pipeline.DeviceData(*(f[0] for f in fields)),
          pipeline.DeviceData(*(f[1] for f in fields)))


def seed_log(log: LogFn, seed: int) -> LogFn:
  """``log`` with ``seed`` added to every record.

  Args:
    log: the run's log function.
    seed: the seed whose records it receives.

  Returns:
    The wrapped log function.

  Example:
    >>> seed_log(print, 3)({"event": "eval"})
    {'event': 'eval', 'seed': 3}
  """
  return lambda record: log(dict(record, seed=seed))


def check_stop(checkpoints, where: str) -> None:
  """Ends a multi-seed run on a stop request (it has no checkpoint to save).

  Args:
    checkpoints: the run's checkpointer, or None.
    where: the position, for the message.

  Raises:
    RunInterrupted: a stop was requested.

  Example:
    >>> check_stop(None, "in task 1 of 5")  # no checkpointer: never stops
  """
  if checkpoints is None or not checkpoints.stop_requested:
    return
  signum = checkpoints.stop_signal or signal.SIGINT
  raise checkpoint_lib.RunInterrupted(
      f"stopped by {signal.Signals(signum).name} {where}: a --num_seeds run "
      "keeps no checkpoints, so a rerun starts over.", signum)


def _seed_data(data, axes, seed: int):
  """One seed's view of :func:`device_data`'s arrays."""
  return pipeline.DeviceData(*(d if a is None else d[seed]
                               for d, a in zip(data, axes)))


def run(config: RunConfig, configs: Sequence[RunConfig],
        scenarios: Sequence[Scenario], log: LogFn, start: float, checkpoints,
        compiles: timing.CompileTimer):
  """Trains every seed of a rehearsal-family run in one vmapped program.

  Args:
    config: the run configuration.
    configs: each seed's single-seed configuration
      (``seeds.seed_configs``).
    scenarios: each seed's scenario, all of the same shapes.
    log: receives each seed's records, with its ``seed``.
    start: ``time.perf_counter()`` at the run's start.
    checkpoints: the run's checkpointer, asked only whether to stop.
    compiles: the run's compile timer.

  Returns:
    ``(per_seed, run_keys)``: each seed's results as its single-seed run
    returns them (the timings are the whole run's) and the run's timing
    keys, its ``train_steps`` counting lockstep steps.

  Example:
    >>> per_seed, keys = run(config, configs, scenarios, print, 0.0, None,
    ...                      timer)  # doctest: +SKIP
  """
  num_seeds, base = len(configs), scenarios[0]
  for seed_config, scenario in zip(configs, scenarios):
    run_state.check_sizes(seed_config, scenario)
  num_tasks = base.num_tasks
  model = run_state.make_run_model(config, base)
  spec = tasks.input_spec(base)
  method = run_state.method_spec(config)
  joint = config.method_object.joint
  arrays = [tasks.TaskArrays(s, joint) for s in scenarios]
  train_len, test_len = arrays[0].train_len, arrays[0].test_len
  batch_size = config.batch_size
  steps_per_call = max(1, min(config.steps_per_call, train_len // batch_size))

  data, data_axes = device_data(scenarios)
  states, txs = zip(*(
      run_state.initial_state(seed_config, scenario, model, spec,
                              _seed_data(data, data_axes, s))[:2]
      for s, (seed_config, scenario) in enumerate(zip(configs, scenarios))))
  # The seed only seeds the optimizer's state (SparCL's PRNG key), so the
  # first seed's update serves every seed.
  tx = txs[0]
  state = stack(states)
  class_masks = np.stack([tasks.class_masks(s) for s in scenarios])

  chunk = steps.make_train_chunk(model, tx, method, spec, batch_size,
                                 steps_per_call, buffer_ops=rehearsal,
                                 ddr_ops=ddr_lib,
                                 mask_events=optimizers.mask_events(config))
  chunks = {}

  def vchunk(facts_axes):
    # A step fact every seed shares stays unbatched, so the conditionals on
    # it (the step guard, TDM's and DGM's event steps) stay conditionals
    # instead of both branches and a select; one compilation per pattern.
    if facts_axes not in chunks:
      chunks[facts_axes] = jax.jit(jax.vmap(
          chunk, in_axes=(0, (data_axes, 0, 0), 0,
                          steps.StepFacts(*facts_axes))))
    return chunks[facts_axes]

  def split3(key):
    keys = jax.random.split(key, 3)
    return keys[0], keys[1], keys[2]

  def remove(ddr, key, count):
    # A seed with nothing to remove keeps its statistics, as when its
    # single-seed run skips the removal.
    removed = ddr_lib.ddr_remove(ddr, key, count)
    return jax.tree.map(lambda new, old: jnp.where(count > 0, new, old),
                        removed, ddr)

  split_keys = jax.jit(jax.vmap(split3))
  epoch_order = jax.jit(jax.vmap(pipeline.epoch_order))
  ddr_remove = jax.jit(jax.vmap(remove))
  evaluate_one = steps.make_evaluate(model, spec, config.eval_batch_size,
                                     test_len)
  evaluations = {}

  def evaluate(axes):
    # Test indices shared by every seed (one data pool, one split) make the
    # first layer one matrix product over all seeds' weights.
    if axes not in evaluations:
      evaluations[axes] = jax.jit(jax.vmap(
          lambda p, bs, d, *rest: evaluate_one(p, bs, d, "test", *rest),
          in_axes=(0, 0, data_axes) + axes))
    return evaluations[axes]

  ddr_schedule = ddr_lib.DDRSchedule(config.ddr_epoch_list,
                                     config.ddr_fraction)
  first_state = states[0]
  layer_macs = run_state.run_layer_macs(
      config, base, model, first_state.params, first_state.batch_stats, None,
      spec)
  counters = [accounting.FlopsCounter(layer_macs) for _ in configs]
  grad_sparsity = run_state.dgm_sparsities(config, first_state.params, None)
  replay_terms = config.method_object.replay_batches
  del states, first_state

  kept_per_epoch = [[] for _ in configs]
  train_time = eval_time = 0.0
  lockstep_steps = 0
  records = [tasks.RunRecord(num_tasks, seed_log(log, c.seed))
             for c in configs]

  for t in range(num_tasks):
    task_start = time.perf_counter()
    if joint and t > 0:
      fresh = []
      for s in range(num_seeds):
        rng, init_rng = jax.random.split(state.rng[s])
        params, batch_stats, _ = run_state.init_variables(model, spec,
                                                          init_rng)
        fresh.append((params, batch_stats, rng))
      params, batch_stats, rng = stack(fresh)
      state = state._replace(params=params, batch_stats=batch_stats, rng=rng)
    if not config.is_sparse:
      # A fresh optimizer per task, as the single-seed loop.
      state = state._replace(opt_state=jax.vmap(tx.init)(state.params))
    ex_index, ex_task, usable = (np.stack(a) for a in zip(
        *(seed_arrays.train(t) for seed_arrays in arrays)))
    task_data = (data, jnp.asarray(ex_index), jnp.asarray(ex_task))
    usable_dev = jnp.asarray(usable)
    task_sizes = usable.sum(axis=1)
    if method.track_forgetting:
      state = state._replace(ddr=stack([
          ddr_lib.ddr_init(int(n), capacity=train_len) for n in task_sizes]))
    seen_so_far = class_masks[:, :t + 1].any(axis=1)
    task_mask = seen_so_far if joint else class_masks[:, t]
    replay_active = bool(method.replay) and (t > 0 or
                                             method.replay_first_task)
    for seed_kept in kept_per_epoch:
      seed_kept.append([])
    for epoch in range(config.epochs):
      order_rng, remove_rng, rng = split_keys(state.rng)
      state = state._replace(rng=rng)
      if method.track_forgetting:
        removal = np.array([ddr_schedule.removal_count(epoch, int(n))
                            for n in task_sizes], np.int32)
        if removal.any():
          state = state._replace(ddr=ddr_remove(state.ddr, remove_rng,
                                                jnp.asarray(removal)))
        usable_dev = state.ddr.kept
      order, count = epoch_order(order_rng, usable_dev)
      count = np.asarray(count)
      num_steps = count // batch_size
      buffer_seen = (np.asarray(state.buffer.num_seen) if method.replay else
                     np.zeros(num_seeds, int))
      loss_sum = np.zeros(num_seeds, np.float32)
      chunk_losses = []
      epoch_start = compiles.mark()
      for first in range(0, int(num_steps.max()), steps_per_call):
        check_stop(checkpoints, f"in task {t + 1} of {num_tasks}")
        facts = [shared_or_stacked([np.int32(t)] * num_seeds),
                 shared_or_stacked([np.int32(epoch)] * num_seeds),
                 shared_or_stacked([np.int32(first)] * num_seeds),
                 shared_or_stacked(num_steps.astype(np.int32)),
                 shared_or_stacked(task_mask),
                 shared_or_stacked(seen_so_far)]
        state, chunk_loss = vchunk(tuple(f[1] for f in facts))(
            state, task_data, order,
            steps.StepFacts(*(f[0] for f in facts)))
        chunk_loss = np.asarray(chunk_loss)
        loss_sum = loss_sum + chunk_loss
        chunk_losses.append((first, chunk_loss))
        lockstep_steps += min(steps_per_call, int(num_steps.max()) - first)
      for s in range(num_seeds):
        tasks.check_loss(loss_sum[s], [(f, l[s]) for f, l in chunk_losses],
                         t, num_tasks, epoch, int(num_steps[s]),
                         steps_per_call, None)
      train_time += compiles.excluding_compiles(epoch_start)
      for s in range(num_seeds):
        steps_s = int(num_steps[s])
        records[s].progress.steps_done += steps_s
        weight_sparsity = (run_state.weight_sparsities(
            config, unstack(state, s)) if config.is_sparse else {})
        stream = steps_s * batch_size
        replayed = accounting.replayed_examples(
            steps_s, batch_size, method.replay_batch_size, replay_terms,
            replay_active, int(buffer_seen[s]))
        epoch_flops = counters[s].add(stream + replayed, weight_sparsity,
                                      grad_sparsity)
        kept_per_epoch[s][-1].append(int(count[s]))
        records[s].log({
            "event": "epoch", "task": t, "epoch": epoch, "steps": steps_s,
            "kept": int(count[s]), "examples": stream,
            "replayed_examples": replayed, "train_flops": epoch_flops,
            "train_flops_so_far": counters[s].train_flops,
            "loss": float(loss_sum[s]) / max(steps_s, 1),
            "global_step": records[s].progress.steps_done,
            "weight_sparsity": weight_sparsity})
    eval_start = compiles.mark()
    for j in range(num_tasks):
      test_index = [s.tasks[j].test_indices for s in scenarios]
      args = [shared_or_stacked([tasks.pad(i, test_len) for i in test_index]),
              shared_or_stacked([np.int32(len(i)) for i in test_index]),
              (jnp.int32(j), None), shared_or_stacked(seen_so_far),
              shared_or_stacked(class_masks[:, j]),
              (sparsity_variables(state.opt_state), 0)]
      correct_class, correct_task = evaluate(tuple(a[1] for a in args))(
          state.params, state.batch_stats, data, *(a[0] for a in args))
      correct_class, correct_task = (np.asarray(correct_class),
                                     np.asarray(correct_task))
      for s, index in enumerate(test_index):
        records[s].set_accuracy(t, j, (
            100.0 * int(correct_class[s]) / len(index),
            100.0 * int(correct_task[s]) / len(index)))
    eval_time += compiles.excluding_compiles(eval_start)
    for record in records:
      record.end_task(t, time.perf_counter() - task_start)

  per_seed = []
  for s, (seed_config, scenario) in enumerate(zip(configs, scenarios)):
    results = records[s].results(seed_config, scenario, start, compiles,
                                 train_time, eval_time,
                                 records[s].progress.steps_done)
    results.update(run_state.final_keys(seed_config, unstack(state, s),
                                        counters[s], kept_per_epoch[s]))
    per_seed.append(results)
  return per_seed, timing.results_keys(compiles, train_time, eval_time,
                                       lockstep_steps)
