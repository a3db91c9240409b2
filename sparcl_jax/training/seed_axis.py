"""Several seeds in one run (``--num_seeds``): the seed axis and the results.

A run of seeds ``--seed`` .. ``--seed+N-1`` trains through one
:class:`~sparcl_jax.training.trainer.Trainer`. When every seed's run has
the same shapes and runs on one device (rehearsal-family methods with
unstructured masks, the usual case) the seeds share one jitted program
vmapped over a leading seed axis; otherwise (:func:`sequential_reason`: the
task-level methods CLNP, EWC, SI and single-task; ``--mask_structure=
grouped``; several devices; seeds whose padded task sizes differ) the same
loop runs them one after another. Either way the results hold ``per_seed``
(each seed's results as its single-seed run writes them), ``final`` (their
mean), ``final_std`` (their standard deviation) and the mean of every other
number (:func:`combine`).
"""

from __future__ import annotations

import signal
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparcl_jax import methods
from sparcl_jax.data import pipeline
from sparcl_jax.data.types import Scenario
from sparcl_jax.training import checkpoint as checkpoint_lib
from sparcl_jax.training import config as config_lib
from sparcl_jax.training import run_state
from sparcl_jax.training import sharding as sharding_lib
from sparcl_jax.training import tasks
from sparcl_jax.training.config import RunConfig

LogFn = Callable[[dict], None]

def stack(trees: Sequence[Any]) -> Any:
  """Stacks same-structured pytrees along a new leading (seed) axis.

  Args:
    trees: the per-seed pytrees.

  Returns:
    One pytree whose leaves have a leading axis of ``len(trees)``.

  Examples:
    >>> stack([{"w": jnp.zeros(2)}, {"w": jnp.ones(2)}])["w"].shape
    (2, 2)
  """
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree: Any, index: int) -> Any:
  """Seed ``index``'s slice of a stacked pytree.

  Examples:
    >>> unstack({"w": jnp.arange(4).reshape(2, 2)}, 1)["w"]
    Array([2, 3], dtype=int32)
  """
  return jax.tree.map(lambda leaf: leaf[index], tree)


def shared_or_stacked(values: Sequence[Any]):
  """``(value, axis)``: the first value and ``None`` when all are equal,
  else the stacked values and 0 (a vmap ``in_axes`` entry).

  Examples:
    >>> shared_or_stacked([np.int32(3), np.int32(3)])
    (Array(3, dtype=int32), None)
  """
  host = [np.asarray(v) for v in values]
  if all(np.array_equal(h, host[0]) for h in host[1:]):
    return jnp.asarray(host[0]), None
  return jnp.asarray(np.stack(host)), 0


def device_data(scenarios: Sequence[Scenario]):
  """Every seed's data on the device: shared arrays once, the rest stacked.

  Args:
    scenarios: every seed's scenario (equal shapes).

  Returns:
    ``(data, axes)``: a :class:`~sparcl_jax.data.pipeline.DeviceData` and
    the matching vmap ``in_axes`` (None for a shared field, 0 for a
    stacked one).

  Examples:
    >>> data, axes = device_data([scenario, scenario])  # doctest: +SKIP
    >>> axes.train_images is None  # doctest: +SKIP
    True
  """
  first = scenarios[0]

  def same(scenario):
    pools = ("train_images", "train_labels", "test_images", "test_labels")
    return (all(getattr(scenario, n) is getattr(first, n) or np.array_equal(
        getattr(scenario, n), getattr(first, n)) for n in pools) and
            all(np.array_equal(np.asarray(a.permutation),
                               np.asarray(b.permutation)) and
                a.label_offset == b.label_offset
                for a, b in zip(scenario.tasks, first.tasks)))

  if all(same(s) for s in scenarios[1:]):
    data = pipeline.to_device(first)
    return data, jax.tree.map(lambda _: None, data)
  each = [pipeline.to_device(s) for s in scenarios]
  fields = [shared_or_stacked(values) for values in zip(*each)]
  return (pipeline.DeviceData(*(f[0] for f in fields)),
          pipeline.DeviceData(*(f[1] for f in fields)))


