"""Task-incremental runs of CLNP and its comparisons: EWC, SI, single-task.

:func:`run` is what ``loop.run`` calls for ``--method`` in
``config.CLNP_METHODS``. Every method shares one jitted train function (a
``lax.scan`` over a fixed number of steps, padded steps skipped) whose loss
is the cross-entropy over the current task's outputs plus a method term:

* ``clnp``: ``--l1`` times the L1 norm of the trainable (free) weights. The
  optimizer is wrapped in :func:`sparcl_jax.clnp.clnp_partition`, whose masks
  are traced state, so every task reuses the same compiled function. After a
  task: unit activity on its validation split, graceful-forgetting search
  (optionally with fine-tuning), commit, diagnostics.
* ``ewc``: ``--ewc_lambda / 2 * sum_t F_t (theta - theta*_t)^2``, kept as
  one merged slot (summed Fisher at the Fisher-weighted mean anchor: the
  same gradient, so a step's cost does not grow with the tasks, and the
  shapes never change). The Fisher is the empirical one, from the per-example
  gradients of up to ``_FISHER_EXAMPLES`` training examples of the task.
* ``si``: ``--si_c * sum Omega (theta - theta*)^2``; the path integral uses
  the gradient of the task loss without the penalty.
* ``single_task``: a fresh network per task, trained on that task only. Row
  ``i`` of the accuracy matrix evaluates task ``j <= i`` with network ``j``
  (each task's parameters are kept) and tasks ``j > i`` with network ``i``.

Every method trains and evaluates task-incrementally: the loss only sees the
logits of the current task's classes, and Task-IL accuracy takes the argmax
over the evaluated task's classes. Class-IL accuracy (argmax over all classes
seen so far) is reported for completeness; these methods do not aim at it.

The optimizer state is re-initialised at every task start (same shapes, no
recompilation).

With a :class:`~sparcl_jax.training.checkpoint.Checkpointer` a run saves at
the end of every task (after CLNP's commit) and resumes from its last
finished task; unlike the dense/SparCL loop it has no mid-task checkpoints,
so a stopped run redoes the task it was in.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparcl_jax import clnp as clnp_lib
from sparcl_jax import metrics as metrics_lib
from sparcl_jax import regularizers
from sparcl_jax.control_flow import run_if
from sparcl_jax.data import pipeline
from sparcl_jax.data.types import Scenario
from sparcl_jax.errors import ConfigError
from sparcl_jax.models import registry
from sparcl_jax.training import checkpoint as checkpoint_lib
from sparcl_jax.training import config as config_lib
from sparcl_jax.training import loop
from sparcl_jax.training import losses
from sparcl_jax.training import steps
from sparcl_jax.training import timing
from sparcl_jax.training.config import RunConfig

PyTree = Any
LogFn = Callable[[dict], None]

# Training examples per task that EWC's Fisher is estimated from (a config
# field would be the natural home; 1000 keeps the estimate cheap and stable).
_FISHER_EXAMPLES = 1000
# Examples whose gradients are vectorised at once in the Fisher estimate.
_FISHER_CHUNK = 50
# Candidate activity quantiles of the graceful-forgetting search.
_QUANTILES = clnp_lib.DEFAULT_QUANTILES
CAPACITY_PLOT = "capacity.png"


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


# ----------------------------------------------------------------------------
# Set-up checks.


def layer_specs(model_name: str,
                params: PyTree) -> tuple[clnp_lib.LayerSpec, ...]:
  """CLNP layer specs of a project model, or a ConfigError.

  Args:
    model_name: ``'mlp'`` or ``'zenke_cnn'``.
    params: the model's params.

  Returns:
    The specs; at least one hidden (ReLU) layer.

  Raises:
    ConfigError: the model has no ReLU units CLNP can measure.

  Example:
    >>> specs = layer_specs('mlp', variables['params'])  # doctest: +SKIP
  """
  if model_name == "mlp":
    specs = clnp_lib.mlp_layer_specs(params)
  elif model_name == "zenke_cnn":
    specs = clnp_lib.cnn_layer_specs(params)
  else:
    raise ConfigError(f"--method=clnp needs --model=mlp or zenke_cnn, whose "
                      f"ReLU units it can measure; {model_name!r} is not "
                      "supported.")
  if not any(s.role == "hidden" for s in specs):
    raise ConfigError("--method=clnp needs a model with ReLU units to "
                      "measure; this one has none (give --hidden_sizes).")
  return specs


def _check_setup(config: RunConfig, scenario: Scenario) -> None:
  if config.model not in ("mlp", "zenke_cnn"):
    raise ConfigError(f"--method={config.method} runs --model=mlp or "
                      f"zenke_cnn (models without batch norm), not "
                      f"{config.model!r}.")
  min_task = min(len(t.train_indices) for t in scenario.tasks)
  if config.batch_size > min_task:
    raise ConfigError(f"--batch_size={config.batch_size} is larger than the "
                      f"smallest task ({min_task} examples); lower it.")
  if config.method == "clnp" and min(len(t.val_indices)
                                     for t in scenario.tasks) == 0:
    raise ConfigError("--method=clnp prunes on held-out data: pass "
                      "--val_fraction > 0 (e.g. 0.1).")
  if config.head == "multi":
    start = 0
    for t, task in enumerate(scenario.tasks):
      block = np.arange(start, start + len(task.classes))
      if not np.array_equal(np.sort(task.classes), block):
        raise ConfigError(f"--head=multi needs task {t} to own classes "
                          f"{start}..{block[-1]} in order; this scenario "
                          "does not (drop --shuffle_classes or use "
                          "--head=shared).")
      start += len(task.classes)


def _base_optimizer(config: RunConfig, steps_per_task: int,
                    peak_lr: Optional[float] = None
                    ) -> optax.GradientTransformation:
  """The base optimizer; its step count (and so the schedule) restarts with
  the fresh optimizer state of every task (and of every fine-tuning)."""
  lr = config.lr if peak_lr is None else peak_lr
  if config.lr_schedule == "cosine":
    lr = optax.cosine_decay_schedule(lr, max(1, steps_per_task))
  if config.optimizer == "adam":
    return optax.adam(lr)
  return optax.sgd(lr)


def make_optimizer(config: RunConfig, steps_per_task: int,
                   peak_lr: Optional[float] = None
                   ) -> optax.GradientTransformation:
  """The optimizer of a task-level run: CLNP's partition around the base one.

  Args:
    config: the run configuration (method, optimizer, lr, schedule).
    steps_per_task: train steps of one task (the cosine schedule's length).
    peak_lr: learning rate instead of ``config.lr`` (fine-tuning).

  Returns:
    ``clnp_partition(base)`` for CLNP, else the base optimizer. The base
    optimizers are elementwise and restart every task, so the partition
    masks only the final update (``mask_gradients=False``: the same updates
    to rounding, with less memory traffic per step).

  Example:
    >>> tx = make_optimizer(RunConfig(workdir='/tmp/r', method='clnp',
    ...                               optimizer='adam', lr=1e-3), 2000)
  """
  base = _base_optimizer(config, steps_per_task, peak_lr)
  if config.method == "clnp":
    return clnp_lib.clnp_partition(base, mask_gradients=False)
  return base


# ----------------------------------------------------------------------------
# Jitted pieces.


def _penalty_fn(config: RunConfig) -> Callable[[PyTree, Any, Any], jax.Array]:
  """``penalty(params, opt_state, reg)`` of the method (without the CE)."""
  if config.method == "clnp":
    # Unmasked: the partition zeroes the frozen entries' updates, and the
    # trainable entries' gradient is the same without a mask pass.
    return lambda p, opt, reg: config.l1 * clnp_lib.l1_penalty(p, None)
  if config.method == "ewc":
    return lambda p, opt, reg: regularizers.ewc_penalty(p, reg,
                                                         config.ewc_lambda)
  if config.method == "si":
    return lambda p, opt, reg: regularizers.si_penalty(p, reg, config.si_c)
  return lambda p, opt, reg: jnp.zeros((), jnp.float32)


def make_train_function(model, tx: optax.GradientTransformation,
                        config: RunConfig, inputs: steps.InputSpec,
                        batch_size: int, steps_per_call: int) -> Callable:
  """Builds the one jitted train function of a run.

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
  forward = steps.make_forward(model)
  penalty = _penalty_fn(config)
  track_si = config.method == "si"

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

  def one_step(state: RunState, data, order, facts: ChunkFacts, step):
    device_data, ex_index = data
    rng, k_aug, k_drop = jax.random.split(state.rng, 3)
    positions = jax.lax.dynamic_slice(order, (step * batch_size,),
                                      (batch_size,))
    x, y = pipeline.gather_batch(device_data, ex_index[positions],
                                 facts.task_id, "train", inputs.permuted)
    if inputs.augment:
      x = pipeline.augment_batch(k_aug, x)
    x = pipeline.normalize(x, inputs.mean, inputs.std)
    if track_si:
      # SI accumulates the task gradient alone.
      loss, g_task = task_grad(state.params, x, y, k_drop,
                               facts.task_class_mask)
      g_pen = penalty_grad(state.params, state.opt_state, state.reg)
      grads = jax.tree.map(jnp.add, g_task, g_pen)
    else:
      grads, loss = total_grad(state.params, x, y, k_drop,
                               facts.task_class_mask, state.opt_state,
                               state.reg)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    reg = state.reg
    if track_si:
      reg = regularizers.si_accumulate(reg, g_task, state.params, params)
    return RunState(params, opt_state, reg, rng), loss

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

  The device-side twin of :func:`sparcl_jax.clnp.unit_activity`: same
  readings (mean post-ReLU activation, or share of positive activations;
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
      new = {}
      for name in names:
        h = acts[name]
        h = h.reshape(h.shape[0], -1, h.shape[-1])
        vals = h if reading == "mean" else (h > 0).astype(jnp.float32)
        vals = jnp.where(valid[b][:, None, None], vals, 0.0)
        # Sum per position first: the mean over positions stays exact for
        # a dense layer (one position) and well scaled for a conv.
        new[name] = sums[name] + jnp.sum(jnp.mean(vals, axis=1), axis=0)
      return new, None

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
                chunk: int = _FISHER_CHUNK) -> Callable:
  """Builds the jitted empirical diagonal Fisher of one task.

  The mean over examples of the squared gradient of each example's
  log-likelihood under the task-masked softmax, as
  :func:`sparcl_jax.regularizers.fisher_diagonal` in ``'per_example'`` mode
  with the data's labels, but on device-resident data.

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
      grads = per_example(params, x, y, class_mask)
      keep = valid[b]

      def add(a, g):
        g = jnp.square(g.astype(jnp.float32))
        g = jnp.where(keep.reshape((-1,) + (1,) * (g.ndim - 1)), g, 0.0)
        return a + jnp.sum(g, axis=0)

      return jax.tree.map(add, acc, grads), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    acc, _ = jax.lax.scan(body, zeros, jnp.arange(batches.shape[0]))
    return jax.tree.map(lambda a: a / count.astype(jnp.float32), acc)

  return jax.jit(fisher)


def gate_shared_head(params: PyTree, gate: np.ndarray) -> PyTree:
  """Zeroes the shared head's rows of units outside a task's gate.

  ``(h * gate) @ W + b == h @ (W * gate[:, None]) + b``, so gating the
  kernel lets the ordinary forward pass compute a task's gated logits.

  Args:
    params: params with a shared head at ``params['head']['kernel']``.
    gate: 0/1 per last-hidden unit (:func:`sparcl_jax.clnp.single_head_gate`).

  Returns:
    Params with the gated-off rows of the head kernel set to zero.

  Example:
    >>> params = {'head': {'kernel': jnp.ones((3, 2)), 'bias': jnp.zeros(2)}}
    >>> gated = gate_shared_head(params, np.array([1., 0., 1.]))
    >>> gated['head']['kernel']
    Array([[1., 1.],
           [0., 0.],
           [1., 1.]], dtype=float32)
  """
  head = dict(params["head"])
  keep = jnp.asarray(gate)[:, None] > 0
  head["kernel"] = jnp.where(keep, head["kernel"],
                             jnp.zeros_like(head["kernel"]))
  out = dict(params)
  out["head"] = head
  return out


# ----------------------------------------------------------------------------
# The run.


class _Runner:
  """Holds a run's compiled functions, device data and bookkeeping."""

  def __init__(self, config: RunConfig, scenario: Scenario, log: LogFn):
    self.config, self.scenario, self.log = config, scenario, log
    self.num_tasks = scenario.num_tasks
    head_sizes = [len(t.classes) for t in scenario.tasks]
    self.model = registry.make_model(
        config.model, scenario.num_outputs, hidden_sizes=config.hidden_widths,
        nf=config.nf, head=config.head, head_sizes=head_sizes,
        conv_gradients=config.conv_gradients)
    self.spec = loop.input_spec(scenario)
    self.arrays = loop._TaskArrays(scenario, joint=False)  # pylint: disable=protected-access
    self.class_masks = loop._class_masks(scenario)  # pylint: disable=protected-access
    self.batch_size = config.batch_size
    self.steps_per_call = max(1, min(config.steps_per_call,
                                     self.arrays.train_len // self.batch_size))
    # Tasks of one scenario differ by a few examples at most: the longest
    # sets the decay length.
    self.tx = make_optimizer(
        config, config.epochs * (self.arrays.train_len // self.batch_size))
    self.train_fn = make_train_function(self.model, self.tx, config,
                                        self.spec, self.batch_size,
                                        self.steps_per_call)
    # Fine-tuning after pruning has its own rate and schedule length, so its
    # own (same-shaped) optimizer and train function.
    self.finetune_tx, self.finetune_fn = self.tx, self.train_fn
    if config.method == "clnp" and config.finetune_epochs:
      self.finetune_tx = make_optimizer(
          config,
          config.finetune_epochs * (self.arrays.train_len // self.batch_size),
          config.finetune_lr or config.lr)
      self.finetune_fn = make_train_function(
          self.model, self.finetune_tx, config, self.spec, self.batch_size,
          self.steps_per_call)
    self.epoch_order = steps.make_epoch_order()
    self.evaluate_fn = steps.make_evaluate(self.model, self.spec,
                                           config.eval_batch_size,
                                           self.arrays.test_len)
    self.device_data = pipeline.to_device(scenario)
    # Built on first use: only CLNP measures activity.
    self.activity_fn = None
    self._init = None
    # Set by run(): called after every train chunk so a requested stop is
    # honoured mid-task (see _check_stop).
    self.after_chunk: Callable[[], None] = lambda: None
    self.steps_done = 0
    # Seconds net of compilation (see timing.CompileTimer); set by run().
    self.compiles = timing.CompileTimer()
    self.train_time = 0.0
    self.eval_time = 0.0

  def init_params(self, key: jax.Array) -> PyTree:
    """Fresh parameters from ``key`` (jitted: eager init is slow)."""
    if self._init is None:
      shape = (1,) + tuple(self.spec.image_shape)
      self._init = jax.jit(
          lambda k: registry.init_model(self.model, k, shape)["params"])
    return self._init(key)

  def train_epochs(self, state: RunState, task: int, epochs: int,
                   tag: str = "epoch",
                   train_fn: Optional[Callable] = None) -> RunState:
    """Runs ``epochs`` epochs of ``task``'s training data."""
    train_fn = train_fn or self.train_fn
    since = self.compiles.mark()
    ex_index, _, usable = self.arrays.train(task)
    data = (self.device_data, jax.device_put(ex_index))
    usable = jax.device_put(usable)
    mask = jnp.asarray(self.class_masks[task])
    for epoch in range(epochs):
      order_rng, rng = jax.random.split(state.rng)
      state = state._replace(rng=rng)
      order, count = self.epoch_order(order_rng, usable)
      num_steps = int(count) // self.batch_size
      loss_sum = jnp.zeros(())
      for first in range(0, num_steps, self.steps_per_call):
        facts = ChunkFacts(jnp.int32(task), jnp.int32(first),
                           jnp.int32(num_steps), mask)
        state, chunk_loss = train_fn(state, data, order, facts)
        loss_sum = loss_sum + chunk_loss
        self.steps_done += min(self.steps_per_call, num_steps - first)
        self.after_chunk()
      self.log({"event": tag, "task": task, "epoch": epoch,
                "steps": num_steps, "examples": num_steps * self.batch_size,
                "loss": float(loss_sum) / max(num_steps, 1)})
    self.train_time += self.compiles.excluding_compiles(since)
    return state

  def accuracy(self, params: PyTree, task: int, split: str,
               seen: np.ndarray) -> tuple[float, float]:
    """(Class-IL, Task-IL) accuracy in percent of ``params`` on a task."""
    since = self.compiles.mark()
    info = self.scenario.tasks[task]
    index = info.test_indices if split == "test" else info.val_indices
    correct_class, correct_task = self.evaluate_fn(
        params, {}, self.device_data, split,
        jnp.asarray(loop._pad(index, self.arrays.test_len)),  # pylint: disable=protected-access
        jnp.int32(len(index)), jnp.int32(task), jnp.asarray(seen),
        jnp.asarray(self.class_masks[task]))
    accuracies = (100.0 * int(correct_class) / len(index),
                  100.0 * int(correct_task) / len(index))
    self.eval_time += self.compiles.excluding_compiles(since)
    return accuracies

  def val_accuracy(self, params: PyTree, task: int) -> float:
    """Task-IL accuracy on the task's validation split, percent."""
    return self.accuracy(params, task, "val", self.class_masks[task])[1]


def _results(runner: _Runner, acc_class: np.ndarray, acc_task: np.ndarray,
             task_times: list[float], start: float) -> dict[str, Any]:
  scenario = runner.scenario
  final = metrics_lib.summarize(acc_class, acc_task)
  return {
      "acc_matrix": {"class_il": acc_class.tolist(),
                     "task_il": acc_task.tolist()},
      "final": {k: float(v) for k, v in final.items()},
      "wall_time_s": time.perf_counter() - start,
      "task_time_s": list(task_times),
      **timing.results_keys(runner.compiles, runner.train_time,
                            runner.eval_time, runner.steps_done),
      "scenario": {"name": scenario.name, "num_tasks": scenario.num_tasks,
                   "num_outputs": scenario.num_outputs,
                   "train_examples_per_task":
                       [len(t.train_indices) for t in scenario.tasks]},
      "flags": config_lib.to_dict(runner.config),
  }


def _theta_json(theta) -> Any:
  """Thresholds as JSON: ``None`` for the keep-everything fallback."""
  if isinstance(theta, Mapping):
    return {k: _theta_json(v) for k, v in theta.items()}
  theta = float(theta)
  return theta if math.isfinite(theta) else None


def _reused(activity: Mapping[str, np.ndarray], used_before: Mapping[str,
                                                                     Any],
            theta) -> dict[str, int]:
  """Earlier tasks' units active on this task above its chosen threshold.

  The bar is the one the task's own units had to pass; with no finite
  threshold (every free unit kept) it is zero activity.
  """
  out = {}
  for name, before in used_before.items():
    t = theta[name] if isinstance(theta, Mapping) else theta
    t = float(t) if math.isfinite(float(t)) else 0.0
    out[name] = int(np.sum(np.asarray(before, bool)
                           & (np.asarray(activity[name]) > t)))
  return out


def capacity_plot_data(used_history: Sequence[Mapping[str, np.ndarray]]
                       ) -> dict[str, Any]:
  """Used share of every hidden layer after each committed task.

  Args:
    used_history: ``used`` dicts after each task, in order.

  Returns:
    ``{'tasks': [1..T], 'units': {layer: width}, 'used_fraction': {layer:
    [fraction after task 1, ...]}}``.

  Example:
    >>> capacity_plot_data([{'hidden_0': np.array([True, False])}])
    {'tasks': [1], 'units': {'hidden_0': 2}, 'used_fraction': {'hidden_0': [0.5]}}
  """
  if not used_history:
    return {"tasks": [], "units": {}, "used_fraction": {}}
  names = list(used_history[0])
  return {
      "tasks": list(range(1, len(used_history) + 1)),
      "units": {n: int(np.size(used_history[0][n])) for n in names},
      "used_fraction": {n: [float(np.mean(u[n])) for u in used_history]
                        for n in names},
  }


def plot_capacity(workdir: str, results: Mapping[str, Any]) -> str:
  """Saves the used share of each layer against tasks as ``capacity.png``.

  Args:
    workdir: output directory.
    results: a CLNP run's results (its ``capacity_plot_data``).

  Returns:
    The PNG's path.

  Raises:
    ConfigError: the results hold no capacity data (not a CLNP run).

  Example:
    >>> plot_capacity('/tmp/run', results)  # doctest: +SKIP
    '/tmp/run/capacity.png'
  """
  data = results.get("capacity_plot_data")
  if not data:
    raise ConfigError("plot_capacity needs the results of a --method=clnp "
                      "run (no capacity_plot_data).")
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(5, 3.2))
  for name, fractions in data["used_fraction"].items():
    ax.plot(data["tasks"], [100.0 * f for f in fractions], marker="o",
            label=f"{name} ({data['units'][name]} units)")
  ax.set_xlabel("after training task")
  ax.set_ylabel("used capacity (%)")
  ax.set_ylim(0, 100)
  ax.set_xticks(data["tasks"])
  ax.set_title(f"CLNP capacity on {results.get('scenario', {}).get('name', '')}")
  ax.legend(fontsize=7)
  fig.tight_layout()
  path = os.path.join(workdir, CAPACITY_PLOT)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _ones_like(tree: PyTree) -> PyTree:
  return jax.tree.map(jnp.ones_like, tree)


def _finetune_partition(params, specs, used, kept, task,
                        partition: clnp_lib.Partition) -> clnp_lib.Partition:
  """The task's partition with the cut weights made zero and frozen."""
  cut = clnp_lib.apply_cut(_ones_like(params), specs, used, kept, task)
  cut_zero = jax.tree.map(lambda c: c == 0, cut)
  return clnp_lib.Partition(
      jax.tree.map(lambda t, z: t & ~z, partition.trainable, cut_zero),
      jax.tree.map(lambda z, c: z | c, partition.zero, cut_zero))


def _clnp_task(runner: _Runner, state: RunState, task: int, specs, used,
               partition) -> tuple[RunState, dict, Any, dict]:
  """Prunes a trained task and commits it; returns its diagnostics."""
  config = runner.config
  val = runner.scenario.tasks[task].val_indices
  params = state.params
  if runner.activity_fn is None:
    runner.activity_fn = make_activity(
        runner.model, runner.spec,
        [s.name for s in specs if s.role == "hidden"],
        config.activity_reading, config.eval_batch_size)
  activity = {k: np.asarray(v, np.float64) for k, v in runner.activity_fn(
      params, runner.device_data,
      jnp.asarray(loop._pad(val, runner.arrays.test_len)),  # pylint: disable=protected-access
      jnp.int32(len(val)), jnp.int32(task)).items()}
  acc_before = runner.val_accuracy(params, task)
  free = {k: ~np.asarray(u, bool) for k, u in used.items()}
  rng, tune_rng, commit_rng = jax.random.split(state.rng, 3)

  def cut(kept):
    return clnp_lib.apply_cut(params, specs, used, kept, task)

  def evaluate(kept, tuned=None):
    return runner.val_accuracy(cut(kept) if tuned is None else tuned, task)

  def finetune(kept):
    start = cut(kept)
    part = _finetune_partition(params, specs, used, kept, task, partition)
    opt = clnp_lib.set_partition(runner.finetune_tx.init(start), part)
    tuned = runner.train_epochs(RunState(start, opt, None, tune_rng), task,
                                config.finetune_epochs, tag="finetune",
                                train_fn=runner.finetune_fn)
    return tuned.params

  result = clnp_lib.graceful_forgetting_search(
      evaluate, activity, free, config.margin, acc_before, _QUANTILES,
      finetune_fn=finetune if config.finetune_epochs else None,
      per_layer=config.threshold_per_layer,
      strategy=config.prune_search)
  chosen = result.tuned if result.tuned is not None else params
  new_params, new_used = clnp_lib.commit_task(
      chosen, specs, used, result.kept, commit_rng, runner.init_params, task)
  report = clnp_lib.capacity_report([used, new_used])["tasks"][1]
  reused = _reused(activity, used, result.theta)
  for name in report:
    report[name]["reused"] = reused[name]
  diag = {
      "task": task,
      "val_acc_before": acc_before,
      "val_acc_after": result.accuracy,
      "accepted": bool(result.accepted),
      "quantile": result.quantile,
      "theta": _theta_json(result.theta),
      "trials": [[float(q), float(a)] for q, a in result.trials],
      "layers": report,
  }
  runner.log({"event": "clnp_prune", **diag})
  return state._replace(params=new_params, rng=rng), new_used, result, diag


def run(config: RunConfig, scenario: Scenario, log_fn: LogFn,
        start_time: float,
        checkpoints: Optional[checkpoint_lib.Checkpointer] = None,
        compiles: Optional[timing.CompileTimer] = None) -> dict[str, Any]:
  """Trains a task-incremental method of the CLNP comparison on a scenario.

  Args:
    config: validated configuration; ``config.method`` in
      ``config.CLNP_METHODS``.
    scenario: the scenario.
    log_fn: called with one JSON-able dict per epoch, prune and evaluation.
    start_time: ``time.perf_counter()`` at the start of the run.
    compiles: the run's active compile timer (``loop.run`` passes it); None
      times nothing as compilation (the timing keys then count it as
      training or evaluation).
    checkpoints: when given, the run resumes from its newest checkpoint (if
      any) and saves one at the end of every task (after CLNP's prune and
      commit). Resumption is task-level: a run continues after its last
      finished task, and a stop requested mid-task (see
      ``checkpoint.stop_on_signals``) raises
      :class:`~sparcl_jax.training.checkpoint.RunInterrupted` at the next
      chunk boundary, dropping the unfinished task's progress, once a task
      has been saved (before that, at the end of the first task).

  Returns:
    The results dict of ``loop.run`` (``acc_matrix``, ``final``,
    ``wall_time_s``, ``task_time_s``, the timing keys, ``scenario``,
    ``flags``) plus, for
    CLNP, ``clnp`` (per-task diagnostics: validation accuracy before and
    after pruning, chosen quantile and threshold, per-layer used / free /
    claimed / available / reused units) and ``capacity_plot_data``. When a
    layer has no free units left for a new task the run stops cleanly:
    the matrices cover the tasks trained so far and ``stopped_early`` holds
    the reason.

  Raises:
    ConfigError: the model or scenario cannot run this method.
    RunInterrupted: a stop was requested; the newest checkpoint resumes it.

  Example:
    >>> results = run(config, scenario, print, time.perf_counter())
    ... # doctest: +SKIP
  """
  if config.method not in config_lib.CLNP_METHODS:
    raise ConfigError(f"clnp_runner runs {config_lib.CLNP_METHODS}, not "
                      f"{config.method!r}.")
  _check_setup(config, scenario)
  progress = loop._Progress(log_fn)  # pylint: disable=protected-access
  log_fn = progress.log
  runner = _Runner(config, scenario, log_fn)
  if compiles is not None:
    runner.compiles = compiles
  method, num_tasks = config.method, runner.num_tasks
  rng, init_rng = jax.random.split(jax.random.key(config.seed))
  params = runner.init_params(init_rng)

  specs, used, used_history, diagnostics = None, None, [], []
  reg = None
  if method == "clnp":
    specs = layer_specs(config.model, params)
    used = clnp_lib.init_used(params, specs)
  elif method == "ewc":
    # One merged slot (regularizers.merge_fisher_slot): the penalty of
    # every finished task at the cost of one, whatever the task count.
    reg = regularizers.EwcState(*(jax.tree.map(
        lambda p: jnp.zeros((1,) + p.shape, jnp.float32), params)
                                  for _ in range(2)))
    fisher_fn = make_fisher(runner.model, runner.spec)
  elif method == "si":
    reg = regularizers.si_init(params)
  opt_state = runner.tx.init(params)
  if method == "clnp":
    # The saved state holds task masks; the structure must match it.
    opt_state = clnp_lib.set_partition(
        opt_state, clnp_lib.compute_partition(params, specs, used, task=0))
  state = RunState(params, opt_state, reg, rng)

  acc_class = np.zeros((num_tasks, num_tasks))
  acc_task = np.zeros((num_tasks, num_tasks))
  task_times, task_params, stopped = [], [], None
  first_task = 0
  # Where the newest checkpoint of this run stands (None: nothing saved).
  saved_where = None
  if checkpoints is not None and checkpoints.exists():
    meta = checkpoints.read_meta()
    checkpoint_lib.check_config(meta["config"], config_lib.to_dict(config),
                                checkpoints.directory)
    done = meta["task"]
    like = _saved_tree(state, used, [used] * done if method == "clnp" else [],
                       [params] * done if method == "single_task" else [])
    tree, meta = checkpoints.restore(like)
    state = tree["train"]
    if method == "clnp":
      used = _host_used(tree["used"])
      used_history = [_host_used(u) for u in tree["used_history"]]
    task_params = list(tree["task_params"])
    acc_class = np.asarray(meta["acc_class"], np.float64)
    acc_task = np.asarray(meta["acc_task"], np.float64)
    task_times = list(meta["task_times"])
    diagnostics = list(meta["diagnostics"])
    runner.steps_done = meta["steps_done"]
    progress.steps_done, progress.logged = meta["steps_done"], meta["logged"]
    print(f"resuming from {checkpoints.last_saved} ({meta['where']})",
          flush=True)
    first_task, saved_where = done, meta["where"]

  def save_checkpoint(t: int) -> None:
    nonlocal saved_where
    where = f"the end of task {t + 1} of {num_tasks}"
    progress.steps_done = runner.steps_done
    meta = {"task": t + 1, "in_task": False,
            "config": config_lib.to_dict(config), "where": where,
            "acc_class": acc_class.tolist(), "acc_task": acc_task.tolist(),
            "task_times": task_times, "diagnostics": diagnostics,
            "steps_done": progress.steps_done, "logged": progress.logged}
    checkpoint_lib.check_finite_tree(state.params, where, checkpoints)
    checkpoints.save(_saved_tree(state, used, used_history, task_params),
                     meta)
    saved_where = where

  def check_stop() -> None:
    # Task-level resume: only a finished task's checkpoint can be resumed,
    # so a mid-task stop waits for the first task's save.
    if checkpoints.stop_requested and saved_where is not None:
      raise checkpoints.interrupted(saved_where)

  if checkpoints is not None:
    runner.after_chunk = check_stop

  for t in range(first_task, num_tasks):
    task_start = time.perf_counter()
    if method == "single_task" and t > 0:
      rng, init_rng = jax.random.split(state.rng)
      state = state._replace(params=runner.init_params(init_rng), rng=rng)
    opt_state = runner.tx.init(state.params)
    partition = None
    if method == "clnp":
      try:
        partition = clnp_lib.compute_partition(state.params, specs, used,
                                               task=t)
      except clnp_lib.NoFreeUnitsError as err:
        stopped = f"stopped before task {t + 1} of {num_tasks}: {err}"
        log_fn({"event": "stopped", "task": t, "message": stopped})
        break
      opt_state = clnp_lib.set_partition(opt_state, partition)
    state = state._replace(opt_state=opt_state)
    state = runner.train_epochs(state, t, config.epochs)

    if method == "clnp":
      state, used, _, diag = _clnp_task(runner, state, t, specs, used,
                                        partition)
      used_history.append(used)
      diagnostics.append(diag)
    elif method == "ewc" and t + 1 < num_tasks:
      # After the last task nothing would read the consolidated state.
      state = _ewc_consolidate(runner, state, fisher_fn, t)
    elif method == "si" and t + 1 < num_tasks:
      state = state._replace(reg=regularizers.si_consolidate(
          state.reg, state.params, config.si_xi))
    if method == "single_task":
      task_params.append(state.params)

    seen = runner.class_masks[:t + 1].any(0)
    for j in range(num_tasks):
      params_j = _eval_params(config, state.params, task_params,
                              used_history, specs, j)
      acc_class[t, j], acc_task[t, j] = runner.accuracy(params_j, j, "test",
                                                        seen)
    task_times.append(time.perf_counter() - task_start)
    log_fn({"event": "eval", "task": t,
            "class_il": acc_class[t, :t + 1].tolist(),
            "task_il": acc_task[t, :t + 1].tolist(),
            "task_time_s": task_times[-1]})
    if checkpoints is not None:
      save_checkpoint(t)
      if checkpoints.stop_requested:
        raise checkpoints.interrupted(saved_where)

  done = len(task_times)
  if done == 0:
    raise ConfigError(stopped or "no task was trained")
  results = _results(runner, acc_class[:done, :done], acc_task[:done, :done],
                     task_times, start_time)
  if method == "clnp":
    results["clnp"] = {
        "units": capacity_plot_data(used_history)["units"],
        "tasks": diagnostics,
    }
    results["capacity_plot_data"] = capacity_plot_data(used_history)
  if stopped:
    results["stopped_early"] = stopped
  return results


def _saved_tree(state: RunState, used, used_history: Sequence[Any],
                task_params: Sequence[PyTree]) -> dict[str, Any]:
  """The arrays of a CLNP-family checkpoint (lists sized by tasks done)."""
  return {"train": state, "used": used, "used_history": list(used_history),
          "task_params": list(task_params)}


def _host_used(used: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """A restored ``used`` dict back as host bool arrays."""
  return {k: np.asarray(v, bool) for k, v in used.items()}


def _ewc_consolidate(runner: _Runner, state: RunState, fisher_fn,
                     task: int) -> RunState:
  """Merges the task's Fisher and parameters into the EWC slot."""
  train = runner.scenario.tasks[task].train_indices
  n = min(_FISHER_EXAMPLES, len(train))
  rows = np.random.default_rng((runner.config.seed, task)).choice(
      train, n, replace=False)
  length = min(_FISHER_EXAMPLES, runner.arrays.train_len)
  fisher = fisher_fn(state.params, runner.device_data,
                     jnp.asarray(loop._pad(rows, length)),  # pylint: disable=protected-access
                     jnp.int32(n), jnp.int32(task),
                     jnp.asarray(runner.class_masks[task]))
  reg = regularizers.ewc_consolidate(state.reg, state.params, fisher,
                                     merged=True)
  return state._replace(reg=reg)


def _eval_params(config: RunConfig, params: PyTree,
                 task_params: Sequence[PyTree], used_history, specs,
                 task: int) -> PyTree:
  """The parameters that answer for ``task`` after the latest task."""
  if config.method == "single_task" and task < len(task_params):
    return task_params[task]
  if (config.method == "clnp" and config.head == "shared"
      and task < len(used_history)):
    last = [s.name for s in specs if s.role == "hidden"][-1]
    gate = clnp_lib.single_head_gate(used_history, task, last)
    return gate_shared_head(params, np.asarray(gate))
  return params
