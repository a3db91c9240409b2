"""The one loop over tasks and epochs of every run, any method, any seeds.

All per-step work happens in the jitted chunks of
:mod:`sparcl_jax.training.steps`, driven by the epoch loop of
:class:`~sparcl_jax.training.trainer.Trainer`; what differs between method
families is in :mod:`sparcl_jax.training.families`. This module runs the
tasks: each task's start, its epochs, its end (CLNP's pruning, EWC's
Fisher), the evaluation on every task, and the checkpoints that resume a
run where it stopped.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import jax.numpy as jnp
import numpy as np  # the doctests use it

from sparcl_jax import clnp as clnp_lib
from sparcl_jax.data.types import Scenario
from sparcl_jax.errors import ConfigError
from sparcl_jax.training import checkpoint as checkpoint_lib
from sparcl_jax.training import config as config_lib
from sparcl_jax.training import families
from sparcl_jax.training import resume_checks
from sparcl_jax.training import run_state
from sparcl_jax.training import seed_axis
from sparcl_jax.training import tasks
from sparcl_jax.training import timing
from sparcl_jax.training.config import RunConfig
from sparcl_jax.training.trainer import Trainer

LogFn = Callable[[dict], None]


def run(config: RunConfig, scenario: Optional[Scenario] = None,
        log_fn: Optional[LogFn] = None,
        checkpoints: Optional[checkpoint_lib.Checkpointer] = None,
        start_time: Optional[float] = None) -> dict[str, Any]:
  """Trains a method on every task of a scenario and evaluates after each.

  With ``config.num_seeds`` > 1 every seed trains, vmapped over a seed axis
  where the run allows it (``seed_axis.sequential_reason``) and one after
  another otherwise, and the results combine them (``seed_axis.combine``).

  Args:
    config: validated run configuration.
    scenario: the scenario to use (the first seed's); built from
      ``config`` when None.
    log_fn: called with one JSON-able dict per epoch and per evaluation
      (with the ``seed`` when the run has several).
    checkpoints: when given, the run resumes from its newest checkpoint (if
      any), saves one after every task and every
      ``checkpoints.every_steps`` steps, and stops with
      :class:`~sparcl_jax.training.checkpoint.RunInterrupted` after saving
      when a stop is requested (see ``checkpoint.stop_on_signals``). A stop
      requested during CLNP's pruning search is honoured at the task's
      end. A run of several seeds saves none and stops on a request.
    start_time: ``time.perf_counter()`` when the run began (e.g. before
      its caller loaded ``scenario``), for ``wall_time_s``; default now.

  Returns:
    The results dict (see docs/reference/results-json.md): accuracy matrices in
    percent, summary metrics, FLOPs, timings, the flags, and the method's
    own entries (CLNP's ``clnp`` diagnostics, ``val_final``...).

  Examples:
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
  configs = seed_axis.seed_configs(config)
  with timing.CompileTimer() as compiles:
    if config.num_seeds == 1:
      scenarios = [scenario or run_state.build_scenario(config)]
    else:
      scenarios = seed_axis.build_scenarios(config, scenario)
    # Only a single seed's run saves checkpoints.
    if (config.num_seeds == 1 and checkpoints is not None and
        checkpoints.data is None):
      checkpoints.data = resume_checks.data_fingerprint(scenarios[0],
                                                         config.data_dir)
    reason = seed_axis.sequential_reason(config, scenarios)
    if config.num_seeds == 1 or not reason:
      per_seed, run_keys = _train(configs, scenarios, log, start,
                                  checkpoints, compiles)
      if config.num_seeds == 1:
        return per_seed[0]
      return seed_axis.combine(config, per_seed, run_keys, start,
                               vmapped=True)
  print(f"--num_seeds={config.num_seeds}: {reason} runs the seeds one after "
        "another.", flush=True)
  per_seed = []
  for seed_config, seed_scenario in zip(configs, scenarios):
    seed_axis.check_stop(checkpoints, f"before seed {seed_config.seed}")
    per_seed.append(run(seed_config, seed_scenario,
                        seed_axis.seed_log(log, seed_config.seed)))
  return seed_axis.combine(config, per_seed,
                           seed_axis.sequential_run_keys(per_seed), start,
                           vmapped=False)


def _train(configs, scenarios, log: LogFn, start: float,
           checkpoints: Optional[checkpoint_lib.Checkpointer],
           compiles: timing.CompileTimer):
  """Trains the seeds of ``configs`` together; ``(per_seed, run_keys)``."""
  config = configs[0]
  stacked = len(configs) > 1
  records = [tasks.RunRecord(scenarios[0].num_tasks,
                             seed_axis.seed_log(log, c.seed) if stacked
                             else log) for c in configs]
  family = families.family_of(config)
  trainer = Trainer(family, configs, scenarios, records, compiles)
  trainer.checkpoints = checkpoints
  record, num_tasks = records[0], trainer.num_tasks
  state, extras = trainer.state, trainer.extras
  no_order = jnp.zeros(trainer.train_len, jnp.int32)
  saving = checkpoints is not None and not stacked

  resume, first_task = None, 0
  if saving and checkpoints.exists():

    def like(meta):
      return {"train": family.state_like(trainer, state, meta),
              "order": no_order,
              "extras": family.saved_extras_like(extras, state.params,
                                                 len(meta["task_times"]))}

    tree, meta = tasks.restore_checkpoint(checkpoints, config, like)
    state = tree["train"]
    family.restore_extras(extras, tree["extras"], meta)
    record.restore(meta)
    trainer.kept_per_epoch[0] = [list(k) for k in meta["kept_per_epoch"]]
    counter = trainer.flops[0]
    (counter.train_flops, counter.dense_train_flops,
     counter.examples) = meta["flops"]
    if meta["in_task"]:
      resume = dict(meta, order=tree["order"])
    first_task = meta["task"]

  def save_checkpoint(state, position: dict[str, Any], where: str,
                      order=no_order) -> None:
    counter = trainer.flops[0]
    tasks.save_checkpoint(
        checkpoints, config,
        {"train": state, "order": order,
         "extras": family.saved_extras(extras)},
        dict(position, **record.meta(),
             kept_per_epoch=trainer.kept_per_epoch[0],
             flops=[counter.train_flops, counter.dense_train_flops,
                    counter.examples],
             **family.state_meta(state), **family.extras_meta(extras)),
        state.params, where)

  def after_chunk(t: int, bar):

    def callback(chunk_state, position, steps_before) -> None:
      bar.update(position["done"])
      if stacked:
        seed_axis.check_stop(checkpoints, f"in task {t + 1} of {num_tasks}")
        return
      if not saving or not (checkpoints.stop_requested or checkpoints.due(
          steps_before, trainer.steps_done)):
        return
      tasks.check_loss(position["loss_sum"], position["chunk_losses"], t,
                       num_tasks, position["epoch"], position["num_steps"],
                       trainer.steps_per_call, checkpoints)
      save_checkpoint(
          chunk_state,
          {"task": t, "in_task": True,
           **{k: position[k] for k in ("epoch", "step", "count", "num_steps",
                                       "loss_sum", "buffer_seen")}},
          f"task {t + 1} of {num_tasks}, epoch {position['epoch'] + 1}, "
          f"step {position['step']} of {position['num_steps']}",
          position["order"])

    return callback

  stopped = None
  for t in range(first_task, num_tasks):
    task_start = time.perf_counter()
    resuming = resume is not None
    try:
      state = family.start_task(trainer, state, extras, t, resuming)
    except clnp_lib.NoFreeUnitsError as err:
      stopped = f"stopped before task {t + 1} of {num_tasks}: {err}"
      record.log({"event": "stopped", "task": t, "message": stopped})
      break
    if not resuming:
      for kept in trainer.kept_per_epoch:
        kept.append([])
    steps_per_epoch = max(trainer.task_sizes(t)) // trainer.batch_size
    bar = tasks.progress_bar(steps_per_epoch * config.epochs,
                             f"task {t + 1}/{num_tasks}", config.progress)
    if resuming:
      bar.update(resume["epoch"] * steps_per_epoch + resume["step"])
    state = trainer.train_epochs(state, t, config.epochs, resume=resume,
                                 after_chunk=after_chunk(t, bar))
    bar.close()
    resume = None
    state = family.end_task(trainer, state, extras, t)
    trainer.evaluate(state, t, extras)
    for seed_record in records:
      seed_record.end_task(t, time.perf_counter() - task_start)
    if saving:
      save_checkpoint(state, {"task": t + 1, "in_task": False},
                      f"the end of task {t + 1} of {num_tasks}")

  if record.tasks_done == 0:
    raise ConfigError(stopped or "no task was trained")
  per_seed = []
  for s, (seed_config, scenario) in enumerate(zip(configs, scenarios)):
    seed_state = trainer.seed_slice(state, s)
    results = records[s].results(
        seed_config, scenario, start, compiles, trainer.train_time,
        trainer.eval_time, records[s].progress.steps_done if stacked else
        trainer.lockstep_steps)
    results.update(run_state.final_keys(
        seed_config, seed_state, trainer.flops[s], trainer.kept_per_epoch[s],
        [len(t.train_indices) for t in scenario.tasks]))
    results.update(family.results(trainer, seed_state, extras))
    if stopped:
      results["stopped_early"] = stopped
    per_seed.append(results)
  return per_seed, timing.results_keys(compiles, trainer.train_time,
                                       trainer.eval_time,
                                       trainer.lockstep_steps)
