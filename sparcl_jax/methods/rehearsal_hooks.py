"""The step hooks of the rehearsal family: replay losses, buffer and DDR.

A rehearsal-family step adds the method's replay term (ER, DER, DER++,
ER-ACE: ``Method.replay_term``) to the stream loss, offers the stream batch
to the reservoir buffer after the update, and records which examples the
model got right for dynamic data removal (DDR).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from sparcl_jax import ddr as ddr_lib
from sparcl_jax.replay import buffer as replay_buffer
from sparcl_jax.replay import losses as replay_losses
from sparcl_jax.methods import get as get_method
from sparcl_jax.methods.base import Method, StepHooks, cross_entropy_over

PyTree = Any


class MethodSpec(NamedTuple):
  """Static description of a rehearsal method's loss.

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


class ReplayState(NamedTuple):
  """What a rehearsal-family run carries: its buffer and DDR statistics
  (each None when the method has none)."""

  buffer: Any
  ddr: Any


class RehearsalHooks(StepHooks):
  """Step hooks of a rehearsal-family method (see :class:`MethodSpec`).

  Examples:
    >>> hooks = RehearsalHooks(MethodSpec(replay="derpp", alpha=0.2,
    ...                                   beta=1.0, replay_batch_size=10))
    >>> hooks.rule.name
    'derpp'
  """

  def __init__(self, spec: MethodSpec):
    self.spec = spec
    self.rule = get_method(spec.replay) if spec.replay else Method()
    self.replay_batch_size = spec.replay_batch_size if spec.replay else 0

  def replays_in_task(self, task: int) -> bool:
    return bool(self.spec.replay) and (task > 0 or
                                       self.spec.replay_first_task)

  def init_state(self, params: PyTree) -> ReplayState:
    del params
    return ReplayState(None, None)

  def stream_class_mask(self, facts) -> Optional[jax.Array]:
    return self.rule.stream_class_mask(self.spec, facts.task_class_mask,
                                       facts.seen_class_mask)

  def draw(self, method_state, keys, facts, prepare, constrain):
    if not self.spec.replay:
      return None
    # The draws of replay_losses.derpp_loss and the others, made here
    # outside the gradient; loss_term adds the term under the same gate.
    n, buffer = self.spec.replay_batch_size, method_state.buffer
    first = replay_losses.draw_batch(buffer, (keys[3], keys[6]), n, prepare,
                                     constrain)
    bx2, by2, _ = replay_losses.draw_batch(buffer, (keys[4], keys[7]), n,
                                           prepare, constrain)
    batches = (first, (bx2, by2))
    do_replay = replay_buffer.buffer_ready(buffer, n)
    if not self.spec.replay_first_task:
      do_replay = jnp.logical_and(do_replay, facts.task_id > 0)
    return batches, do_replay

  def loss_keys(self, key):
    return tuple(jax.random.split(key, 3))

  def loss_term(self, forward, params, batch_stats, opt_state, method_state,
                drawn, keys, facts):
    del opt_state, method_state
    if not self.spec.replay:
      return jnp.zeros((), jnp.float32), batch_stats
    batches, do_replay = drawn

    def replay_terms(batch_stats):
      return self.rule.replay_term(self.spec, forward, params, batch_stats,
                                   batches, keys, facts.seen_class_mask)

    return replay_losses.replay_if_ready(do_replay, replay_terms, batch_stats)

  def after_update(self, method_state, keys, batch, stream_grads, old_params,
                   new_params):
    del stream_grads, old_params, new_params
    buffer, ddr = method_state
    if self.spec.replay:
      buffer = replay_buffer.reservoir_add(buffer, keys[5], batch.x_raw,
                                           batch.y, batch.logits, batch.task)
    if self.spec.track_forgetting:
      correct = jnp.argmax(batch.logits, axis=-1) == batch.y
      ddr = ddr_lib.ddr_update(ddr, batch.positions, correct,
                               jnp.ones_like(correct))
    return ReplayState(buffer, ddr)


class _Facts(NamedTuple):
  task_id: Any
  task_class_mask: Any
  seen_class_mask: Any


def rehearsal_loss(method: MethodSpec, forward: Callable, params: PyTree,
                   batch_stats: PyTree, x_stream: jax.Array,
                   y_stream: jax.Array, replay_batches, do_replay: jax.Array,
                   rng: jax.Array, task_class_mask: jax.Array,
                   seen_class_mask: Optional[jax.Array] = None):
  """The training loss of a rehearsal-family method on one step.

  The loss the runner's step takes, for users' own steps: the stream term is
  the cross-entropy of the stream batch over the classes the method's
  ``stream_class_mask`` hook chooses (every output, or the current task's
  with ``method.current_task_logit_mask``; ER-ACE always the current
  task's). When ``do_replay``, the method's ``replay_term`` is added: ER the
  cross-entropy of the first replay batch; DER ``alpha`` times the mean
  squared error between the first replay batch's logits and its stored
  logits; DER++ that plus ``beta`` times the cross-entropy of the second
  replay batch; ER-ACE the cross-entropy of the first replay batch over the
  classes seen so far. Batch-norm statistics pass through the stream, then
  the replay forward passes.

  Args:
    method: the static description (``replay`` names the registered method
      whose loss hooks are used; ``alpha``, ``beta``,
      ``current_task_logit_mask``).
    forward: ``forward(params, batch_stats, x, rng, train) -> (logits,
      batch_stats)`` (see ``training.steps.make_forward``).
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

  Examples:
    >>> forward = lambda p, bs, x, rng, train: (x @ p, bs)
    >>> loss, _ = rehearsal_loss(MethodSpec(), forward, jnp.zeros((2, 3)),
    ...                          {}, jnp.ones((1, 2)), jnp.array([0]), None,
    ...                          jnp.array(False), jax.random.key(0),
    ...                          jnp.ones(3, bool))
    >>> round(float(loss), 4)  # log(3): uniform over 3 classes
    1.0986
  """
  hooks = RehearsalHooks(method)
  if seen_class_mask is None:
    seen_class_mask = jnp.ones_like(task_class_mask)
  facts = _Facts(jnp.int32(0), task_class_mask, seen_class_mask)
  keys = hooks.loss_keys(rng)
  logits, batch_stats = forward(params, batch_stats, x_stream, keys[0], True)
  loss = cross_entropy_over(logits, y_stream, hooks.stream_class_mask(facts))
  term, batch_stats = hooks.loss_term(forward, params, batch_stats, None,
                                      None, (replay_batches, do_replay),
                                      keys[1:], facts)
  return loss + term, (logits, batch_stats)


def make_hooks(config) -> RehearsalHooks:
  """The step hooks a run configuration's rehearsal method trains with.

  Args:
    config: the run configuration.

  Returns:
    Its :class:`RehearsalHooks`.

  Examples:
    >>> from sparcl_jax.training.config import RunConfig
    >>> make_hooks(RunConfig(method="er")).spec.replay
    'er'
  """
  method = config.method_object
  return RehearsalHooks(MethodSpec(
      replay=method.replay,
      alpha=config.alpha,
      beta=config.beta,
      replay_batch_size=config.replay_batch_size,
      current_task_logit_mask=config.current_task_logit_mask,
      replay_first_task=config.replay_first_task,
      track_forgetting=method.tracks_forgetting(config)))
