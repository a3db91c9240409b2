"""Many seeds in one vmapped run against one seed (``--num_seeds``).

Runs ``train.py``'s code (``cli.main``) on one config with ``--num_seeds=1``
and ``--num_seeds=N``, alternating (1, N, N, 1, 1, N...) in one process so
both see the same machine, after a small warm-up run that pays the process's
one-time costs (imports, backend start), and reports the ratio of their wall
times: what N seeds cost against one.
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence

import numpy as np

from benchmarks.harness import say

# The run's own time keys (results.json) reported beside the wall time.
_KEYS = ("wall_time_s", "train_time_s", "eval_time_s", "compile_time_s")


def seeds_against_one(flagfile: str, workdir: str, num_seeds: int = 10,
                      rounds: int = 2, extra: Sequence[str] = (),
                      warm_up: bool = True) -> dict:
  """Wall time of ``num_seeds`` seeds in one run against one seed.

  Args:
    flagfile: the run's config (``experiments/configs/...cfg``).
    workdir: parent of the runs' work directories (overwritten).
    num_seeds: seeds of the many-seed run.
    rounds: how many (one seed, many seeds) pairs to run, alternating.
    extra: further ``train.py`` flags (``--data_dir=...``).
    warm_up: first run a small digits run, untimed.

  Returns:
    ``{'command', 'one', 'many', 'ratio', 'train_ratio', ...}``: per
    variant, each run's seconds (``wall_s``: ``cli.main`` from start to
    end, data loading and compilation included; ``train_time_s`` and the
    other keys of its results.json) and their medians; ``ratio`` is the
    median wall time of the many-seed run over the one-seed run's,
    ``train_ratio`` the same for the training time net of compilation.
    Also the one-seed run's final accuracy and the many-seed run's mean,
    standard deviation and first seed's (which should equal the one-seed
    run's).

  Example:
    >>> seeds_against_one("experiments/configs/split_mnist_derpp.cfg",
    ...                   "/tmp/seeds", extra=["--data_dir=PATH"])
    ... # doctest: +SKIP
  """
  from sparcl_jax.training import cli  # pylint: disable=import-outside-toplevel
  base = ["train.py", f"--flagfile={flagfile}", *extra, "--noprogress",
          "--notensorboard", "--overwrite"]
  samples = {"one": [], "many": []}
  finals = {}
  if warm_up:
    # Pays the process's one-time costs (imports, backend start) untimed.
    say("warm-up: a small digits run")
    if cli.main(["train.py", "--dataset=digits", "--data_source=digits",
                 "--num_tasks=2", "--epochs=1", "--hidden_sizes=16",
                 "--noprogress", "--notensorboard", "--overwrite",
                 f"--workdir={os.path.join(workdir, 'warm_up')}"]):
      raise RuntimeError("the warm-up run failed")
  for r in range(rounds):
    pair = (("one", 1), ("many", num_seeds))
    for name, seeds in pair if r % 2 == 0 else pair[::-1]:
      say(f"--num_seeds={seeds}, round {r + 1} of {rounds}")
      rundir = os.path.join(workdir, name)
      start = time.perf_counter()
      status = cli.main(base + [f"--num_seeds={seeds}",
                                f"--workdir={rundir}"])
      wall = time.perf_counter() - start
      if status:
        raise RuntimeError(f"train.py exited with status {status}")
      with open(os.path.join(rundir, "results.json")) as f:
        results = json.load(f)
      samples[name].append(dict({k: results[k] for k in _KEYS},
                                wall_s=wall))
      finals[name] = results
  median = lambda name, key: float(np.median([s[key] for s in samples[name]]))
  out = {"command": " ".join(base[1:] + [f"--num_seeds={num_seeds}"]),
         "num_seeds": num_seeds, "rounds": rounds}
  for name in samples:
    out[name] = {"runs": samples[name],
                 **{f"median_{k}": median(name, k)
                    for k in ("wall_s",) + _KEYS}}
  out["ratio"] = out["many"]["median_wall_s"] / out["one"]["median_wall_s"]
  out["train_ratio"] = (out["many"]["median_train_time_s"] /
                        out["one"]["median_train_time_s"])
  many = finals["many"]
  out["final_one_seed"] = finals["one"]["final"]
  out["final_first_of_many"] = many["per_seed"][0]["final"]
  out["final_mean"] = many["final"]
  out["final_std"] = many["final_std"]
  out["seeds_vmapped"] = many["seeds_vmapped"]
  return out


def format_seeds(result: dict) -> str:
  """The text table of :func:`seeds_against_one`.

  Example:
    >>> print(format_seeds({"num_seeds": 2, "one": {"median_wall_s": 10.0,
    ...     "median_train_time_s": 8.0}, "many": {"median_wall_s": 15.0,
    ...     "median_train_time_s": 12.0}, "ratio": 1.5, "train_ratio": 1.5,
    ...     "final_mean": {"class_il": 80.0, "task_il": 97.0},
    ...     "final_std": {"class_il": 1.0, "task_il": 0.5},
    ...     "final_one_seed": {"class_il": 79.0, "task_il": 97.0},
    ...     "final_first_of_many": {"class_il": 79.0, "task_il": 97.0},
    ...     "command": "--flagfile=x.cfg"}))
    seeds  wall s  train s  (medians; train s net of compilation)
        1    10.0      8.0
        2    15.0     12.0
    ratio 2 seeds / 1 seed: wall 1.50x, train 1.50x
    class-IL: 1 seed 79.00; seed 1 of 2 79.00; mean 80.00 +- 1.00
    task-IL: 1 seed 97.00; seed 1 of 2 97.00; mean 97.00 +- 0.50
    command: train.py --flagfile=x.cfg
  """
  n = result["num_seeds"]
  lines = ["seeds  wall s  train s  (medians; train s net of compilation)"]
  for seeds, name in ((1, "one"), (n, "many")):
    row = result[name]
    lines.append(f"{seeds:>5}  {row['median_wall_s']:6.1f}  "
                 f"{row['median_train_time_s']:7.1f}")
  lines.append(f"ratio {n} seeds / 1 seed: wall {result['ratio']:.2f}x, "
               f"train {result['train_ratio']:.2f}x")
  for key, label in (("class_il", "class-IL"), ("task_il", "task-IL")):
    lines.append(
        f"{label}: 1 seed {result['final_one_seed'][key]:.2f}; seed 1 of {n} "
        f"{result['final_first_of_many'][key]:.2f}; mean "
        f"{result['final_mean'][key]:.2f} +- {result['final_std'][key]:.2f}")
  lines.append(f"command: train.py {result['command']}")
  return "\n".join(lines)
