"""EWC and SI quadratic regularisers (the CLNP paper's baselines).

Both are pure functions over parameter pytrees with small NamedTuple states,
so they can live inside a jitted train step:

* EWC (Kirkpatrick et al. 2017): ``lam / 2 * sum_t sum_i F_t,i (theta_i -
  theta*_t,i)^2`` with a diagonal Fisher ``F_t`` per consolidated task. The
  state stacks one Fisher and one anchor per task along a leading axis (the
  per-task sum, default) or keeps a single slot (``online=True``: ``F <-
  gamma * F + F_new`` anchored at the latest parameters, Schwarz et al. 2018).
* SI (Zenke et al. 2017): during a task, ``omega += -g * delta_theta`` per
  step; at the task end ``Omega += omega / (Delta^2 + xi)`` with ``Delta``
  the parameter change over the task; penalty ``c * sum Omega (theta -
  theta*)^2``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from sparcl_jax.errors import ConfigError

PyTree = Any

_FISHER_MODES = ("per_example", "per_batch")


def _check_nonneg(name: str, value) -> None:
  # Traced values cannot be checked; Python numbers are checked up front.
  if isinstance(value, (int, float)) and value < 0:
    raise ConfigError(f"{name} must be >= 0, got {value}")


def _sum_leaves(tree: PyTree) -> jax.Array:
  return sum((jnp.sum(x, dtype=jnp.float32) for x in jax.tree.leaves(tree)),
             jnp.zeros((), jnp.float32))


# ----------------------------------------------------------------------------
# EWC.


class EwcState(NamedTuple):
  """Consolidated tasks of EWC.

  Attributes:
    fisher: pytree like the params, each leaf ``[T, *shape]``: the diagonal
      Fisher of each consolidated task (``T == 1`` in online mode).
    anchor: pytree of the same shapes: the parameters each Fisher belongs to.
  """

  fisher: PyTree
  anchor: PyTree


def ewc_init(params: PyTree) -> EwcState:
  """Returns an EWC state with no task consolidated (penalty zero).

  Args:
    params: the params pytree (shapes and dtypes only).

  Returns:
    An :class:`EwcState` whose leaves have a leading axis of size 0.

  Examples:
    >>> params = {'w': jnp.ones(3)}
    >>> state = ewc_init(params)
    >>> state.fisher['w'].shape
    (0, 3)
  """
  empty = jax.tree.map(
      lambda p: jnp.zeros((0,) + jnp.shape(p), jnp.float32), params)
  return EwcState(empty, empty)


def squared_gradient_sum(per_example_grads: PyTree,
                         valid: Optional[jax.Array] = None) -> PyTree:
  """Sums squared per-example gradients over a batch, in float32.

  The kernel both empirical-Fisher estimates share:
  :func:`fisher_diagonal` (host loop) and the EWC runner's device-side
  scan.

  Args:
    per_example_grads: a pytree of ``[B, ...]`` gradients, one per example
      (e.g. from ``jax.vmap(jax.grad(...))``).
    valid: ``[B]`` bool, examples to count (None: all).

  Returns:
    A pytree of ``[...]`` sums.

  Examples:
    >>> g = {'w': jnp.array([[1.0, 2.0], [3.0, 0.0]])}
    >>> squared_gradient_sum(g)['w']
    Array([10.,  4.], dtype=float32)
    >>> squared_gradient_sum(g, jnp.array([True, False]))['w']
    Array([1., 4.], dtype=float32)
  """

  def one(g):
    g = jnp.square(g.astype(jnp.float32))
    if valid is not None:
      g = jnp.where(valid.reshape((-1,) + (1,) * (g.ndim - 1)), g, 0.0)
    return jnp.sum(g, axis=0)

  return jax.tree.map(one, per_example_grads)


def fisher_diagonal(log_likelihood_fn: Callable[[PyTree, Any, Any], jax.Array],
                    params: PyTree,
                    inputs: Any,
                    labels: Any,
                    *,
                    mode: str = "per_example",
                    batch_size: int = 64) -> PyTree:
  """Estimates the diagonal Fisher from squared log-likelihood gradients.

  ``'per_example'`` averages the squared gradient of each example's
  log-likelihood (the usual estimator); ``'per_batch'`` averages the squared
  gradient of each batch's mean log-likelihood, which is cheaper but shrinks
  the estimate by roughly the batch size. With the data's labels this is the
  empirical Fisher; pass labels sampled from the model for the true one.

  Args:
    log_likelihood_fn: ``f(params, x, y) -> scalar`` mean log-likelihood of
      the examples in ``x, y`` (e.g. ``-cross_entropy``).
    params: parameters at which to estimate.
    inputs: ``[N, ...]`` inputs.
    labels: ``[N, ...]`` labels.
    mode: ``'per_example'`` or ``'per_batch'``.
    batch_size: examples per vectorised chunk, or per batch in ``per_batch``
      mode (every batch weighs the same, the last one may be smaller).

  Returns:
    A float32 pytree like ``params``.

  Examples:
    >>> params = {'w': jnp.ones(3)}
    >>> ll = lambda p, x, y: -jnp.mean((x @ p['w'] - y) ** 2)
    >>> x_val, y_val = jnp.arange(12.).reshape(4, 3) / 10, jnp.zeros(4)
    >>> fisher = fisher_diagonal(ll, params, x_val, y_val, batch_size=2)
    >>> fisher['w'].shape, bool((fisher['w'] >= 0).all())
    ((3,), True)
  """
  if mode not in _FISHER_MODES:
    raise ConfigError(f"mode must be one of {_FISHER_MODES}, got {mode!r}")
  if batch_size < 1:
    raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
  n = int(jnp.shape(inputs)[0])
  if n == 0:
    raise ConfigError("fisher_diagonal needs at least one example")

  grad_fn = jax.grad(log_likelihood_fn)
  if mode == "per_example":
    one = lambda p, x, y: grad_fn(p, x[None], y[None])
    chunk = jax.jit(lambda p, x, y: squared_gradient_sum(
        jax.vmap(one, in_axes=(None, 0, 0))(p, x, y)))
  else:
    chunk = jax.jit(lambda p, x, y: jax.tree.map(
        lambda g: jnp.square(g.astype(jnp.float32)), grad_fn(p, x, y)))
  total, parts = None, 0
  for start in range(0, n, batch_size):
    sq = chunk(params, inputs[start:start + batch_size],
               labels[start:start + batch_size])
    total = sq if total is None else jax.tree.map(jnp.add, total, sq)
    parts += 1
  denom = n if mode == "per_example" else parts
  return jax.tree.map(lambda s: s / denom, total)


def merge_fisher_slot(fisher: jax.Array, anchor: jax.Array,
                      new_fisher: jax.Array, new_anchor: jax.Array
                      ) -> tuple[jax.Array, jax.Array]:
  """One EWC slot that carries two tasks' penalties: same gradient, half cost.

  ``F1 (p - a1)^2 + F2 (p - a2)^2 = (F1 + F2) (p - a)^2 + const`` with ``a``
  the Fisher-weighted mean ``(F1 a1 + F2 a2) / (F1 + F2)``, so the summed
  Fisher at the weighted anchor has the per-task penalty's gradient while
  the penalty reads one Fisher and one anchor per weight whatever the
  number of tasks. Where both Fishers are zero the anchor is ``new_anchor``
  (it carries no weight there).

  Args:
    fisher: the slot's Fisher (zeros for an empty slot).
    anchor: the slot's anchor.
    new_fisher: the finished task's diagonal Fisher.
    new_anchor: the parameters at the end of that task.

  Returns:
    ``(fisher, anchor)`` of the merged slot, float32.

  Examples:
    >>> f, a = merge_fisher_slot(jnp.zeros(2), jnp.zeros(2),
    ...                          jnp.array([1., 0.]), jnp.array([3., 4.]))
  """
  f_old = jnp.asarray(fisher, jnp.float32)
  f_new = jnp.asarray(new_fisher, jnp.float32)
  a_new = jnp.asarray(new_anchor, jnp.float32)
  total = f_old + f_new
  weighted = f_old * jnp.asarray(anchor, jnp.float32) + f_new * a_new
  safe = jnp.where(total > 0, total, 1.0)
  return total, jnp.where(total > 0, weighted / safe, a_new)


def ewc_consolidate(state: EwcState,
                    params: PyTree,
                    fisher: PyTree,
                    *,
                    online: bool = False,
                    gamma: float = 1.0,
                    merged: bool = False) -> EwcState:
  """Adds a finished task's Fisher and parameters to the EWC state.

  Args:
    state: the current state.
    params: parameters at the end of the task (the new anchor).
    fisher: that task's diagonal Fisher (:func:`fisher_diagonal`).
    online: keep one slot, ``F <- gamma * F + fisher`` anchored at ``params``,
      instead of one slot per task.
    gamma: decay of the old Fisher in online mode, in ``[0, 1]``.
    merged: keep one slot that sums the per-task penalties exactly up to a
      constant (:func:`merge_fisher_slot`): the same gradient as one slot
      per task, at a cost that does not grow with the tasks.

  Returns:
    The new state.

  Examples:
    >>> params = {'w': jnp.ones(3)}
    >>> fisher = {'w': jnp.array([1., 2., 0.])}
    >>> state = ewc_consolidate(ewc_init(params), params, fisher)
    >>> state.fisher['w'].shape
    (1, 3)
  """
  if isinstance(gamma, (int, float)) and not 0.0 <= gamma <= 1.0:
    raise ConfigError(f"gamma must be in [0, 1], got {gamma}")
  if online and merged:
    raise ConfigError("ewc_consolidate: choose online or merged, not both")
  new_f = jax.tree.map(lambda f: jnp.asarray(f, jnp.float32)[None], fisher)
  new_a = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32)[None], params)
  slots = jax.tree.leaves(state.fisher)[0].shape[0] if jax.tree.leaves(
      state.fisher) else 0
  if merged and slots:
    pairs = jax.tree.map(merge_fisher_slot, state.fisher, state.anchor,
                         new_f, new_a)
    first = lambda pair: isinstance(pair, tuple)
    return EwcState(jax.tree.map(lambda pair: pair[0], pairs, is_leaf=first),
                    jax.tree.map(lambda pair: pair[1], pairs, is_leaf=first))
  if online and slots:
    decayed = jax.tree.map(lambda old, f: gamma * old + f, state.fisher,
                           new_f)
    return EwcState(decayed, new_a)
  cat = lambda old, new: jnp.concatenate([old, new], axis=0)
  return EwcState(jax.tree.map(cat, state.fisher, new_f),
                  jax.tree.map(cat, state.anchor, new_a))


def ewc_penalty(params: PyTree, state: EwcState, lam: float) -> jax.Array:
  """EWC penalty ``lam / 2 * sum_t sum_i F_t,i (theta_i - theta*_t,i)^2``.

  Args:
    params: current parameters.
    state: the consolidated tasks.
    lam: regularisation strength ``lambda`` (>= 0).

  Returns:
    A float32 scalar (zero before any consolidation).

  Examples:
    >>> anchor = {'w': jnp.ones(3)}
    >>> fisher = {'w': jnp.array([1., 2., 0.])}
    >>> ewc_state = ewc_consolidate(ewc_init(anchor), anchor, fisher)
    >>> params = {'w': jnp.array([2., 1., 3.])}
    >>> round(float(ewc_penalty(params, ewc_state, lam=2.0)), 4)
    1.0
  """
  _check_nonneg("lam", lam)
  terms = jax.tree.map(lambda p, f, a: f * jnp.square(p[None] - a),
                       params, state.fisher, state.anchor)
  return 0.5 * lam * _sum_leaves(terms)


# ----------------------------------------------------------------------------
# SI.


class SiState(NamedTuple):
  """Synaptic-intelligence state.

  Attributes:
    omega: running path integral ``sum -g * delta_theta`` of the current task.
    importance: accumulated importance ``Omega`` of the finished tasks.
    anchor: parameters at the start of the current task, i.e. at the end of
      the previous one (``theta*`` of the penalty).
  """

  omega: PyTree
  importance: PyTree
  anchor: PyTree


def si_init(params: PyTree) -> SiState:
  """Returns the SI state before the first task.

  Args:
    params: the initial parameters.

  Returns:
    An :class:`SiState` with zero ``omega`` and ``importance``.

  Examples:
    >>> params = {'w': jnp.ones(3)}
    >>> si = si_init(params)
    >>> si.omega['w']
    Array([0., 0., 0.], dtype=float32)
  """
  zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
  anchor = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
  return SiState(zeros, zeros, anchor)


def si_accumulate(state: SiState, grads: PyTree, old_params: PyTree,
                  new_params: PyTree) -> SiState:
  """Adds one step's contribution ``-g * (new - old)`` to the path integral.

  Args:
    state: the current state.
    grads: the gradient used for the step; Zenke et al.'s code uses the task
      loss gradient without the SI penalty (?), which is what we suggest.
    old_params: parameters before the step.
    new_params: parameters after the step.

  Returns:
    The new state.

  Examples:
    >>> params = {'w': jnp.ones(3)}
    >>> si = si_init(params)
    >>> grads = {'w': jnp.array([1., -1., 0.])}
    >>> new_params = {'w': jnp.array([0.5, 1.5, 1.])}
    >>> si = si_accumulate(si, grads, params, new_params)
    >>> si.omega['w']
    Array([0.5, 0.5, 0. ], dtype=float32)
  """
  omega = jax.tree.map(
      lambda w, g, o, n: w - g.astype(jnp.float32) * (
          n.astype(jnp.float32) - o.astype(jnp.float32)),
      state.omega, grads, old_params, new_params)
  return state._replace(omega=omega)


def si_consolidate(state: SiState, params: PyTree,
                   xi: float = 1e-3) -> SiState:
  """Ends a task: ``Omega += omega / (Delta^2 + xi)``, then resets.

  Args:
    state: the state at the end of the task.
    params: the parameters at the end of the task.
    xi: damping ``xi > 0`` (Zenke et al.: 1e-3 on MNIST, 0.1 on CIFAR).

  Returns:
    The state for the next task: ``omega`` zero, anchor ``params``.

  Examples:
    >>> si = si_init({'w': jnp.ones(3)})
    >>> si = si._replace(omega={'w': jnp.array([0.5, 0.5, 0.])})
    >>> params = {'w': jnp.array([0.5, 1.5, 1.])}
    >>> si = si_consolidate(si, params, xi=0.1)
    >>> si.importance['w'].round(4)
    Array([1.4286, 1.4286, 0.    ], dtype=float32)
    >>> si.omega['w']
    Array([0., 0., 0.], dtype=float32)
  """
  if isinstance(xi, (int, float)) and xi <= 0:
    raise ConfigError(f"xi must be > 0, got {xi}")
  params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
  importance = jax.tree.map(
      lambda big, w, p, a: big + w / (jnp.square(p - a) + xi),
      state.importance, state.omega, params, state.anchor)
  zeros = jax.tree.map(jnp.zeros_like, state.omega)
  return SiState(zeros, importance, params)


def si_penalty(params: PyTree, state: SiState, c: float) -> jax.Array:
  """SI penalty ``c * sum_i Omega_i (theta_i - theta*_i)^2``.

  Args:
    params: current parameters.
    state: the SI state (its ``anchor`` is ``theta*``).
    c: regularisation strength (>= 0).

  Returns:
    A float32 scalar.

  Examples:
    >>> si = si_init({'w': jnp.zeros(2)})
    >>> si = si._replace(importance={'w': jnp.array([1., 0.])})
    >>> params = {'w': jnp.array([2., 5.])}
    >>> round(float(si_penalty(params, si, c=0.1)), 4)
    0.4
  """
  _check_nonneg("c", c)
  terms = jax.tree.map(lambda big, p, a: big * jnp.square(p - a),
                       state.importance, params, state.anchor)
  return c * _sum_leaves(terms)
