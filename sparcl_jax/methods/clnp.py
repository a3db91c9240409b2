"""CLNP (Golkar et al. 2019) as a task-level method.

Each task trains only the units earlier tasks left free (the optimizer is
wrapped in :func:`sparcl_jax.clnp.clnp_partition`, whose masks are traced
state, so every task reuses one compiled function) with ``--l1`` times the
L1 norm of the weights. After a task: unit activity on its validation
split, the graceful-forgetting search (optionally with fine-tuning), the
commit that freezes what the task kept, and diagnostics.

Examples:
  >>> from sparcl_jax import methods
  >>> methods.get("clnp").family
  'task_level'
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sparcl_jax import clnp as clnp_lib
from sparcl_jax.errors import ConfigError
from sparcl_jax.methods import register
from sparcl_jax.methods.settings import ClnpSettings
from sparcl_jax.methods.task_level import TaskLevelMethod
from sparcl_jax.models import registry

PyTree = Any
# Candidate activity quantiles of the graceful-forgetting search.
_QUANTILES = clnp_lib.DEFAULT_QUANTILES


@register
class Clnp(TaskLevelMethod):
  """CLNP: train the free units with an L1 penalty, prune by activity on
  held-out data, freeze what the task kept."""

  name = "clnp"
  order = 30
  settings = ClnpSettings

  def check(self, config, scenario) -> None:
    if min(len(t.val_indices) for t in scenario.tasks) == 0:
      raise ConfigError("--method=clnp prunes on held-out data: pass "
                        "--val_fraction > 0 (e.g. 0.1).")

  def wrap_optimizer(self, base):
    # The base optimizers are elementwise and restart every task, so the
    # partition masks only the final update: the same updates to rounding,
    # with less memory traffic per step.
    return clnp_lib.clnp_partition(base, mask_gradients=False)

  def penalty(self, config):
    # Unmasked: the partition zeroes the frozen entries' updates, and the
    # trainable entries' gradient is the same without a mask pass.
    return lambda p, opt, reg: config.l1 * clnp_lib.l1_penalty(p, None)

  def init_extras(self, runner, params):
    specs = layer_specs(runner.config.model, params)
    return {"specs": specs, "used": clnp_lib.init_used(params, specs),
            "used_history": [], "diagnostics": [], "partition": None}

  def saved_extras(self, extras):
    return {"used": extras["used"],
            "used_history": list(extras["used_history"])}

  def saved_extras_like(self, extras, params, tasks_done):
    return {"used": extras["used"],
            "used_history": [extras["used"]] * tasks_done}

  def restore_extras(self, extras, saved, meta):
    extras["used"] = _host_used(saved["used"])
    extras["used_history"] = [_host_used(u) for u in saved["used_history"]]
    extras["diagnostics"] = list(meta["diagnostics"])

  def extras_meta(self, extras):
    return {"diagnostics": extras["diagnostics"]}

  def start_task(self, runner, state, extras, task):
    state = super().start_task(runner, state, extras, task)
    self.resume_task(runner, state, extras, task)
    return state._replace(opt_state=clnp_lib.set_partition(
        state.opt_state, extras["partition"]))

  def resume_task(self, runner, state, extras, task):
    # Raises NoFreeUnitsError when a layer is full: the run stops there.
    extras["partition"] = clnp_lib.compute_partition(
        state.params, extras["specs"], extras["used"], task=task)

  def end_task(self, runner, state, extras, task):
    state, new_used, diag = _prune_and_commit(runner, state, extras, task)
    extras["used"] = new_used
    extras["used_history"].append(new_used)
    extras["diagnostics"].append(diag)
    return state

  def eval_params(self, runner, params, extras, task):
    history = extras["used_history"]
    if runner.config.head != "shared" or task >= len(history):
      return params
    last = [s.name for s in extras["specs"] if s.role == "hidden"][-1]
    gate = clnp_lib.single_head_gate(history, task, last)
    return gate_shared_head(params, np.asarray(gate))

  def results(self, extras):
    plot = clnp_lib.capacity_plot_data(extras["used_history"])
    return {"clnp": {"units": plot["units"],
                     "tasks": extras["diagnostics"]},
            "capacity_plot_data": plot}


def layer_specs(model_name: str,
                params: PyTree) -> tuple[clnp_lib.LayerSpec, ...]:
  """CLNP layer specs of a registered model, or a ConfigError.

  Args:
    model_name: a registered model that declares its CLNP layer specs
      (``'mlp'``, ``'zenke_cnn'``...).
    params: the model's params.

  Returns:
    The specs; at least one hidden (ReLU) layer.

  Raises:
    ConfigError: the model has no ReLU units CLNP can measure.

  Examples:
    >>> from sparcl_jax.models.mlp import MLP
    >>> variables = MLP((4,), 2).init(jax.random.key(0), jnp.zeros((1, 3)))
    >>> [s.name for s in layer_specs('mlp', variables['params'])]
    ['hidden_0', 'head']
  """
  specs_of = registry.get(model_name).clnp_layer_specs
  if specs_of is None:
    measurable = [n for n in registry.names()
                  if registry.get(n).clnp_layer_specs is not None]
    raise ConfigError(f"--method=clnp needs --model={' or '.join(measurable)}"
                      f", whose ReLU units it can measure; {model_name!r} is "
                      "not supported.")
  specs = specs_of(params)
  if not any(s.role == "hidden" for s in specs):
    raise ConfigError("--method=clnp needs a model with ReLU units to "
                      "measure; this one has none (give --hidden_sizes).")
  return specs


def gate_shared_head(params: PyTree, gate: np.ndarray) -> PyTree:
  """Zeroes the shared head's rows of units outside a task's gate.

  ``(h * gate) @ W + b == h @ (W * gate[:, None]) + b``, so gating the
  kernel lets the ordinary forward pass compute a task's gated logits.

  Args:
    params: params with a shared head at ``params['head']['kernel']``.
    gate: 0/1 per last-hidden unit (:func:`sparcl_jax.clnp.single_head_gate`).

  Returns:
    Params with the gated-off rows of the head kernel set to zero.

  Examples:
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


def _prune_and_commit(runner, state, extras: dict, task: int):
  """Prunes a trained task and commits it; returns its diagnostics."""
  config = runner.config
  specs, used, partition = (extras["specs"], extras["used"],
                            extras["partition"])
  params = state.params
  activity = {k: np.asarray(v, np.float64) for k, v in runner.activity(
      params, task, [s.name for s in specs if s.role == "hidden"]).items()}
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
    tuned = runner.train_epochs(
        state._replace(params=start, opt_state=opt, method_state=None,
                       rng=tune_rng),
        task,
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
  return state._replace(params=new_params, rng=rng), new_used, diag


def _host_used(used: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """A restored ``used`` dict back as host bool arrays."""
  return {k: np.asarray(v, bool) for k, v in used.items()}
