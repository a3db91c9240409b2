"""The one train step of every method, its fused chunks, and evaluation.

Every step reads its batch from device-resident uint8 images by index, so a
run transfers data to the device once and no Python runs per step: a whole
chunk of steps is one ``lax.scan`` call. Shapes never depend on the task or
epoch, which keeps a run at one compilation per function.

What differs between methods is in their :class:`~sparcl_jax.methods.base.
StepHooks`: the classes the stream loss covers, the term added to it (a
replay loss, a penalty) and what follows the update (a buffer insertion,
DDR's statistics, SI's path integral).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from sparcl_jax import losses
from sparcl_jax.control_flow import run_if
from sparcl_jax.data import pipeline
from sparcl_jax.sparse.grouped_tdm import sparsity_variables
from sparcl_jax.methods.base import StepBatch, StepHooks
from sparcl_jax.training import sharding as sharding_lib

PyTree = Any


class TrainState(NamedTuple):
  """Everything a run carries from step to step.

  Attributes:
    params: model parameters.
    batch_stats: batch-norm statistics ({} for models without them).
    opt_state: optimizer state (SparCL's masks, CLNP's partition).
    method_state: what the method carries (its ``StepHooks.init_state``):
      the rehearsal buffer and DDR statistics, EWC's or SI's regulariser
      state, or None.
    rng: PRNG key, split every step.
  """

  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  method_state: Any
  rng: jax.Array


class InputSpec(NamedTuple):
  """Static facts about inputs that the steps are specialised on."""

  image_shape: tuple[int, int, int]
  permuted: bool
  augment: bool
  mean: tuple[float, ...]
  std: tuple[float, ...]


class StepFacts(NamedTuple):
  """Per-call facts of a training chunk (all traced, so no recompiles)."""

  task_id: jax.Array
  epoch: jax.Array
  first_step: jax.Array
  num_steps: jax.Array
  task_class_mask: jax.Array
  seen_class_mask: jax.Array


def prepare_inputs(rng: Optional[jax.Array], x: jax.Array,
                   spec: InputSpec) -> jax.Array:
  """Train-time augmentation (when ``rng`` is given) then normalisation.

  Args:
    rng: augmentation key, or None (evaluation).
    x: float32 [B, H, W, C] in [0, 1].
    spec: the run's input facts.

  Returns:
    The model's inputs.

  Examples:
    >>> spec = InputSpec((1, 1, 1), False, False, (0.5,), (0.5,))
    >>> prepare_inputs(None, jnp.ones((1, 1, 1, 1)), spec).ravel()
    Array([1.], dtype=float32)
  """
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

  Examples:
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

  Examples:
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

  # The event variant passes no mask flags: it is the optimizer's default,
  # exact at every step.
  # The loop builds its chains and orders its steps itself: TDM's usage
  # checks (two reductions a step) are left out.
  return [variant(mask_events=False, record_grads=not events.record_last,
                  check_usage=False),
          variant(mask_events=False, check_usage=False),
          variant(check_usage=False)]


def make_train_step(model, tx: optax.GradientTransformationExtraArgs,
                    hooks: StepHooks, inputs: InputSpec,
                    batch_sharding=None) -> Callable:
  """Builds the reference train step of every method (not jitted).

  The step, top to bottom: split the PRNG key into eight; gather the batch
  at ``positions`` and augment it; let the method draw what its loss term
  needs (replay batches); take the gradient of the stream cross-entropy
  plus the method's term (one backward pass, or two when the method keeps
  the stream gradient apart, as SI does); let the optimizer update the
  parameters; let the method follow the update (buffer, DDR, path
  integral). :func:`make_train_chunk` fuses many of these steps into one
  call and swaps in a cheaper, exact optimizer update on steps where no
  mask can change.

  Args:
    model: Flax module.
    tx: optimizer; receives ``epoch`` and ``step_in_epoch`` as extra args.
    hooks: the method's step hooks (``Method.step_hooks``).
    inputs: static input description.
    batch_sharding: for data-parallel runs, the sharding that splits a batch
      over the mesh; None: one device.

  Returns:
    ``step(state, data, positions, facts, step_in_epoch, update=None) ->
    (state, loss)``; ``data`` is ``(device_data, example_index,
    example_task)``, ``positions`` the batch's positions into the example
    arrays. ``update(grads, epoch, step_in_epoch)`` returns a function
    ``(params, opt_state) -> (params, opt_state)``; None calls ``tx.update``
    as built. The loss is what ``hooks.reported_loss`` makes of the stream
    loss and the term.

  Examples:
    >>> step = make_train_step(model, tx, hooks, spec)  # doctest: +SKIP
  """
  plain_update = _update_variants(tx, MaskEvents())[2]
  prepare = lambda rng, x: prepare_inputs(rng, x, inputs)

  def losses_fn(params, batch_stats, x, y, keys, state, drawn, facts):
    # Grouped sparse layers read their kept rows, which the optimizer owns.
    forward = make_forward(model, sparsity_variables(state.opt_state))
    logits, batch_stats = forward(params, batch_stats, x, keys[0], True)
    mask = hooks.stream_class_mask(facts)
    stream = losses.cross_entropy(
        logits if mask is None else losses.mask_logits(logits, mask), y)
    term, batch_stats = hooks.loss_term(
        forward, params, batch_stats, state.opt_state, state.method_state,
        drawn, keys[1:], facts)
    return stream, term, logits, batch_stats

  def total_loss(params, *args):
    stream, term, logits, batch_stats = losses_fn(params, *args)
    return stream + term, (hooks.reported_loss(stream, stream + term),
                           logits, batch_stats)

  def stream_loss(params, *args):
    stream, _, logits, batch_stats = losses_fn(params, *args)
    return stream, (stream, logits, batch_stats)

  def term_only(params, *args):
    return hooks.loss_term(None, params, *args)[0]

  def step(state: TrainState, data, positions, facts: StepFacts,
           step_in_epoch, update=None):
    device_data, ex_index, ex_task = data
    keys = jax.random.split(state.rng, 8)
    index, task = sharding_lib.constrain_batch(
        (ex_index[positions], ex_task[positions]), batch_sharding)
    x_raw, y = sharding_lib.constrain_batch(
        pipeline.gather_batch(device_data, index,
                              hooks.gather_task(facts, task), "train",
                              inputs.permuted), batch_sharding)
    x = prepare(keys[1], x_raw)
    drawn = hooks.draw(
        state.method_state, keys, facts, prepare,
        lambda tree: sharding_lib.constrain_batch(tree, batch_sharding))
    loss_keys = hooks.loss_keys(keys[2])
    args = (state.batch_stats, x, y, loss_keys, state, drawn, facts)
    task_grads = None
    if hooks.keeps_stream_gradient:
      (_, (loss, logits, batch_stats)), task_grads = jax.value_and_grad(
          stream_loss, has_aux=True)(state.params, *args)
      term_grads = jax.grad(term_only)(
          state.params, state.batch_stats, state.opt_state,
          state.method_state, drawn, loss_keys[1:], facts)
      grads = jax.tree.map(jnp.add, task_grads, term_grads)
    else:
      (_, (loss, logits, batch_stats)), grads = jax.value_and_grad(
          total_loss, has_aux=True)(state.params, *args)
    params, opt_state = (update or plain_update)(
        grads, facts.epoch, step_in_epoch)((state.params, state.opt_state))
    method_state = hooks.after_update(
        state.method_state, keys,
        StepBatch(x_raw, y, task, positions, logits), task_grads,
        state.params, params)
    return TrainState(params, batch_stats, opt_state, method_state,
                      keys[0]), loss

  return step


def make_train_chunk(model, tx: optax.GradientTransformationExtraArgs,
                     hooks: StepHooks, inputs: InputSpec, batch_size: int,
                     steps_per_call: int, batch_sharding=None,
                     mask_events: Optional[MaskEvents] = None,
                     jit: bool = True) -> Callable:
  """Builds the function that runs ``steps_per_call`` train steps.

  Args:
    model: Flax module.
    tx: optimizer; receives ``epoch`` and ``step_in_epoch`` as extra args
      (SparCL's transforms schedule mask updates on them).
    hooks: the method's step hooks.
    inputs: static input description.
    batch_size: stream batch size.
    steps_per_call: steps fused in one call; steps past ``num_steps`` are
      skipped, so one compiled function serves every epoch length.
    batch_sharding: for data-parallel runs, the sharding that splits a
      batch over the mesh (``sharding.batch_sharded``); each step's indices
      and gathered images are constrained to it. None: one device.
    mask_events: for TDM/DGM optimizers, when their masks may change (see
      :class:`MaskEvents`, ``optimizers.mask_events``); each step then runs
      the cheapest exact variant of the update. None: ``tx.update`` is
      called as is on every step.
    jit: return the function jitted (False: for ``jax.vmap`` over seeds,
      jitted by the caller).

  Returns:
    ``chunk(state, data, order, facts) -> (state, summed_loss)`` where
    ``data`` is ``(device_data, example_index, example_task)`` and
    ``order`` holds positions into the example arrays in this epoch's order.

  Examples:
    >>> chunk = make_train_chunk(model, tx, hooks, spec, 32, 100)
    ... # doctest: +SKIP
  """
  train_step = make_train_step(model, tx, hooks, inputs, batch_sharding)
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

  def one_step(state: TrainState, data, order, facts: StepFacts, k):
    positions = jax.lax.dynamic_slice(order, (k * batch_size,),
                                      (batch_size,))
    update = None
    if mask_events is not None:
      update = lambda g, e, s: fast_update(g, e, s, facts.num_steps)
    return train_step(state, data, positions, facts, facts.first_step + k,
                      update)

  def chunk(state: TrainState, data, order, facts: StepFacts):
    # The chunk's `order` is relative to the chunk's first step.
    order = jax.lax.dynamic_slice(
        jnp.pad(order, (0, steps_per_call * batch_size)),
        (facts.first_step * batch_size,), (steps_per_call * batch_size,))

    def body(carry, k):
      state, loss_sum = carry
      # A 0-or-1-trip loop rather than a cond: masks and partitions pass
      # through every step and a cond would copy them.
      state, loss = run_if(facts.first_step + k < facts.num_steps,
                           lambda c: one_step(c[0], data, order, facts, k),
                           (state, jnp.zeros((), jnp.float32)))
      return (state, loss_sum + loss), None

    (state, loss_sum), _ = jax.lax.scan(
        body, (state, jnp.zeros((), jnp.float32)),
        jnp.arange(steps_per_call))
    return state, loss_sum

  return jax.jit(chunk) if jit else chunk


def make_evaluate(model, inputs: InputSpec, eval_batch_size: int,
                  max_examples: int, jit: bool = True) -> Callable:
  """Builds the evaluation of one task's test (or validation) set.

  Args:
    model: Flax module.
    inputs: static input description.
    eval_batch_size: examples per evaluation batch.
    max_examples: padded length of every task's index array.
    jit: return it jitted (False: for ``jax.vmap`` over seeds).

  Returns:
    ``evaluate(params, batch_stats, device_data, split, index, count,
    task_id, seen_mask, task_mask, collections={})`` (``split`` static:
    "test" or "val"; ``collections`` as for :func:`make_forward`) giving
    ``(class_il_correct, task_il_correct)`` counts over the first ``count``
    entries of ``index``.

  Examples:
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
      x = prepare_inputs(None, x, inputs)
      logits, _ = forward(params, batch_stats, x, None, False)
      class_il = jnp.argmax(losses.mask_logits(logits, seen_mask), -1) == y
      task_il = jnp.argmax(losses.mask_logits(logits, task_mask), -1) == y
      totals = (totals[0] + jnp.sum(class_il & valid),
                totals[1] + jnp.sum(task_il & valid))
      return totals, None

    zero = jnp.zeros((), jnp.int32)
    totals, _ = jax.lax.scan(body, (zero, zero), jnp.arange(num_batches))
    return totals

  return jax.jit(evaluate, static_argnums=(3,)) if jit else evaluate
