"""Several seeds in one run (``--num_seeds``): dispatch, fallback, results.

:func:`run` trains seeds ``--seed`` .. ``--seed+N-1``. When every seed's
run has the same shapes and runs on one device (rehearsal-family methods
with unstructured masks, the usual case), the seeds train as one jitted
program vmapped over a leading seed axis
(:func:`sparcl_jax.training.seed_vmap.run`). Otherwise (the task-level
methods CLNP, EWC, SI and single-task; ``--mask_structure=grouped``;
``--num_devices`` other than one device; seeds whose padded task sizes
differ, as ``--shuffle_classes`` over unbalanced classes gives) they run one
after another in this process. Either way the results hold ``per_seed``
(each seed's results as its single-seed run writes them), ``final`` (their
mean), ``final_std`` (their standard deviation) and the mean of every other
number (``acc_matrix`` too, so the plots show the mean).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from sparcl_jax import methods
from sparcl_jax.data.types import Scenario
from sparcl_jax.training import config as config_lib
from sparcl_jax.training import run_state
from sparcl_jax.training import seed_vmap
from sparcl_jax.training import sharding as sharding_lib
from sparcl_jax.training import tasks
from sparcl_jax.training import timing
from sparcl_jax.training.config import RunConfig

LogFn = Callable[[dict], None]

# Timing keys that add up over seeds run one after another.
_ADDED = ("compile_time_s", "compiles", "train_time_s", "eval_time_s",
          "train_steps")


def seed_configs(config: RunConfig) -> list[RunConfig]:
  """The single-seed configuration of every seed of a multi-seed run.

  Args:
    config: the run configuration.

  Returns:
    ``config`` with ``seed`` = ``config.seed + s`` and ``num_seeds`` = 1,
    for ``s`` in ``range(config.num_seeds)``.

  Example:
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

  Example:
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

  Example:
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


def run(config: RunConfig, scenario: Optional[Scenario], log: LogFn,
        start: float, checkpoints: Optional[Any],
        run_one: Callable[..., dict[str, Any]]) -> dict[str, Any]:
  """Trains every seed of ``config`` and combines their results.

  Args:
    config: a validated configuration with ``num_seeds`` > 1.
    scenario: the first seed's scenario, or None to build it.
    log: receives every seed's log records, each with its ``seed``.
    start: ``time.perf_counter()`` at the run's start.
    checkpoints: only asked whether a stop was requested: a multi-seed run
      saves no checkpoints.
    run_one: ``loop.run``, which trains one seed's config (``run_one(config,
      scenario, log)``) when the seeds run one after another; passed in
      because ``loop.run`` is also what calls this function.

  Returns:
    The combined results (see :func:`combine`).

  Raises:
    RunInterrupted: a stop was requested (nothing is saved).

  Example:
    >>> results = run(config, None, print, 0.0, None, loop.run)  # doctest: +SKIP
  """
  configs = seed_configs(config)
  with timing.CompileTimer() as compiles:
    scenarios = build_scenarios(config, scenario)
    reason = sequential_reason(config, scenarios)
    if not reason:
      per_seed, run_keys = seed_vmap.run(config, configs, scenarios, log,
                                         start, checkpoints, compiles)
      return combine(config, per_seed, run_keys, start, vmapped=True)
  print(f"--num_seeds={config.num_seeds}: {reason} runs the seeds one after "
        "another.", flush=True)
  per_seed = []
  for seed_config, seed_scenario in zip(configs, scenarios):
    seed_vmap.check_stop(checkpoints, f"before seed {seed_config.seed}")
    per_seed.append(run_one(seed_config, seed_scenario,
                            seed_vmap.seed_log(log, seed_config.seed)))
  run_keys = {key: sum(r[key] for r in per_seed) for key in _ADDED}
  run_keys["ms_per_step"] = (
      1e3 * (run_keys["train_time_s"] + run_keys["eval_time_s"]) /
      run_keys["train_steps"] if run_keys["train_steps"] else 0.0)
  return combine(config, per_seed, run_keys, start, vmapped=False)


def mean_tree(values: Sequence[Any]) -> Any:
  """The mean of same-shaped results, leaf by leaf.

  Numbers are averaged (as floats), dicts and lists recursively; a leaf
  equal in every entry, or not a number, or of differing structure, is
  taken from the first.

  Args:
    values: one results tree per seed.

  Returns:
    The mean tree.

  Example:
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

  Example:
    >>> one = {"final": {"class_il": 80.0}, "scenario": {}}
    >>> two = {"final": {"class_il": 90.0}, "scenario": {}}
    >>> combine(RunConfig(num_seeds=2), [one, two], {}, 0.0,
    ...         True)["final_std"]
    {'class_il': 5.0}
  """
  results = mean_tree(list(per_seed))
  finals = {k: [r["final"][k] for r in per_seed] for k in per_seed[0]["final"]}
  results.update(run_keys)
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
