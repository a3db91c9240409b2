"""CLNP's commit: a finished task claims its kept units, the cut ones go.

:func:`apply_cut` zeroes the outgoing weights of units a task does not keep
(what the pruning search evaluates); :func:`commit_task` also adds the kept
units to ``used`` and re-initialises the units still free.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# The cut zeroes entries of the same unit grid the partition masks, so both
# read it through the partition's package-internal helpers.
from sparcl_jax.clnp.partition import _grid, _input_rows, _out_units
from sparcl_jax.clnp.specs import (LayerSpec, PyTree, UsedUnits, _hidden,
                                   _leaf)
from sparcl_jax.errors import ConfigError
from sparcl_jax.paths import flatten_to_dict, map_with_paths


def _check_kept(used: UsedUnits, kept: UsedUnits) -> dict[str, np.ndarray]:
  new_used = {}
  for name, u in used.items():
    u = np.asarray(u, bool)
    k = np.asarray(kept.get(name, np.zeros_like(u)), bool)
    if k.shape != u.shape:
      raise ConfigError(f"kept units of {name!r} have shape {k.shape}, used "
                        f"has {u.shape}")
    new_used[name] = u | k
  return new_used


def _cut_masks(flat, specs, new_used, task) -> dict[str, np.ndarray]:
  """Kernel entries to zero once ``new_used`` is committed."""
  zero = {}
  for spec in specs:
    kshape = tuple(_leaf(flat, spec.kernel_path, spec).shape)
    rows = _input_rows(spec, new_used, kshape)
    if spec.role == "hidden":
      cols = _out_units(spec, new_used, kshape)
    elif spec.role == "shared_head" or spec.task == task:
      cols = np.ones(kshape[-1], bool)
    else:
      continue
    zero[spec.kernel_path] = _grid(~rows, cols, kshape)
  return zero


def apply_cut(params: PyTree,
              specs: Sequence[LayerSpec],
              used: UsedUnits,
              kept: UsedUnits,
              task: Optional[int] = None) -> PyTree:
  """Zeroes the outgoing weights of cut units (free and not kept).

  Cut units stop feeding this task's used/kept units and its head, which is
  how the network looks after :func:`commit_task` (without the re-init of free
  units, which cannot change this task's outputs). Use it inside the
  ``evaluate_fn`` of :func:`graceful_forgetting_search`.

  Args:
    params: the params pytree.
    specs: layer specs.
    used: units used before this task.
    kept: units this task keeps.
    task: the current task (selects its head among per-task heads).

  Returns:
    Params with the cut weights set to zero.

  Examples:
    >>> dense = lambda n_in, n_out: {'kernel': jnp.ones((n_in, n_out)),
    ...                              'bias': jnp.zeros(n_out)}
    >>> params = {'hidden_0': dense(3, 4), 'head_0': dense(4, 2),
    ...           'head_1': dense(4, 2)}
    >>> specs = sc.mlp_layer_specs(params)
    >>> used = {'hidden_0': np.array([True, True, False, False])}
    >>> kept = {'hidden_0': np.array([False, False, True, False])}
    >>> pruned = apply_cut(params, specs, used, kept, task=1)
    >>> pruned['head_1']['kernel'][:, 0].tolist()  # unit 3 is cut
    [1.0, 1.0, 1.0, 0.0]
  """
  new_used = _check_kept(used, kept)
  if any(s.role == "head" for s in specs) and task is None:
    raise ConfigError("apply_cut needs the task index with per-task heads")
  zero = _cut_masks(flatten_to_dict(params), specs, new_used, task)
  return map_with_paths(
      lambda path, p: jnp.where(zero[path], jnp.zeros_like(p), p)
      if path in zero else p, params)


def commit_task(params: PyTree,
                specs: Sequence[LayerSpec],
                used: UsedUnits,
                kept: UsedUnits,
                rng: jax.Array,
                init_fn: Callable[[jax.Array], PyTree],
                task: Optional[int] = None
                ) -> tuple[PyTree, dict[str, np.ndarray]]:
  """Freezes a finished task's kept units and prepares the free ones.

  Adds ``kept`` to ``used``, zeroes the new interference entries and the cut
  units' outgoing weights into this task's head (see :func:`apply_cut`), and
  re-initialises the incoming weights and biases of the units still free
  from ``init_fn(rng)``.

  Reference logits: take task ``t``'s reference outputs *after*
  ``commit_task(..., task=t)``, never before. The commit is the last change
  to what task ``t`` computes: it zeroes the cut units' outgoing weights,
  which moves ``t``'s logits by as much as the pruning search accepted.
  From then on task ``t`` reads only units it used, whose weights later
  tasks cannot move: training them through :func:`clnp_partition` (kept
  outermost, given ``params`` in ``update``, its masks set per task with
  :func:`compute_partition` and :func:`set_partition`) and committing them
  (which re-initialises only free units) leaves ``t``'s logits
  bit-identical, on the same inputs through the same jitted function. With a
  shared head, compute task ``t``'s logits through
  ``single_head_gate(history, t, ...)``.

  Params come as they are given: a Linen dict, or an ``nnx.State`` (e.g.
  ``nnx.state(model, nnx.Param)``) that goes back into the model with
  ``nnx.update(model, new_params)``; ``init_fn`` then gives a fresh
  state, e.g. ``lambda k: nnx.state(Net(nnx.Rngs(k)), nnx.Param)``.

  Args:
    params: params after training (and pruning) the task.
    specs: layer specs.
    used: units used before this task.
    kept: units this task keeps (from :func:`prune_by_threshold`).
    rng: PRNG key for the re-initialisation.
    init_fn: ``init_fn(rng) -> params`` giving freshly initialised params of
      the same layout, e.g. ``lambda k: model.init(k, x)['params']``
      (matched by parameter path, so an NNX state and its pure dict mix).
    task: index of the task being committed (needed with per-task heads).

  Returns:
    ``(new_params, new_used)``; ``new_params`` of the kind of ``params``.

  Examples:
    >>> dense = lambda n_in, n_out: {'kernel': jnp.ones((n_in, n_out)),
    ...                              'bias': jnp.zeros(n_out)}
    >>> params = {'hidden_0': dense(3, 4), 'head_0': dense(4, 2),
    ...           'head_1': dense(4, 2)}
    >>> specs = sc.mlp_layer_specs(params)
    >>> used = {'hidden_0': np.array([True, True, False, False])}
    >>> kept = {'hidden_0': np.array([False, False, True, False])}
    >>> init_fn = lambda k: jax.tree.map(jnp.zeros_like, params)
    >>> params, used = commit_task(params, specs, used, kept,
    ...                            jax.random.key(0), init_fn, task=1)
    >>> used['hidden_0'].tolist()
    [True, True, True, False]
    >>> params['hidden_0']['kernel'][0].tolist()  # free unit 3 re-initialised
    [1.0, 1.0, 1.0, 0.0]
  """
  new_used = _check_kept(used, kept)
  params = apply_cut(params, specs, used, kept, task)
  fresh = flatten_to_dict(init_fn(rng))
  flat = flatten_to_dict(params)
  reinit = {}
  for spec in _hidden(specs):
    kshape = tuple(_leaf(flat, spec.kernel_path, spec).shape)
    free = ~_out_units(spec, new_used, kshape)
    reinit[spec.kernel_path] = np.broadcast_to(free, kshape)
    if spec.bias_path is not None:
      reinit[spec.bias_path] = np.broadcast_to(
          free, _leaf(flat, spec.bias_path, spec).shape)

  def fn(path, p):
    if path not in reinit:
      return p
    f = fresh.get(path)
    if f is None or jnp.shape(f) != jnp.shape(p):
      raise ConfigError(f"init_fn gives no parameter of shape {jnp.shape(p)} "
                        f"at {path!r}")
    return jnp.where(reinit[path], jnp.asarray(f, p.dtype), p)

  return map_with_paths(fn, params), new_used
