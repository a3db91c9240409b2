"""The :class:`Method` interface and the optimizer pieces methods share.

A method object is stateless and hashable: the training loop holds it while
building its jitted functions, and calls its hooks while tracing. Each hook
has the default of plain fine-tuning, so a method overrides only what is
particular to it.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from sparcl_jax import losses
from sparcl_jax.methods import settings as settings_lib
from sparcl_jax.models import registry
from sparcl_jax.sparse import sparsity as sparsity_lib
from sparcl_jax.sparse.dgm import DGMSpec
from sparcl_jax.sparse.schedule import MaskSchedule

PyTree = Any
# Families: rehearsal/sparse methods and the task-incremental methods of the
# CLNP comparison. One loop trains both; a family decides how the seeds of a
# run share it (vmapped, or one after another) and which hooks it has.
REHEARSAL = "rehearsal"
TASK_LEVEL = "task_level"


class StepBatch(NamedTuple):
  """One train step's batch, as the method sees it after the update.

  Attributes:
    x_raw: the gathered inputs before augmentation and normalisation.
    y: their labels.
    task: each example's task.
    positions: their positions in the epoch's example arrays.
    logits: the model's stream logits before the update.
  """

  x_raw: jax.Array
  y: jax.Array
  task: jax.Array
  positions: jax.Array
  logits: jax.Array


class StepHooks:
  """What a method adds to the one train step (``training.steps``).

  The defaults are plain fine-tuning: the stream cross-entropy over every
  output, no further term, nothing carried between steps.

  Attributes:
    keeps_stream_gradient: the step takes the stream loss's gradient apart
      from the term's (two backward passes), for ``after_update``.
    replay_batch_size: examples a step draws per replay batch (0: none).

  Examples:
    >>> hooks = StepHooks()
    >>> hooks.init_state(None), hooks.reported_loss(1.0, 3.0)
    (None, 3.0)
  """

  keeps_stream_gradient = False
  replay_batch_size = 0

  def replays_in_task(self, task: int) -> bool:
    """Whether the steps of ``task`` may add a replay term (FLOPs count)."""
    del task
    return False

  def init_state(self, params: PyTree) -> Any:
    """What the method carries from step to step (``TrainState.method_state``)."""
    del params
    return None

  def stream_class_mask(self, facts) -> Optional[jax.Array]:
    """Classes the stream loss covers (None: every output)."""
    del facts
    return None

  def gather_task(self, facts, example_task: jax.Array) -> jax.Array:
    """The task a stream batch is gathered as (its permutation and label
    offset): each example's own, as replay and the joint bound mix tasks."""
    del facts
    return example_task

  def draw(self, method_state, keys, facts, prepare, constrain) -> Any:
    """What the loss term needs beyond the batch (replay batches), drawn
    outside the gradient. ``keys`` are the step's eight keys; ``prepare(key,
    x)`` augments and normalises; ``constrain(tree)`` shards a batch."""
    del method_state, keys, facts, prepare, constrain
    return None

  def loss_keys(self, key: jax.Array):
    """The keys of the loss's forward passes, the stream's first."""
    return (key,)

  def loss_term(self, forward, params, batch_stats, opt_state, method_state,
                drawn, keys, facts):
    """``(term, batch_stats)``: the term added to the stream loss."""
    del forward, params, opt_state, method_state, drawn, keys, facts
    return jnp.zeros((), jnp.float32), batch_stats

  def reported_loss(self, stream, total):
    """The loss a step reports, of the stream loss and the total."""
    del stream
    return total

  def after_update(self, method_state, keys, batch: StepBatch, stream_grads,
                   old_params, new_params) -> Any:
    """The method's state after a step's update."""
    del keys, batch, stream_grads, old_params, new_params
    return method_state


