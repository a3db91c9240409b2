"""A run's compiled functions, device data and epoch loop, over N seeds.

Every method family and every ``--num_seeds`` trains through one
:class:`Trainer`. Its state carries a leading seed axis when several seeds
share one program (``stacked``): the train chunk and the evaluation then
run under ``jax.vmap``, data arrays that differ between seeds are stacked
and the others shared, and a step fact is batched only when seeds disagree
on it (so the conditionals on it stay conditionals). A single seed (N = 1)
runs the same code without the axis, bit for bit as a run of that seed
alone. Seeds whose epochs have different step counts (DDR removes only
examples a seed has learnt) run in lockstep to the longest; a seed's
surplus steps are masked no-ops (the chunk's ``step < num_steps`` guard).

Method hooks that need the run (CLNP's pruning, EWC's Fisher) receive the
trainer as their ``runner``: ``config``, ``scenario``, ``class_masks``,
``tx``, ``finetune_tx``, ``finetune_fn``, ``log``, ``init_params(key)``,
``train_epochs(...)``, ``val_accuracy(params, task)``, ``activity(params,
task, layers)`` and ``fisher(params, task, examples)``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparcl_jax import ddr as ddr_lib
from sparcl_jax.data import pipeline
from sparcl_jax.data.types import Scenario
from sparcl_jax.errors import ConfigError
from sparcl_jax.sparse.grouped_tdm import sparsity_variables
from sparcl_jax.models import registry
from sparcl_jax.training import accounting
from sparcl_jax.training import measures
from sparcl_jax.training import optimizers
from sparcl_jax.training import run_state
from sparcl_jax.training import seed_axis
from sparcl_jax.training import sharding as sharding_lib
from sparcl_jax.training import steps
from sparcl_jax.training import tasks
from sparcl_jax.training import timing
from sparcl_jax.training.config import RunConfig

PyTree = Any


class Trainer:
  """Compiled functions, data and counters of one run of N seeds.

  Args:
    family: the method family's hooks (``families.family_of``).
    configs: each seed's configuration (``seed_axis.seed_configs``).
    scenarios: each seed's scenario, all of the same shapes.
    records: each seed's ``tasks.RunRecord``.
    compiles: the run's compile timer.
  """

  def __init__(self, family, configs: Sequence[RunConfig],
               scenarios: Sequence[Scenario],
               records: Sequence[tasks.RunRecord],
               compiles: timing.CompileTimer):
    self.family = family
    self.configs, self.scenarios, self.records = configs, scenarios, records
    self.config = config = configs[0]
    self.scenario = scenario = scenarios[0]
    self.num_seeds = len(configs)
    self.seeds = range(self.num_seeds)
    self.stacked = self.num_seeds > 1
    self.compiles = compiles
    self.method = config.method_object
    self.num_tasks = scenario.num_tasks
    self.log = records[0].log
    self.progress = records[0].progress
    self.model = run_state.make_run_model(config, scenario)
    self.spec = tasks.input_spec(scenario)
    self.arrays = [tasks.TaskArrays(s, self.method.joint) for s in scenarios]
    self.train_len = self.arrays[0].train_len
    self.test_len = self.arrays[0].test_len
    self.class_masks = tasks.class_masks(scenario)
    self.seed_class_masks = np.stack([tasks.class_masks(s)
                                      for s in scenarios])
    self.batch_size = config.batch_size
    self.steps_per_call = max(1, min(config.steps_per_call,
                                     self.train_len // self.batch_size))
    self.hooks = family.make_hooks(config)
    family.check(self)
    self.mesh = None if self.stacked else sharding_lib.make_mesh(
        config.num_devices, self.batch_size)
    replay_batch = self.hooks.replay_batch_size
    if self.mesh is not None and replay_batch % self.mesh.size:
      raise ConfigError(f"the replay mini-batch ({replay_batch}) cannot be "
                        f"split over {self.mesh.size} devices; set "
                        f"--minibatch_size to a multiple of {self.mesh.size}.")
    if self.stacked:
      self.data, self.data_axes = seed_axis.device_data(scenarios)
    else:
      self.data = pipeline.to_device(
          scenario, None if self.mesh is None else
          sharding_lib.replicated(self.mesh))
      self.data_axes = jax.tree.map(lambda _: None, self.data)
    self._init = None
    self.tx = self.finetune_tx = None
    states, txs, kept_rows, extras = zip(*(
        family.initial_state(self, c, s, seed_axis.seed_data(
            self.data, self.data_axes, i))
        for i, (c, s) in enumerate(zip(configs, scenarios))))
    # The seed only seeds the optimizer's state (SparCL's PRNG key), so the
    # first seed's update serves every seed.
    self.tx, self.kept_rows, self.extras = txs[0], kept_rows[0], extras[0]
    self.finetune_tx = self.finetune_tx or self.tx
    self.state = sharding_lib.replicate(self.stack(list(states)), self.mesh)
    first = states[0]
    self.flops = [accounting.FlopsCounter(run_state.run_layer_macs(
        config, scenario, self.model, first.params, first.batch_stats,
        self.kept_rows, self.spec)) for _ in configs]
    self.grad_sparsity = run_state.dgm_sparsities(config, first.params,
                                                  self.kept_rows)
    self.kept_per_epoch = [[] for _ in configs]
    self.ddr_schedule = ddr_lib.DDRSchedule(config.ddr_epoch_list,
                                            config.ddr_fraction)
    self.ddr_remove = jax.jit(ddr_lib.ddr_remove)
    self.epoch_order = jax.jit(pipeline.epoch_order)
    batch_sharding = (None if self.mesh is None else
                      sharding_lib.batch_sharded(self.mesh))
    self.train_fn = self._chunk_fn(self.tx, batch_sharding,
                                   optimizers.mask_events(config))
    self.finetune_fn = self.train_fn
    if self.finetune_tx is not self.tx:
      self.finetune_fn = self._chunk_fn(self.finetune_tx, batch_sharding,
                                        None)
    self._evaluate = steps.make_evaluate(self.model, self.spec,
                                         config.eval_batch_size,
                                         self.test_len, jit=not self.stacked)
    self._vmapped_evaluations = {}
    self._activity_fn = self._fisher_fn = None
    self.checkpoints = None
    # Seconds net of compilation; a resumed run counts this process's share.
    self.train_time = self.eval_time = 0.0
    self.lockstep_steps = 0

  # --- the seed axis ---------------------------------------------------------

  def stack(self, trees: Sequence[Any]) -> Any:
    """Per-seed trees as the run holds them (stacked, or the one seed's)."""
    return seed_axis.stack(trees) if self.stacked else trees[0]

  def seed_slice(self, tree: Any, seed: int) -> Any:
    """Seed ``seed``'s part of a tree the run holds."""
    return seed_axis.unstack(tree, seed) if self.stacked else tree

  def task_sizes(self, task: int) -> list[int]:
    """Each seed's number of training examples of ``task``."""
    return [int(a.train(task)[2].sum()) for a in self.arrays]

  def _chunk_fn(self, tx, batch_sharding, mask_events) -> Callable:
    chunk = steps.make_train_chunk(
        self.model, tx, self.hooks, self.spec, self.batch_size,
        self.steps_per_call, batch_sharding=batch_sharding,
        mask_events=mask_events, jit=not self.stacked)
    if not self.stacked:
      return lambda state, data, order, facts: chunk(state, data, order,
                                                     facts)
    compiled = {}

    def vchunk(state, data, order, facts):
      facts, axes = zip(*(seed_axis.shared_or_stacked(f) for f in facts))
      if axes not in compiled:
        compiled[axes] = jax.jit(jax.vmap(chunk, in_axes=(
            0, (self.data_axes, 0, 0), 0, steps.StepFacts(*axes))))
      return compiled[axes](state, data, order, steps.StepFacts(*facts))

    return vchunk

  # --- what method hooks use -------------------------------------------------

  def init_params(self, key: jax.Array) -> PyTree:
    """Fresh parameters from ``key`` (jitted: eager init is slow)."""
    if self._init is None:
      shape = (1,) + tuple(self.spec.image_shape)
      self._init = jax.jit(
          lambda k: registry.init_model(self.model, k, shape)["params"])
    return self._init(key)

  @property
  def steps_done(self) -> int:
    """Train steps run so far (the first seed's), fine-tuning included."""
    return self.progress.steps_done

  def train_epochs(self, state, task: int, epochs: int, tag: str = "epoch",
                   train_fn: Optional[Callable] = None,
                   resume: Optional[dict] = None,
                   after_chunk: Optional[Callable[..., None]] = None):
    """Runs ``epochs`` epochs of ``task``'s training data for every seed.

    Args:
      state: the run state (with the seed axis when ``stacked``).
      task: the task index.
      epochs: epochs to run (counted from 0).
      tag: the ``event`` of the per-epoch log records.
      train_fn: the chunk function (default: the run's).
      resume: a mid-task checkpoint's position (``epoch``, ``step``,
        ``order``, ``count``, ``num_steps``, ``loss_sum``, ``buffer_seen``):
        the first epoch restarts there with the saved order.
      after_chunk: called as ``after_chunk(state, position, steps_before)``
        after every chunk (checkpoints and stop requests).

    Returns:
      The state after training.
    """
    train_fn = train_fn or self.train_fn
    index, owner, usable = (np.stack(a) for a in zip(
        *(arrays.train(task) for arrays in self.arrays)))
    data = (self.data, self.stack(list(map(jnp.asarray, index))),
            self.stack(list(map(jnp.asarray, owner))))
    usable = [jax.device_put(u) for u in usable]
    seen = self.seed_class_masks[:, :task + 1].any(axis=1)
    task_mask = seen if self.method.joint else self.seed_class_masks[:, task]
    replay_active = self.hooks.replays_in_task(task)
    replay_batch = self.hooks.replay_batch_size
    replay_terms = self.method.replay_batches
    for epoch in range(resume["epoch"] if resume else 0, epochs):
      if resume is not None:
        # Mid-epoch restart: this epoch's order and sums come from the
        # checkpoint, so the remaining steps see exactly the same batches.
        order, count = resume["order"], np.array([resume["count"]])
        first_step = resume["step"]
        loss_sum = np.array([resume["loss_sum"]], np.float32)
        buffer_seen = np.array([resume.get("buffer_seen", 0)])
        resume = None
      else:
        state, order_keys, kept = self.family.start_epoch(self, state, task,
                                                          epoch)
        orders = [self.epoch_order(key, self.seed_slice(kept, s)
                                   if kept is not None else usable[s])
                  for s, key in zip(self.seeds, order_keys)]
        order = self.stack([o[0] for o in orders])
        count = np.array([int(o[1]) for o in orders])
        first_step = 0
        loss_sum = np.zeros(self.num_seeds, np.float32)
        buffer_seen = self.family.buffer_seen(self, state)
      num_steps = count // self.batch_size
      longest = int(num_steps.max())
      chunk_losses = []
      epoch_start = self.compiles.mark()
      for first in range(first_step, longest, self.steps_per_call):
        facts = steps.StepFacts(
            *(self._fact([np.int32(v)] * self.num_seeds)
              for v in (task, epoch, first)),
            self._fact(num_steps.astype(np.int32)),
            self._fact(task_mask), self._fact(seen))
        state, chunk_loss = train_fn(state, data, order, facts)
        chunk_loss = np.atleast_1d(np.asarray(chunk_loss))
        loss_sum = loss_sum + chunk_loss
        chunk_losses.append((first, chunk_loss))
        done = min(self.steps_per_call, longest - first)
        self.lockstep_steps += done
        before = self.progress.steps_done
        if not self.stacked:
          self.progress.steps_done += done
        if after_chunk is not None:
          after_chunk(state, {"epoch": epoch, "step": first + done,
                              "done": done,
                              "order": order, "count": int(count[0]),
                              "num_steps": int(num_steps[0]),
                              "loss_sum": float(loss_sum[0]),
                              "buffer_seen": int(buffer_seen[0]),
                              "chunk_losses": [(f, l[0]) for f, l in
                                               chunk_losses]}, before)
      for s in self.seeds:
        tasks.check_loss(loss_sum[s], [(f, l[s]) for f, l in chunk_losses],
                         task, self.num_tasks, epoch, int(num_steps[s]),
                         self.steps_per_call, self.checkpoints)
      self.train_time += self.compiles.excluding_compiles(epoch_start)
      for s in self.seeds:
        steps_s = int(num_steps[s])
        if self.stacked:
          self.records[s].progress.steps_done += steps_s
        weight_sparsity = run_state.weight_sparsities(
            self.config, self.seed_slice(state, s))
        stream = steps_s * self.batch_size
        replayed = accounting.replayed_examples(
            steps_s, self.batch_size, replay_batch, replay_terms,
            replay_active, int(buffer_seen[s]))
        epoch_flops = self.flops[s].add(stream + replayed, weight_sparsity,
                                        self.grad_sparsity)
        self.kept_per_epoch[s][-1].append(int(count[s]))
        self.records[s].log({
            "event": tag, "task": task, "epoch": epoch, "steps": steps_s,
            "kept": int(count[s]), "examples": stream,
            "replayed_examples": replayed, "train_flops": epoch_flops,
            "train_flops_so_far": self.flops[s].train_flops,
            "loss": float(loss_sum[s]) / max(steps_s, 1),
            "global_step": self.records[s].progress.steps_done,
            "weight_sparsity": weight_sparsity})
    return state

  def _fact(self, values):
    """One step fact: the one seed's value, or every seed's values."""
    return list(values) if self.stacked else jnp.asarray(values[0])

  def evaluate(self, state, task: int, extras: dict) -> None:
    """Accuracy of every seed on every task after training ``task``."""
    eval_start = self.compiles.mark()
    seen = self.seed_class_masks[:, :task + 1].any(axis=1)
    for j in range(self.num_tasks):
      params = self.family.eval_params(self, state.params, extras, j)
      index = [s.tasks[j].test_indices for s in self.scenarios]
      args = [[tasks.pad(i, self.test_len) for i in index],
              [np.int32(len(i)) for i in index], [np.int32(j)] * len(index),
              list(seen), list(self.seed_class_masks[:, j])]
      collections = sparsity_variables(state.opt_state)
      if self.stacked:
        args = [seed_axis.shared_or_stacked(a) for a in args]
        axes = tuple(a[1] for a in args)
        if axes not in self._vmapped_evaluations:
          self._vmapped_evaluations[axes] = jax.jit(jax.vmap(
              lambda p, bs, d, c, *rest: self._evaluate(p, bs, d, "test",
                                                        *rest, c),
              in_axes=(0, 0, self.data_axes, 0) + axes))
        correct = self._vmapped_evaluations[axes](
            params, state.batch_stats, self.data, collections,
            *(a[0] for a in args))
      else:
        correct = self._evaluate(params, state.batch_stats, self.data, "test",
                                 *(jnp.asarray(a[0]) for a in args),
                                 collections)
      correct_class, correct_task = (np.atleast_1d(np.asarray(c))
                                     for c in correct)
      for s, i in enumerate(index):
        self.records[s].set_accuracy(task, j, (
            100.0 * int(correct_class[s]) / len(i),
            100.0 * int(correct_task[s]) / len(i)))
    self.eval_time += self.compiles.excluding_compiles(eval_start)

  def accuracy(self, params: PyTree, task: int, split: str,
               seen: np.ndarray) -> tuple[float, float]:
    """(Class-IL, Task-IL) accuracy in percent of ``params`` on a task."""
    since = self.compiles.mark()
    info = self.scenario.tasks[task]
    index = info.test_indices if split == "test" else info.val_indices
    correct_class, correct_task = self._evaluate(
        params, {}, self.data, split,
        jnp.asarray(tasks.pad(index, self.test_len)),
        jnp.int32(len(index)), jnp.int32(task), jnp.asarray(seen),
        jnp.asarray(self.class_masks[task]))
    accuracies = (100.0 * int(correct_class) / len(index),
                  100.0 * int(correct_task) / len(index))
    self.eval_time += self.compiles.excluding_compiles(since)
    return accuracies

  def val_accuracy(self, params: PyTree, task: int) -> float:
    """Task-IL accuracy on the task's validation split, percent."""
    return self.accuracy(params, task, "val", self.class_masks[task])[1]

  def activity(self, params: PyTree, task: int,
               layers) -> dict[str, jax.Array]:
    """Unit activity of ``layers`` on the task's validation split."""
    if self._activity_fn is None:
      self._activity_fn = measures.make_activity(
          self.model, self.spec, layers, self.config.activity_reading,
          self.config.eval_batch_size)
    val = self.scenario.tasks[task].val_indices
    return self._activity_fn(
        params, self.data, jnp.asarray(tasks.pad(val, self.test_len)),
        jnp.int32(len(val)), jnp.int32(task))

  def fisher(self, params: PyTree, task: int, examples: int) -> PyTree:
    """Empirical diagonal Fisher over up to ``examples`` of the task's
    training examples, drawn with the run's seed and the task index."""
    if self._fisher_fn is None:
      self._fisher_fn = measures.make_fisher(self.model, self.spec)
    train = self.scenario.tasks[task].train_indices
    n = min(examples, len(train))
    rows = np.random.default_rng((self.config.seed, task)).choice(
        train, n, replace=False)
    length = min(examples, self.train_len)
    return self._fisher_fn(params, self.data,
                           jnp.asarray(tasks.pad(rows, length)),
                           jnp.int32(n), jnp.int32(task),
                           jnp.asarray(self.class_masks[task]))