def seed_log(log: LogFn, seed: int) -> LogFn:
  """``log`` with ``seed`` added to every record.

  Args:
    log: the run's log function.
    seed: the seed whose records it receives.

  Returns:
    The wrapped log function.

  Examples:
    >>> seed_log(print, 3)({"event": "eval"})
    {'event': 'eval', 'seed': 3}
  """
  return lambda record: log(dict(record, seed=seed))


def check_stop(checkpoints, where: str) -> None:
  """Ends a multi-seed run on a stop request (it has no checkpoint to save).

  Args:
    checkpoints: the run's checkpointer, or None.
    where: the position, for the message.

  Raises:
    RunInterrupted: a stop was requested.

  Examples:
    >>> check_stop(None, "in task 1 of 5")  # no checkpointer: never stops
  """
  if checkpoints is None or not checkpoints.stop_requested:
    return
  signum = checkpoints.stop_signal or signal.SIGINT
  raise checkpoint_lib.RunInterrupted(
      f"stopped by {signal.Signals(signum).name} {where}: a --num_seeds run "
      "keeps no checkpoints, so a rerun starts over.", signum)


def seed_data(data, axes, seed: int):
  """One seed's view of :func:`device_data`'s arrays.

  Args:
    data: the run's device data (``device_data``'s first value).
    axes: its vmap axes (None: shared by every seed).
    seed: the seed's index in the run.

  Returns:
    The :class:`~sparcl_jax.data.pipeline.DeviceData` of that seed.

  Examples:
    >>> data, axes = device_data([scenario, scenario])  # doctest: +SKIP
    >>> seed_data(data, axes, 1).train_images is data.train_images  # doctest: +SKIP
    True
  """
  return pipeline.DeviceData(*(d if a is None else d[seed]
                               for d, a in zip(data, axes)))


# Timing keys that add up over seeds run one after another.
ADDED_KEYS = ("compile_time_s", "compiles", "train_time_s", "eval_time_s",
              "train_steps")