class Method:
  """What the training loop needs to know about one method.

  Subclasses set the class attributes and override the hooks that differ
  from plain fine-tuning (the defaults). ``config`` arguments are
  :class:`~sparcl_jax.training.config.RunConfig` objects.

  Attributes:
    name: the ``--method`` value.
    family: ``REHEARSAL`` or ``TASK_LEVEL``.
    order: position in listings (``--help``, error messages).
    replay_batches: buffer mini-batches the replay loss reads per step (0:
      no buffer). The FLOPs count charges this many forward and backward
      passes of the replay batch.
    joint: retrain from scratch on the union of the tasks so far at every
      task (the upper bound of the comparisons).
    settings: the frozen dataclass of the method's hyper-parameters
      (:mod:`sparcl_jax.methods.settings`): its fields are the flags the
      method reads. The default is the stream loss's, which the default
      ``stream_class_mask`` reads.
    weight_mask_part: the name results.json's ``parts`` gives the method's
      weight masks when a run masked its weights (SparCL's ``"TDM"``);
      empty where the masks are the method itself (SNIP, RigL).

  Examples:
    >>> class FineTuning(Method):
    ...   name = "fine_tuning"
    >>> FineTuning().uses_buffer, FineTuning().is_sparse(None)
    (False, False)
  """

  name: str = ""
  family: str = REHEARSAL
  order: int = 100
  replay_batches: int = 0
  joint: bool = False
  settings: type = settings_lib.StreamSettings
  weight_mask_part: str = ""

  def __repr__(self) -> str:
    return f"<method {self.name}>"

  @property
  def uses_buffer(self) -> bool:
    """Whether the method keeps a rehearsal buffer."""
    return self.replay_batches > 0

  @property
  def replay(self) -> str:
    """This method's name when it replays, else ``''``."""
    return self.name if self.uses_buffer else ""

  def is_sparse(self, config) -> bool:
    """Whether the weights are masked (the optimizer holds TDM masks)."""
    del config
    return False

  def uses_dgm(self, config) -> bool:
    """Whether gradients pass through dynamic gradient masking."""
    del config
    return False

  def tracks_forgetting(self, config) -> bool:
    """Whether per-example forgetting is recorded for data removal."""
    del config
    return False

  def inert_flags(self, config) -> tuple[str, ...]:
    """What the flags switch on that this run will not do, a line each.

    A flag that is set but changes nothing (a part whose settings leave it
    nothing to do) is said at the start of the run, not discovered in its
    results.

    Args:
      config: the run configuration.

    Returns:
      Warning lines, without the ``warning:`` prefix; none by default.
    """
    del config
    return ()

  def stream_class_mask(self, spec, task_mask: jax.Array,
                        seen_mask: jax.Array) -> Optional[jax.Array]:
    """Classes the stream loss is taken over (None: every output).

    Args:
      spec: the run's ``rehearsal_hooks.MethodSpec``.
      task_mask: [outputs] bool, the current task's classes.
      seen_mask: [outputs] bool, the classes of every task so far.

    Returns:
      A [outputs] bool mask, or None.
    """
    del seen_mask
    return task_mask if spec.current_task_logit_mask else None

  def replay_term(self, spec, forward: Callable, params: PyTree,
                  batch_stats: PyTree, batches, keys, seen_mask: jax.Array):
    """The replay loss of one step, added to the stream loss.

    Args:
      spec: the run's ``rehearsal_hooks.MethodSpec`` (``alpha``, ``beta``...).
      forward: ``forward(params, batch_stats, x, rng, train) -> (logits,
        batch_stats)``.
      params: model parameters.
      batch_stats: batch-norm statistics after the stream pass.
      batches: ``((x1, y1, z1), (x2, y2))`` sampled from the buffer, ``z1``
        the logits stored with ``x1``.
      keys: two PRNG keys, one per replay forward pass.
      seen_mask: [outputs] bool, the classes of every task so far.

    Returns:
      ``(term, batch_stats)``.
    """
    raise NotImplementedError(f"{self.name} has no replay loss")

  def make_optimizer(self, config, kept_rows: Optional[PyTree] = None
                     ) -> optax.GradientTransformationExtraArgs:
    """The optimizer: the base one, after DGM when the method uses it.

    Args:
      config: the run configuration.
      kept_rows: the model's ``'sparsity'`` collection, which a sparse
        method's grouped optimizer (``--mask_structure=grouped``) starts
        from; ignored otherwise.

    Returns:
      An optax transformation accepting the extra args ``epoch`` and
      ``step_in_epoch``.
    """
    del kept_rows
    base = optax.with_extra_args_support(base_optimizer(config))
    if self.uses_dgm(config):
      return optax.chain(gradient_masking(config), base)
    return base

  def initial_masks(self, config, params: PyTree,
                    first_batch_grads: Callable[[], PyTree]
                    ) -> Optional[PyTree]:
    """Masks to start from instead of TDM's magnitude masks (None: keep).

    Args:
      config: the run configuration.
      params: the initial parameters.
      first_batch_grads: returns the cross-entropy gradient of one batch of
        the first task at initialisation (computed only when called).

    Returns:
      A masks pytree, or None.
    """
    del config, params, first_batch_grads
    return None


