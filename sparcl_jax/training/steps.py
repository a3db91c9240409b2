"""Jitted train and evaluation steps, built once per scenario and method.

Every step reads its batch from device-resident uint8 images by index, so a
run transfers data to the device once and no Python runs per step: a whole
chunk of steps is one ``lax.scan`` call. Shapes never depend on the task or
epoch, which keeps a run at one compilation per function.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from sparcl_jax import methods
from sparcl_jax.methods.base import cross_entropy_over
from sparcl_jax.control_flow import run_if
from sparcl_jax.sparse.grouped_tdm import sparsity_variables
from sparcl_jax.rehearsal import buffer_ready
from sparcl_jax.data import pipeline
from sparcl_jax.training import losses
from sparcl_jax.training import sharding as sharding_lib

PyTree = Any


class TrainState(NamedTuple):
  """Everything a run carries from step to step.

  Attributes:
    params: model parameters.
    batch_stats: batch-norm statistics ({} for models without them).
    opt_state: optimizer state (holds SparCL's masks when TDM/DGM are on).
    buffer: the rehearsal buffer, or None.
    ddr: dynamic-data-removal statistics of the current task, or None.
    rng: PRNG key, split every step.
  """

  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  buffer: Any
  ddr: Any
  rng: jax.Array


class InputSpec(NamedTuple):
  """Static facts about inputs that the steps are specialised on."""

  image_shape: tuple[int, int, int]
  permuted: bool
  augment: bool
  mean: tuple[float, ...]
  std: tuple[float, ...]


class MethodSpec(NamedTuple):
  """Static description of a method's loss.

  Attributes:
    replay: '' (no buffer), or the name of the registered method whose
      replay loss the run uses ('er', 'der', 'derpp', 'er_ace'...; see
      :mod:`sparcl_jax.methods`).
    alpha: weight of the logit-matching replay term.
    beta: weight of the label replay term (DER++).
    replay_batch_size: examples drawn from the buffer per replay term.
    current_task_logit_mask: mask logits outside the current task's classes in
      the stream loss.
    replay_first_task: replay while training the first task too.
    track_forgetting: record per-example correctness for DDR.
  """

  replay: str = ""
  alpha: float = 0.0
  beta: float = 0.0
  replay_batch_size: int = 0
  current_task_logit_mask: bool = False
  replay_first_task: bool = False
  track_forgetting: bool = False


def _prepare(rng: Optional[jax.Array], x: jax.Array, spec: InputSpec
             ) -> jax.Array:
  """Train-time augmentation (when rng is given) then normalisation."""
  if rng is not None and spec.augment:
    x = pipeline.augment_batch(rng, x)
  return pipeline.normalize(x, spec.mean, spec.std)


def make_forward(model, collections: Optional[dict] = None) -> Callable:
  """Returns ``forward(params, batch_stats, x, rng, train)``.

  The returned function gives ``(logits, new_batch_stats)`` and hides whether
  the model has batch norm or dropout.

  Args:
    model: a Flax Linen module whose ``__call__(x, train)`` returns logits.
    collections: further read-only variable collections (the kept rows of
      grouped sparse layers, ``{'sparsity': ...}``), or None.

  Returns:
    The forward function.

  Example:
    >>> from sparcl_jax.models.mlp import MLP
    >>> model, x = MLP((8,), 3), jnp.ones((2, 4))
    >>> params = model.init(jax.random.key(0), x)['params']
    >>> forward = make_forward(model)
    >>> logits, stats = forward(params, {}, x, jax.random.key(1), train=True)
    >>> logits.shape, stats
    ((2, 3), {})
  """

  def forward(params, batch_stats, x, rng, train):
    variables = {"params": params, **(collections or {})}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    rngs = {"dropout": rng} if rng is not None else {}
    if train and batch_stats:
      logits, updates = model.apply(variables, x, train=True, rngs=rngs,
                                    mutable=["batch_stats"])
      return logits, updates["batch_stats"]
    return model.apply(variables, x, train=train, rngs=rngs), batch_stats

  return forward


class StepFacts(NamedTuple):
  """Per-call facts of a training chunk (all traced, so no recompiles)."""

  task_id: jax.Array
  epoch: jax.Array
  first_step: jax.Array
  num_steps: jax.Array
  task_class_mask: jax.Array
  seen_class_mask: Optional[jax.Array] = None


class MaskEvents(NamedTuple):
  """When a sparse optimizer may change its masks, for ``make_train_chunk``.

  Steps with ``step_in_epoch % every == 0`` (only step 0 when ``every`` is
  0) are *event* steps: the optimizer runs as built, with its conditionals
  (TDM's drop-and-grow, DGM's refresh). On every other step it is called with
  the static extra arg ``mask_events=False`` and runs without them, so the
  masking fuses with the weight update. With ``record_last``, only the last
  step of an epoch (and event steps) record TDM's last gradient
  (``record_grads=False`` elsewhere), which is exact because TDM reads it
  only at step 0 of an epoch.

  Attributes:
    every: step interval of the events within an epoch (DGM's refresh
      interval), or 0 for step 0 only.
    record_last: record the last gradient only where TDM can use it.

  Example:
    >>> MaskEvents(every=30).every
    30
  """

  every: int = 0
  record_last: bool = True


def _update_variants(tx: optax.GradientTransformationExtraArgs,
                     events: MaskEvents) -> list[Callable]:
  """``[plain, record, event]`` updates for ``make_train_chunk``.

  Each maps ``(grads, epoch, step_in_epoch)`` to a function
  ``(params, opt_state) -> (params, opt_state)``.
  """

  def variant(**flags):

    def update(grads, epoch, step_in_epoch):

      def apply(carry):
        params, opt_state = carry
        updates, opt_state = tx.update(grads, opt_state, params, epoch=epoch,
                                       step_in_epoch=step_in_epoch, **flags)
        return optax.apply_updates(params, updates), opt_state

      return apply

    return update

  # The event variant passes no flags: it is the optimizer's default, exact
  # at every step.
  return [variant(mask_events=False, record_grads=not events.record_last),
          variant(mask_events=False), variant()]


def _replay_rule(method: MethodSpec) -> methods.Method:
  """The method object whose loss hooks a run's steps call."""
  return methods.get(method.replay) if method.replay else methods.Method()


def rehearsal_loss(method: MethodSpec, forward: Callable, params: PyTree,
                   batch_stats: PyTree, x_stream: jax.Array,
                   y_stream: jax.Array, replay_batches, do_replay: jax.Array,
                   rng: jax.Array, task_class_mask: jax.Array,
                   seen_class_mask: Optional[jax.Array] = None):
  """The training loss of a rehearsal-family method on one step.

  The stream term is the cross-entropy of the stream batch over the classes
  the method's ``stream_class_mask`` hook chooses (every output, or the
  current task's with ``method.current_task_logit_mask``; ER-ACE always the
  current task's). When ``do_replay``, the method's ``replay_term`` is
  added: ER the cross-entropy of the first replay batch; DER ``alpha``
  times the mean squared error between the first replay batch's logits and
  its stored logits; DER++ that plus ``beta`` times the cross-entropy of the
  second replay batch; ER-ACE the cross-entropy of the first replay batch
  over the classes seen so far. Batch-norm statistics pass through the
  stream, then the replay forward passes.

  Args:
    method: the run's static description (``replay`` names the registered
      method whose loss hooks are used; ``alpha``, ``beta``,
      ``current_task_logit_mask``).
    forward: ``forward(params, batch_stats, x, rng, train) -> (logits,
      batch_stats)`` (see :func:`make_forward`).
    params: model parameters.
    batch_stats: batch-norm statistics ({} without batch norm).
    x_stream: stream inputs.
    y_stream: stream labels.
    replay_batches: ``((x1, y1, z1), (x2, y2))`` from the buffer (``z1`` the
      stored logits), or None without replay.
    do_replay: bool scalar: add the replay term.
    rng: PRNG key (dropout).
    task_class_mask: [num_outputs] bool, the current task's classes.
    seen_class_mask: [num_outputs] bool, the classes of every task so far
      (None: every output).

  Returns:
    ``(loss, (stream_logits, batch_stats))``; the logits are unmasked.

  Example:
    >>> forward = lambda p, bs, x, rng, train: (x @ p, bs)
    >>> loss, _ = rehearsal_loss(MethodSpec(), forward, jnp.zeros((2, 3)),
    ...                          {}, jnp.ones((1, 2)), jnp.array([0]), None,
    ...                          jnp.array(False), jax.random.key(0),
    ...                          jnp.ones(3, bool))
    >>> round(float(loss), 4)  # log(3): uniform over 3 classes
    1.0986
  """
  rule = _replay_rule(method)
  if seen_class_mask is None:
    seen_class_mask = jnp.ones_like(task_class_mask)
  k_stream, k_r1, k_r2 = jax.random.split(rng, 3)
  logits, batch_stats = forward(params, batch_stats, x_stream, k_stream, True)
  loss = cross_entropy_over(
      logits, y_stream,
      rule.stream_class_mask(method, task_class_mask, seen_class_mask))
  if not method.replay:
    return loss, (logits, batch_stats)

  def replay_terms(batch_stats):
    return rule.replay_term(method, forward, params, batch_stats,
                            replay_batches, (k_r1, k_r2), seen_class_mask)

  def no_replay(batch_stats):
    return jnp.zeros((), jnp.float32), batch_stats

  term, batch_stats = jax.lax.cond(do_replay, replay_terms, no_replay,
                                   batch_stats)
  return loss + term, (logits, batch_stats)


def make_train_step(model, tx: optax.GradientTransformationExtraArgs,
                    method: MethodSpec, inputs: InputSpec, buffer_ops=None,
                    ddr_ops=None, batch_sharding=None) -> Callable:
  """Builds the reference train step of the rehearsal family (not jitted).

  The step, top to bottom: split the PRNG key; gather the stream batch at
  ``positions`` and augment it; draw two replay batches from the buffer;
  take the method's loss and its gradient (:func:`rehearsal_loss`); let the
  optimizer update the parameters; offer the stream batch to the buffer;
  record which examples the model got right (DDR). :func:`make_train_chunk`
  fuses many of these steps into one call and swaps in a cheaper, exact
  optimizer update on steps where no mask can change.

  Args:
    model: Flax module.
    tx: optimizer; receives ``epoch`` and ``step_in_epoch`` as extra args.
    method: static loss description.
    inputs: static input description.
    buffer_ops: object with ``reservoir_add`` and ``buffer_sample`` (the
      rehearsal buffer functions), needed when ``method.replay``.
    ddr_ops: object with ``ddr_update``, needed when
      ``method.track_forgetting``.
    batch_sharding: for data-parallel runs, the sharding that splits a batch
      over the mesh; None: one device.

  Returns:
    ``step(state, data, positions, facts, step_in_epoch, update=None) ->
    (state, loss)``; ``data`` is ``(device_data, example_index,
    example_task)``, ``positions`` the batch's positions into the example
    arrays. ``update(grads, epoch, step_in_epoch)`` returns a function
    ``(params, opt_state) -> (params, opt_state)``; None calls ``tx.update``
    as built.

  Example:
    >>> step = make_train_step(model, tx, MethodSpec(), spec)
    ... # doctest: +SKIP
  """
  plain_update = _update_variants(tx, MaskEvents())[2]

  def grad_fn(opt_state, *args):
    # Grouped sparse layers read their kept rows, which the optimizer owns.
    forward = make_forward(model, sparsity_variables(opt_state))

    def loss_fn(params, batch_stats, x, y, replay_batches, do_replay, rng,
                facts):
      return rehearsal_loss(method, forward, params, batch_stats, x, y,
                            replay_batches, do_replay, rng,
                            facts.task_class_mask, facts.seen_class_mask)

    return jax.value_and_grad(loss_fn, has_aux=True)(*args)

  def step(state: TrainState, data, positions, facts: StepFacts,
           step_in_epoch, update=None):
    device_data, ex_index, ex_task = data
    rng, k_aug, k_loss, k_buf1, k_buf2, k_buf_add, k_raug1, k_raug2 = (
        jax.random.split(state.rng, 8))
    index, task = sharding_lib.constrain_batch(
        (ex_index[positions], ex_task[positions]), batch_sharding)
    x_raw, y = sharding_lib.constrain_batch(
        pipeline.gather_batch(device_data, index, task, "train",
                              inputs.permuted), batch_sharding)
    x = _prepare(k_aug, x_raw, inputs)

    replay_batches, do_replay = None, jnp.asarray(False)
    if method.replay:
      n = method.replay_batch_size
      bx1, by1, bz1, _ = sharding_lib.constrain_batch(
          buffer_ops.buffer_sample(state.buffer, k_buf1, n), batch_sharding)
      bx2, by2, _, _ = sharding_lib.constrain_batch(
          buffer_ops.buffer_sample(state.buffer, k_buf2, n), batch_sharding)
      replay_batches = ((_prepare(k_raug1, bx1, inputs), by1, bz1),
                        (_prepare(k_raug2, bx2, inputs), by2))
      do_replay = buffer_ready(state.buffer, n)
      if not method.replay_first_task:
        do_replay = jnp.logical_and(do_replay, facts.task_id > 0)

    (loss, (logits, batch_stats)), grads = grad_fn(
        state.opt_state, state.params, state.batch_stats, x, y, replay_batches, do_replay,
        k_loss, facts)
    params, opt_state = (update or plain_update)(
        grads, facts.epoch, step_in_epoch)((state.params, state.opt_state))

    buffer = state.buffer
    if method.replay:
      buffer = buffer_ops.reservoir_add(buffer, k_buf_add, x_raw, y, logits,
                                        task)
    ddr = state.ddr
    if method.track_forgetting:
      correct = jnp.argmax(logits, axis=-1) == y
      ddr = ddr_ops.ddr_update(ddr, positions, correct,
                               jnp.ones_like(correct))
    return TrainState(params, batch_stats, opt_state, buffer, ddr, rng), loss

  return step


def make_train_chunk(model, tx: optax.GradientTransformationExtraArgs,
                     method: MethodSpec, inputs: InputSpec, batch_size: int,
                     steps_per_call: int, buffer_ops=None, ddr_ops=None,
                     batch_sharding=None,
                     mask_events: Optional[MaskEvents] = None) -> Callable:
  """Builds the jitted function that runs ``steps_per_call`` train steps.

  Args:
    model: Flax module.
    tx: optimizer; receives ``epoch`` and ``step_in_epoch`` as extra args
      (SparCL's transforms schedule mask updates on them).
    method: static loss description.
    inputs: static input description.
    batch_size: stream batch size.
    steps_per_call: steps fused in one call; steps past ``num_steps`` are
      skipped, so one compiled function serves every epoch length.
    buffer_ops: module-like object with ``reservoir_add`` and
      ``buffer_sample`` (the rehearsal buffer functions), needed when
      ``method.replay``.
    ddr_ops: object with ``ddr_update`` for forgetting statistics, needed when
      ``method.track_forgetting``.
    batch_sharding: for data-parallel runs, the sharding that splits a
      batch over the mesh (``sharding.batch_sharded``); each step's indices
      and gathered images are constrained to it. None: one device.
    mask_events: for TDM/DGM optimizers, when their masks may change (see
      :class:`MaskEvents`, ``optimizers.mask_events``); each step then picks
      the cheapest exact variant of the update with a ``lax.switch``. None:
      ``tx.update`` is called as is on every step.

  Returns:
    ``chunk(state, data, order, facts) -> (state, summed_loss)`` where
    ``data`` is ``(device_data, example_index, example_task)`` and ``order`` holds positions into the
    example arrays in this epoch's order.

  Example:
    >>> chunk = make_train_chunk(model, tx, MethodSpec(), spec, 32, 100)
    ... # doctest: +SKIP
  """
  train_step = make_train_step(model, tx, method, inputs, buffer_ops,
                               ddr_ops, batch_sharding)
  if mask_events is not None:
    update_variants = _update_variants(tx, mask_events)

  def fast_update(grads, epoch, step_in_epoch, num_steps):
    if mask_events.every:
      is_event = step_in_epoch % mask_events.every == 0
    else:
      is_event = step_in_epoch == 0
    is_last = step_in_epoch == num_steps - 1

    def apply(carry):
      # Exactly one variant runs; loops instead of a switch keep the masks
      # and the last gradient in place on the steps that do not change them.
      preds = (~is_event & ~is_last, ~is_event & is_last, is_event)
      for pred, variant in zip(preds, update_variants):
        carry = run_if(pred, variant(grads, epoch, step_in_epoch), carry)
      return carry

    return apply

  def one_step(state: TrainState, data, order, facts: StepFacts, step):
    positions = jax.lax.dynamic_slice(order, (step * batch_size,),
                                      (batch_size,))
    update = None
    if mask_events is not None:
      update = lambda g, e, s: fast_update(g, e, s, facts.num_steps)
    return train_step(state, data, positions, facts, facts.first_step + step,
                      update)

  def chunk(state: TrainState, data, order, facts: StepFacts):

    def body(carry, k):
      state, loss_sum = carry
      step = facts.first_step + k

      def run(carry):
        return one_step(carry[0], data, order, facts, k)

      state, loss = run_if(step < facts.num_steps, run,
                            (state, jnp.zeros((), jnp.float32)))
      return (state, loss_sum + loss), None

    (state, loss_sum), _ = jax.lax.scan(
        body, (state, jnp.zeros((), jnp.float32)),
        jnp.arange(steps_per_call))
    return state, loss_sum

  # The chunk's `order` is relative to the chunk's first step.
  def chunk_entry(state, data, order, facts):
    order = jax.lax.dynamic_slice(
        jnp.pad(order, (0, steps_per_call * batch_size)),
        (facts.first_step * batch_size,), (steps_per_call * batch_size,))
    return chunk(state, data, order, facts)

  return jax.jit(chunk_entry)


def make_epoch_order() -> Callable:
  """Returns :func:`sparcl_jax.data.pipeline.epoch_order`, jitted.

  ``order(rng, usable) -> (positions, count)``: the usable slots of
  ``usable`` first, in random order, and how many there are.

  Returns:
    The jitted function.

  Example:
    >>> positions, count = make_epoch_order()(jax.random.key(0),
    ...                                       jnp.array([True, False, True]))
    >>> int(count)
    2
  """
  return jax.jit(pipeline.epoch_order)


def make_evaluate(model, inputs: InputSpec, eval_batch_size: int,
                  max_examples: int) -> Callable:
  """Builds the jitted evaluation of one task's test (or validation) set.

  Args:
    model: Flax module.
    inputs: static input description.
    eval_batch_size: examples per evaluation batch.
    max_examples: padded length of every task's index array.

  Returns:
    ``evaluate(params, batch_stats, device_data, split, index, count,
    task_id, seen_mask, task_mask, collections={})`` (``split`` static:
    "test" or "val"; ``collections`` as for :func:`make_forward`) giving
    ``(class_il_correct, task_il_correct)`` counts over the first ``count``
    entries of ``index``.

  Example:
    >>> evaluate = make_evaluate(model, spec, 1000, 2000)  # doctest: +SKIP
  """
  num_batches = -(-max_examples // eval_batch_size)

  def evaluate(params, batch_stats, device_data, split, index, count, task_id,
               seen_mask, task_mask, collections=None):
    forward = make_forward(model, collections)
    padded = jnp.pad(index, (0, num_batches * eval_batch_size - index.shape[0]))
    batches = padded.reshape(num_batches, eval_batch_size)

    def body(totals, b):
      rows = batches[b]
      valid = b * eval_batch_size + jnp.arange(eval_batch_size) < count
      x, y = pipeline.gather_batch(device_data, rows, task_id, split,
                                   inputs.permuted)
      x = _prepare(None, x, inputs)
      logits, _ = forward(params, batch_stats, x, None, False)
      class_il = jnp.argmax(losses.mask_logits(logits, seen_mask), -1) == y
      task_il = jnp.argmax(losses.mask_logits(logits, task_mask), -1) == y
      totals = (totals[0] + jnp.sum(class_il & valid),
                totals[1] + jnp.sum(task_il & valid))
      return totals, None

    zero = jnp.zeros((), jnp.int32)
    totals, _ = jax.lax.scan(body, (zero, zero), jnp.arange(num_batches))
    return totals

  return jax.jit(evaluate, static_argnums=(3,))