def sequential_run_keys(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """The timing keys of seeds that ran one after another: their sums.

  Args:
    per_seed: each seed's results.

  Returns:
    ``ADDED_KEYS`` summed over seeds, and ``ms_per_step`` of the sums.

  Examples:
    >>> one = {"compile_time_s": 1.0, "compiles": 2, "train_time_s": 3.0,
    ...        "eval_time_s": 1.0, "train_steps": 100}
    >>> sequential_run_keys([one, one])["ms_per_step"]
    40.0
  """
  keys = {key: sum(r[key] for r in per_seed) for key in ADDED_KEYS}
  keys["ms_per_step"] = (
      1e3 * (keys["train_time_s"] + keys["eval_time_s"]) /
      keys["train_steps"] if keys["train_steps"] else 0.0)
  return keys


def seed_configs(config: RunConfig) -> list[RunConfig]:
  """The single-seed configuration of every seed of a multi-seed run.

  Args:
    config: the run configuration.

  Returns:
    ``config`` with ``seed`` = ``config.seed + s`` and ``num_seeds`` = 1,
    for ``s`` in ``range(config.num_seeds)``.

  Examples:
    >>> [c.seed for c in seed_configs(RunConfig(seed=4, num_seeds=3))]
    [4, 5, 6]
  """
  return [config_lib.replace(config, seed=config.seed + s, num_seeds=1)
          for s in range(config.num_seeds)]


def build_scenarios(config: RunConfig,
                    first: Optional[Scenario] = None) -> list[Scenario]:
  """Every seed's scenario, the dataset loaded once where it can be.

  Args:
    config: the run configuration.
    first: the first seed's scenario, when already built.

  Returns:
    One scenario per seed (class order, permutations and validation split
    are seeded; so is the digits source's train/test split, which is then
    loaded per seed).

  Examples:
    >>> len(build_scenarios(RunConfig(num_seeds=2)))
    2
  """
  configs = seed_configs(config)
  datasets = None
  if config.data_source != "digits":
    datasets = run_state.load_datasets(configs[0])
  return [first if s == 0 and first is not None else
          run_state.build_scenario(c, datasets) for s, c in enumerate(configs)]


def sequential_reason(config: RunConfig,
                      scenarios: Sequence[Scenario]) -> str:
  """Why the seeds cannot share one vmapped program ('' when they can).

  Args:
    config: the run configuration.
    scenarios: every seed's scenario.

  Returns:
    The reason, or ''.

  Examples:
    >>> sequential_reason(RunConfig(method="clnp"), [])
    'the task-level method clnp'
  """
  if config.method_object.family == methods.TASK_LEVEL:
    return f"the task-level method {config.method}"
  if config.grouped:
    return "--mask_structure=grouped"
  if sharding_lib.make_mesh(config.num_devices,
                            config.batch_size) is not None:
    return "data-parallel training over several devices"
  joint = config.method_object.joint

  def shapes(scenario):
    arrays = tasks.TaskArrays(scenario, joint)
    return (arrays.train_len, arrays.test_len, scenario.num_outputs,
            [len(t.classes) for t in scenario.tasks],
            tasks.input_spec(scenario))

  if any(shapes(s) != shapes(scenarios[0]) for s in scenarios[1:]):
    return "seeds whose tasks pad to different sizes"
  return ""


def mean_tree(values: Sequence[Any]) -> Any:
  """The mean of same-shaped results, leaf by leaf.

  Numbers are averaged (as floats), dicts and lists recursively; a leaf
  equal in every entry, or not a number, or of differing structure, is
  taken from the first.

  Args:
    values: one results tree per seed.

  Returns:
    The mean tree.

  Examples:
    >>> mean_tree([{"a": [1, 2], "b": "x", "c": 3}, {"a": [3, 2], "b": "y",
    ...                                               "c": 3}])
    {'a': [2.0, 2], 'b': 'x', 'c': 3}
  """
  first = values[0]
  if all(v == first for v in values[1:]):
    return first
  if all(isinstance(v, dict) for v in values) and all(
      v.keys() == first.keys() for v in values):
    return {k: mean_tree([v[k] for v in values]) for k in first}
  if all(isinstance(v, (list, tuple)) for v in values) and all(
      len(v) == len(first) for v in values):
    return [mean_tree([v[i] for v in values]) for i in range(len(first))]
  if all(isinstance(v, (int, float)) and not isinstance(v, bool)
         for v in values):
    return float(np.mean(values))
  return first


def combine(config: RunConfig, per_seed: Sequence[dict[str, Any]],
            run_keys: dict[str, Any], start: float,
            vmapped: bool) -> dict[str, Any]:
  """The results of a multi-seed run from each seed's.

  Args:
    config: the run configuration.
    per_seed: each seed's results, as its single-seed run returns them.
    run_keys: the timing keys of the whole run (``timing.results_keys``).
    start: ``time.perf_counter()`` at the run's start.
    vmapped: whether the seeds ran as one vmapped program.

  Returns:
    The mean of every number over seeds (:func:`mean_tree`; so
    ``acc_matrix`` is the mean matrix), with ``final`` the mean of the
    seeds' ``final`` metrics, ``final_std`` their standard deviation
    (numpy's, ddof=0), ``per_seed``, ``seeds``, ``seeds_vmapped``, the
    run's timings and flags, and the first seed's ``scenario``.

  Examples:
    >>> one = {"final": {"class_il": 80.0}, "scenario": {}}
    >>> two = {"final": {"class_il": 90.0}, "scenario": {}}
    >>> combine(RunConfig(num_seeds=2), [one, two], {}, 0.0,
    ...         True)["final_std"]
    {'class_il': 5.0}
  """
  results = mean_tree(list(per_seed))
  finals = {k: [r["final"][k] for r in per_seed] for k in per_seed[0]["final"]}
  results.update(run_keys)
  if "parts" in per_seed[0]:  # what any seed ran
    results["parts"] = [p for p in ("TDM", "DGM", "DDR")
                        if any(p in r["parts"] for r in per_seed)]
  results.update({
      "final": {k: float(np.mean(v)) for k, v in finals.items()},
      "final_std": {k: float(np.std(v)) for k, v in finals.items()},
      "wall_time_s": time.perf_counter() - start,
      "scenario": per_seed[0]["scenario"],
      "flags": config_lib.to_dict(config),
      "seeds": [config.seed + s for s in range(len(per_seed))],
      "seeds_vmapped": vmapped,
      "per_seed": list(per_seed),
  })
  return results