def base_optimizer(config, learning_rate=None) -> optax.GradientTransformation:
  """SGD or Adam as ``--optimizer`` says, at ``--lr`` (or ``learning_rate``).

  Args:
    config: the run configuration.
    learning_rate: a rate or optax schedule instead of ``config.lr``.

  Returns:
    The optax optimizer.

  Examples:
    >>> from sparcl_jax.training.config import RunConfig
    >>> tx = base_optimizer(RunConfig(optimizer="adam", lr=1e-3))
  """
  lr = config.lr if learning_rate is None else learning_rate
  if config.optimizer == "adam":
    return optax.adam(lr)
  return optax.sgd(lr)


def sparse_filter(config) -> sparsity_lib.SparseFilter:
  """Which parameters are sparse: ``--sparse_layers`` or the model's own.

  Args:
    config: the run configuration.

  Returns:
    ``filter(path, leaf) -> bool``.

  Examples:
    >>> from sparcl_jax.training.config import RunConfig
    >>> sparse_filter(RunConfig())('hidden_0/kernel', jnp.ones((4, 4)))
    True
  """
  if config.sparse_layers:
    return sparsity_lib.filter_from_regex(config.sparse_layers)
  return registry.get(config.model).sparse_filter


def dgm_spec(config) -> DGMSpec:
  """SparCL's dynamic gradient masking as the run's flags configure it.

  Args:
    config: the run configuration.

  Returns:
    The ``DGMSpec`` that ``tdm(..., dgm=...)`` takes.

  Examples:
    >>> from sparcl_jax.training.config import RunConfig
    >>> spec = dgm_spec(RunConfig(gradient_sparsity=0.8, dgm_refresh=30))
    >>> spec.gradient_sparsity, spec.refresh_interval
    (0.8, 30)
  """
  return DGMSpec(config.gradient_sparsity, config.dgm_refresh,
                 sparse_filter=sparse_filter(config))


def gradient_masking(config) -> optax.GradientTransformationExtraArgs:
  """The DGM transform of :func:`dgm_spec`, for chaining on its own.

  Args:
    config: the run configuration.

  Returns:
    The DGM transformation.

  Examples:
    >>> from sparcl_jax.training.config import RunConfig
    >>> tx = gradient_masking(RunConfig(gradient_sparsity=0.8))
  """
  return dgm_spec(config).transform()


def mask_schedule(config, static: bool = False) -> MaskSchedule:
  """TDM's drop-and-grow schedule as the run's flags configure it.

  Args:
    config: the run configuration.
    static: masks fixed after the first task's start (SNIP).

  Returns:
    The schedule.

  Examples:
    >>> from sparcl_jax.training.config import RunConfig
    >>> mask_schedule(RunConfig(epochs=10)).epochs_per_task
    10
  """
  if static:
    return MaskSchedule(epochs_per_task=config.epochs, static=True)
  return MaskSchedule(
      update_interval=config.mask_update_interval,
      epochs_per_task=config.epochs,
      extra_growth=config.mask_extra_growth,
      swap_fraction=config.mask_swap_fraction)


def cross_entropy_over(logits: jax.Array, labels: jax.Array,
                       class_mask: Optional[jax.Array]) -> jax.Array:
  """Cross-entropy over the classes of ``class_mask`` (all when None).

  Args:
    logits: [B, C].
    labels: [B] int.
    class_mask: [C] bool or None.

  Returns:
    Scalar loss.

  Examples:
    >>> cross_entropy_over(jnp.zeros((1, 4)), jnp.array([0]),
    ...                    jnp.array([True, True, False, False]))  # log(2)
    Array(0.6931472, dtype=float32)
  """
  if class_mask is not None:
    logits = losses.mask_logits(logits, class_mask)
  return losses.cross_entropy(logits, labels)
