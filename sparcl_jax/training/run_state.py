"""A run's state before its first step, and its report.

The scenario and model a config names, the initial train state of a
rehearsal-family seed (weights, optimizer state with the initial masks),
the per-layer MACs and sparsities the FLOPs count uses, and the results
keys read off the final state.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparcl_jax import flops as flops_lib
from sparcl_jax.sparse import masks as masks_lib
from sparcl_jax.data import pipeline
from sparcl_jax.data import scenarios as scenarios_lib
from sparcl_jax.data import sources
from sparcl_jax.data.types import Scenario
from sparcl_jax.errors import ConfigError
from sparcl_jax.paths import find_states, flatten_with_paths
from sparcl_jax.sparse.dgm import DGMState
from sparcl_jax.sparse.grouped_tdm import dense_view, grouped_layers, tdm_rows
from sparcl_jax.methods.sparse import grouped_gradient_sparsity
from sparcl_jax.models import registry
from sparcl_jax.sparse.sparsity import keep_count
from sparcl_jax.sparse.tdm import tdm_masks
from sparcl_jax.training import accounting
from sparcl_jax import losses
from sparcl_jax.training import optimizers
from sparcl_jax.training import steps
from sparcl_jax.training.config import RunConfig


def check_sizes(config: RunConfig, scenario: Scenario) -> None:
  """Refuses a buffer or batch larger than the scenario's data.

  Args:
    config: the run configuration.
    scenario: the scenario it trains on.

  Raises:
    ConfigError: naming the flag to lower.

  Examples:
    >>> check_sizes(config, scenario)  # doctest: +SKIP
  """
  num_train = sum(len(t.train_indices) for t in scenario.tasks)
  if config.uses_buffer and config.buffer_size > num_train:
    raise ConfigError(f"--buffer_size={config.buffer_size} is larger than the "
                      f"{num_train} training examples of the scenario; lower "
                      "it.")
  min_task = min(len(t.train_indices) for t in scenario.tasks)
  if config.batch_size > min_task:
    raise ConfigError(f"--batch_size={config.batch_size} is larger than the "
                      f"smallest task ({min_task} examples); lower it.")

def parts_run(config: RunConfig, state: steps.TrainState,
              kept_per_epoch: list[list[int]],
              task_sizes: list[int]) -> list[str]:
  """The SparCL parts a run ran, read off what it did, not off its flags.

  ``TDM`` when the weights were masked by a method that names its masks so
  (``Method.weight_mask_part``); ``DGM`` when the optimizer state holds
  gradient masks that zero some entry (so not when DGM was dropped, e.g.
  ``--gradient_sparsity`` not above ``--sparsity``, or a grouped layer's
  share of 0); ``DDR`` when an epoch kept fewer examples of a task than the
  task has (so not when no ``--ddr_epochs`` epoch was reached).

  Args:
    config: the run configuration.
    state: the final train state (of one seed).
    kept_per_epoch: examples kept in each epoch of each task.
    task_sizes: each task's number of training examples.

  Returns:
    A sublist of ``["TDM", "DGM", "DDR"]``.

  Examples:
    >>> from sparcl_jax.training.config import RunConfig
    >>> params = {"hidden_0": {"kernel": jnp.ones((4, 4))}}
    >>> dense = steps.TrainState(params, {}, optax.sgd(0.1).init(params),
    ...                          None, None)
    >>> parts_run(RunConfig(method="derpp"), dense, [[10, 10]], [10])
    []
    >>> tx = sc.dgm(0.5)  # its masks zero half the gradient once updated
    >>> grads = {"hidden_0": {"kernel": jnp.arange(16.0).reshape(4, 4)}}
    >>> _, dgm_state = tx.update(grads, tx.init(params), params)
    >>> masked = dense._replace(opt_state=dgm_state)
    >>> parts_run(RunConfig(method="sparcl_derpp", tdm=False), masked,
    ...           [[10, 8]], [10])
    ['DGM', 'DDR']
  """
  parts = []
  if (config.method_object.weight_mask_part and
      _dense_weights_and_masks(config, state)[1] is not None):
    parts.append(config.method_object.weight_mask_part)
  gradient_masks = [
      mask for _, dgm_state in find_states(state.opt_state, DGMState)
      for mask in jax.tree.leaves(dgm_state.masks)]
  # numpy, not jnp: a jnp reduction here would compile after the last task.
  if any(not np.asarray(mask).all() for mask in gradient_masks):
    parts.append("DGM")
  if config.method_object.tracks_forgetting(config) and any(
      kept < size for epochs, size in zip(kept_per_epoch, task_sizes)
      for kept in epochs):
    parts.append("DDR")
  return parts


def final_keys(config: RunConfig, state: steps.TrainState,
               counter: accounting.FlopsCounter,
               kept_per_epoch: list[list[int]],
               task_sizes: list[int]) -> dict[str, Any]:
  """The results keys of a rehearsal-family run beyond ``RunRecord``'s.

  Args:
    config: the run configuration.
    state: the final train state (of one seed).
    counter: the run's FLOPs counter.
    kept_per_epoch: examples kept in each epoch of each task.
    task_sizes: each task's number of training examples.

  Returns:
    ``train_flops``, ``dense_train_flops``, ``train_examples``,
    ``data_kept_per_epoch``, ``parts`` (:func:`parts_run`), ``sparsity``
    and ``weights_zero_fraction``.

  Examples:
    >>> final_keys(config, state, counter, [[100]], [100])  # doctest: +SKIP
  """
  return {
      "parts": parts_run(config, state, kept_per_epoch, task_sizes),
      "train_flops": counter.train_flops,
      "dense_train_flops": counter.dense_train_flops,
      "train_examples": counter.examples,
      "data_kept_per_epoch": kept_per_epoch,
      "sparsity": _sparsity_report(config, state),
      "weights_zero_fraction": masks_lib.summarize_sparsity(
          _dense_weights_and_masks(config, state)[0])["sparsity"],
  }


def build_scenario(config: RunConfig, datasets=None) -> Scenario:
  """Loads the data a config names and cuts it into tasks.

  Args:
    config: a validated run configuration.
    datasets: ``load_datasets(config)`` when already loaded (several
      seeds' scenarios of one dataset); None loads them.

  Returns:
    The scenario.

  Raises:
    DataError: the data is missing or malformed.
    ConfigError: the scenario cannot be built from this data.

  Examples:
    >>> build_scenario(RunConfig(workdir="/tmp/x"))  # doctest: +SKIP
  """
  dataset, cifar100 = datasets or load_datasets(config)
  try:
    return scenarios_lib.build_scenario(
        config.scenario, dataset, config.resolved_num_tasks, config.seed,
        config.val_fraction, config.shuffle_classes, cifar100)
  except ConfigError as err:
    raise ConfigError(f"--scenario={config.scenario} "
                      f"--dataset={config.dataset}: {err}") from None


def load_datasets(config: RunConfig):
  """``(dataset, cifar100 or None)``: the datasets a config's scenario cuts.

  Args:
    config: a validated run configuration (``seed`` matters to the digits
      source only, whose train/test split it draws).

  Returns:
    The two datasets.

  Examples:
    >>> load_datasets(RunConfig(workdir="/tmp/x"))[1] is None
    True
  """
  data_dir = config.data_dir or None
  dataset = sources.load_dataset(config.dataset, config.data_source, data_dir,
                                 seed=config.seed, download=config.download)
  cifar100 = None
  if config.scenario == "cifar10_100":
    cifar100 = sources.load_dataset("cifar100", config.data_source, data_dir,
                                    seed=config.seed,
                                    download=config.download)
  return dataset, cifar100


def make_run_model(config: RunConfig, scenario: Scenario):
  """The Flax model ``config`` names, sized for ``scenario``.

  Args:
    config: the run configuration.
    scenario: gives the outputs and the task heads.

  Returns:
    The (uninitialised) module.

  Examples:
    >>> make_run_model(config, scenario)  # doctest: +SKIP
  """
  return registry.make_model(
      config.model, scenario.num_outputs, hidden_sizes=config.hidden_widths,
      nf=config.nf, head=config.head,
      head_sizes=[len(t.classes) for t in scenario.tasks],
      conv_gradients=config.conv_gradients,
      **(dict(group=config.group_size, sparsity=config.sparsity,
              kept_fan_in_init=config.sparse_init == "kept_fan_in")
         if config.grouped else {}))


def init_variables(model, spec: steps.InputSpec, key: jax.Array):
  """``(params, batch_stats, kept_rows)`` of a fresh model from ``key``.

  ``kept_rows`` is a grouped model's ``'sparsity'`` collection (None for
  others); the optimizer owns it.
  """
  variables = registry.init_model(model, key, (1,) + spec.image_shape)
  return (variables["params"], variables.get("batch_stats", {}),
          variables.get("sparsity"))


def initial_state(config: RunConfig, scenario: Scenario, model,
                  spec: steps.InputSpec, device_data: pipeline.DeviceData):
  """A run's state before its first step, from ``config.seed`` alone.

  Args:
    config: the run configuration (its ``seed`` seeds everything here).
    scenario: the run's scenario (SNIP's first batch comes from it).
    model: the run's model.
    spec: its input facts.
    device_data: the scenario's data on the device.

  Returns:
    ``(state, tx, kept_rows)``: the :class:`~steps.TrainState` (fresh
    weights, optimizer state with the initial masks, no method state yet),
    the optimizer and a grouped model's kept rows (else None).

  Examples:
    >>> state, tx, _ = initial_state(config, scenario, model, spec,
    ...                              data)  # doctest: +SKIP
  """
  rng, init_rng = jax.random.split(jax.random.key(config.seed))
  params, batch_stats, kept_rows = init_variables(model, spec, init_rng)
  tx = optimizers.make_optimizer(config, kept_rows=kept_rows)
  opt_state = tx.init(params)
  if config.is_sparse and not config.grouped:
    masks = config.method_object.initial_masks(
        config, params, lambda: _first_batch_grads(
            config, model, params, batch_stats, scenario, device_data, spec))
    if masks is not None:
      opt_state = opt_state._replace(masks=masks)
    start_masks = tdm_masks(opt_state)
    params = masks_lib.apply_mask(params, start_masks)
    if config.sparse_init == "kept_fan_in":
      params = masks_lib.scale_to_kept_fan_in(params, start_masks)
  return (steps.TrainState(params, batch_stats, opt_state, None, rng), tx,
          kept_rows)


def run_layer_macs(config: RunConfig, scenario: Scenario, model, params,
                batch_stats, kept_rows, spec: steps.InputSpec
                ) -> dict[str, int]:
  """Forward MACs per example of every kernel, as a run counts them.

  Traced from the model. A grouped model is counted as the dense model it
  stands for (its kernels' paths, their dense MACs); ``weight_sparsities``
  then discounts the rows it does not keep, exactly.

  Args:
    config: the run configuration.
    scenario: gives the outputs and task heads.
    model: the run's model.
    params: its parameters.
    batch_stats: its batch-norm statistics (``{}`` without).
    kept_rows: a grouped model's ``'sparsity'`` collection (else unused).
    spec: gives the input shape.

  Returns:
    ``{kernel path: MACs per example}``.

  Examples:
    >>> run_layer_macs(config, scenario, model, params, {}, None,
    ...                spec)  # doctest: +SKIP
  """
  if config.grouped:
    model = registry.make_model(
        config.model, scenario.num_outputs,
        hidden_sizes=config.hidden_widths, nf=config.nf, head=config.head,
        head_sizes=[len(t.classes) for t in scenario.tasks],
        conv_gradients=config.conv_gradients)
    params = dense_view(params, kept_rows)[0]
  return model_layer_macs(model, params, batch_stats, spec.image_shape)


def model_layer_macs(model, params, batch_stats, image_shape
                     ) -> dict[str, int]:
  """Forward MACs per example of every kernel of a Flax model, traced.

  Args:
    model: Flax module taking ``train=`` (e.g. ``registry.make_model``).
    params: its parameters.
    batch_stats: its batch-norm statistics (``{}`` without).
    image_shape: one example's shape.

  Returns:
    ``{kernel path: MACs per example}``.

  Examples:
    >>> from sparcl_jax.models.mlp import MLP
    >>> model = MLP((8,), 2)
    >>> v = model.init(jax.random.key(0), jnp.ones((1, 4)))
    >>> model_layer_macs(model, v["params"], {}, (4,))
    {'hidden_0/kernel': 32, 'head/kernel': 16}
  """

  def apply(p, x):
    variables = {"params": p}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    return model.apply(variables, x, train=False)

  x = jax.ShapeDtypeStruct((2,) + tuple(image_shape), jnp.float32)
  return flops_lib.layer_macs(apply, params, x, batch_size=2)


def _dense_weights_and_masks(config: RunConfig, state: steps.TrainState):
  """The run's weights as dense kernels, and its weight masks (None for
  dense methods)."""
  if config.grouped:
    return dense_view(state.params, tdm_rows(state.opt_state))
  if config.is_sparse:
    return state.params, tdm_masks(state.opt_state)
  return state.params, None


def weight_sparsities(config: RunConfig, state: steps.TrainState
                       ) -> dict[str, float]:
  """Current sparsity of each masked layer ({} for dense methods)."""
  masks = _dense_weights_and_masks(config, state)[1]
  if masks is None:
    return {}
  summary = masks_lib.summarize_sparsity(masks)
  return {path: layer["sparsity"] for path, layer in
          summary["layers"].items()}


def dgm_sparsities(config: RunConfig, params, kept_rows
                    ) -> dict[str, float]:
  """Gradient sparsity DGM gives each layer it masks ({} without DGM).

  For a grouped layer, the share of its dense kernel whose gradient the
  step computes and DGM keeps (exact counts).
  """
  if optimizers.gradient_masking(config) is None:
    return {}
  if config.grouped:
    share = grouped_gradient_sparsity(config)
    sparsities = {}
    for path, leaf in flatten_with_paths(params):
      if path.endswith("/values"):
        fan_in = grouped_layers(kept_rows)[path[:-len("/values")]]
        # [groups, *window, k, group]: the dense kernel has fan_in rows.
        dense_size = fan_in * (leaf.size // leaf.shape[-2])
        kept = keep_count(leaf.size, share)
        sparsities[path[:-len("values")] + "kernel"] = 1.0 - kept / dense_size
    return sparsities
  selected = masks_lib.masks_from_filter(params,
                                         optimizers.sparse_filter(config))
  return {path: config.gradient_sparsity for path, _ in
          flatten_with_paths(selected)}


def _sparsity_report(config: RunConfig, state: steps.TrainState) -> dict:
  """Per-layer and overall sparsity of the final weights and masks."""
  weights, masks = _dense_weights_and_masks(config, state)
  report = {"weights": masks_lib.summarize_sparsity(weights)}
  if masks is not None:
    report["masks"] = masks_lib.summarize_sparsity(masks)
  return report


def _first_batch_grads(config: RunConfig, model, params, batch_stats,
                       scenario: Scenario, data: pipeline.DeviceData,
                       spec: steps.InputSpec):
  """The cross-entropy gradient of one batch of the first task (SNIP's).

  ``batch_size`` examples of the first task, drawn with ``--seed``, at the
  given (initial) parameters.
  """
  task = scenario.tasks[0]
  rows = np.random.default_rng(config.seed).choice(
      task.train_indices, config.batch_size, replace=False)
  x, y = pipeline.gather_batch(data, jnp.asarray(rows, jnp.int32), 0,
                               "train", spec.permuted)
  x = pipeline.normalize(x, spec.mean, spec.std)
  forward = steps.make_forward(model)

  def loss(p):
    logits, _ = forward(p, batch_stats, x, None, False)
    return losses.cross_entropy(logits, y)

  return jax.grad(loss)(params)
