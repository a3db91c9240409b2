"""Whole epochs and whole runs: what a user of ``train.py`` waits for.

Epoch throughput (ordering, gathering, augmentation and the host loop
included), the compilations and wall time of whole multi-task runs, the
wall-clock savings of SparCL on Split MNIST, and ``train.py`` itself, each
against the bare step where one applies.
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import chunks
from benchmarks.harness import (CompileCounter, say, summarize,
                                time_interleaved)
from benchmarks.inputs import (digits_scenario, make_config,
                               random_scenario)
from benchmarks.reference import build_bare_step, build_plain_step
from sparcl_jax.data import pipeline
from sparcl_jax.data import scenarios
from sparcl_jax.data.types import Scenario
from sparcl_jax.training import config as config_lib
from sparcl_jax.training import loop
from sparcl_jax.training import steps
from sparcl_jax.training.config import RunConfig


def epoch_throughput(config: RunConfig, scenario: Scenario,
                     repeats: int) -> dict:
  """Examples/s of whole fine-tuning epochs through ``loop``'s pieces.

  One epoch is what ``loop.run`` does per epoch: order the task's examples
  on the device, then call the train chunk until the epoch is done (the
  host loop, gathering and augmentation included). The bare step is the
  plain SGD step of the same model and batch size.

  Args:
    config: fine-tuning config ('sgd').
    scenario: the data.
    repeats: epochs timed (interleaved with the bare step).

  Returns:
    ``{'steps_per_epoch', 'augment', 'examples_per_s', 'epoch_ms_per_step',
    'bare_ms_per_step', 'ratio_to_bare'}``.

  Example:
    >>> epoch_throughput(make_config('sgd'), scenario, 3)  # doctest: +SKIP
  """
  parts = chunks.epoch_chunk(config, scenario, 1)
  b, k, num_steps = config.batch_size, parts.steps_per_call, parts.num_steps
  epoch_order = jax.jit(pipeline.epoch_order)

  def one_epoch(rep):
    state = parts.state
    order, count = epoch_order(jax.random.key(rep), parts.usable)
    n = int(count) // b
    for first in range(0, n, k):
      facts = steps.StepFacts(jnp.int32(1), jnp.int32(0), jnp.int32(first),
                              jnp.int32(n), parts.task_mask, parts.seen_mask)
      state, _ = parts.chunk(state, parts.data, order, facts)
    return state.params

  bare = build_plain_step(config, scenario, k)
  jax.block_until_ready(one_epoch(0))
  times = time_interleaved({"epoch": one_epoch, "bare": bare.call}, repeats)
  epoch_ms = summarize(times["epoch"], 1e3 / num_steps)
  bare_ms = summarize(times["bare"], 1e3 / k)
  return {"steps_per_epoch": num_steps, "augment": bool(scenario.augment),
          "examples_per_s": num_steps * b / float(np.median(times["epoch"])),
          "epoch_ms_per_step": epoch_ms, "bare_ms_per_step": bare_ms,
          "ratio_to_bare": epoch_ms["median"] / bare_ms["median"]}


def count_run_compiles(config: RunConfig, scenario: Scenario) -> dict:
  """Compilations and wall time of one whole ``loop.run``.

  Args:
    config: the run configuration.
    scenario: the data.

  Returns:
    ``{'num_tasks', 'compiles', 'compile_s', 'compiles_after_first_task',
    'wall_s', 'eval_s'}``; ``eval_s`` is the time spent after each task's
    last epoch (the evaluation of every task).

  Example:
    >>> count_run_compiles(cfg, scenario)['compiles_after_first_task']
    ... # doctest: +SKIP
    0
  """
  marks = []
  last_epoch = {}

  def log(record):
    now = time.perf_counter()
    if record.get("event") == "epoch":
      last_epoch["t"] = now
    if record.get("event") == "eval":
      marks.append((counter.count, now - last_epoch.get("t", now)))

  with CompileCounter() as counter:
    start = time.perf_counter()
    loop.run(config, scenario, log_fn=log)
    wall = time.perf_counter() - start
  return {"num_tasks": scenario.num_tasks, "compiles": counter.count,
          "compile_s": counter.seconds,
          "compiles_after_first_task": counter.count - marks[0][0],
          "wall_s": wall, "eval_s": float(sum(m[1] for m in marks))}


def compile_counts(method: str = "sparcl_derpp",
                   task_counts: Sequence[int] = (2, 5)) -> dict:
  """Compilations of whole runs on split digits with different task counts.

  Every counted run starts from empty compilation caches
  (``jax.clear_caches``), so module-level jitted functions compiled by an
  earlier run are counted again and the runs compare like with like.

  Args:
    method: the method run.
    task_counts: numbers of tasks.

  Returns:
    ``{str(num_tasks): count_run_compiles(...)}``.

  Example:
    >>> compile_counts('derpp', (2,))  # doctest: +SKIP
  """
  config = make_config(method, dataset="digits", data_source="digits",
                       hidden_sizes="64,64", epochs=2, batch_size=16,
                       minibatch_size=16, buffer_size=50, steps_per_call=8,
                       ddr_epochs="1", mask_update_interval=1)
  out = {}
  for n in task_counts:
    jax.clear_caches()
    out[str(n)] = count_run_compiles(config_lib.replace(config, num_tasks=n),
                                     digits_scenario(n))
  return out


def split_mnist_savings(data_dir: Optional[str], epochs: int = 5) -> dict:
  """Whole Split MNIST runs of DER++ and SparCL-DER++ (the CPU configs).

  Args:
    data_dir: folder with the MNIST IDX files; None uses random data of
      MNIST's shape and size.
    epochs: epochs per task.

  Returns:
    Per method: wall time, training examples, training FLOPs (sparse
    accounting) and final accuracy; plus the ratios.

  Example:
    >>> split_mnist_savings(None, 1)  # doctest: +SKIP
  """
  if data_dir:
    from sparcl_jax.data import sources  # pylint: disable=import-outside-toplevel
    scenario = scenarios.split_scenario(
        sources.load_dataset("mnist", "files", data_dir), 2)
    source = "mnist files"
  else:
    scenario = random_scenario((28, 28, 1), 12000, 2000)
    source = "random data of MNIST's shape"
  common = dict(hidden_sizes="400,400", epochs=epochs, steps_per_call=100,
                eval_batch_size=1000)
  out = {"data": source}
  for method in ("derpp", "sparcl_derpp"):
    config = make_config(method, **common)
    result = loop.run(config, scenario)
    out[method] = {"wall_s": result["wall_time_s"],
                   "train_examples": result["train_examples"],
                   "train_flops": result["train_flops"],
                   "dense_train_flops": result["dense_train_flops"],
                   "final": result["final"]}
  d, s = out["derpp"], out["sparcl_derpp"]
  out["wall_ratio"] = s["wall_s"] / d["wall_s"]
  out["examples_ratio"] = s["train_examples"] / d["train_examples"]
  out["flops_ratio"] = s["train_flops"] / d["train_flops"]
  return out


def train_py_against_bare(data_dir: str, workdir: str,
                          bare_steps: int = 20) -> dict:
  """``train.py`` on Split MNIST with ResNet-18 nf 20 against a bare step.

  Runs ``experiments/train.py``'s code (``cli.main``) with ``--model=resnet18
  --nf=20 --method=sgd --batch_size=32`` (one epoch per task, 5 tasks) and
  reads its per-step time from ``results.json`` (``ms_per_step``: training
  and evaluation per train step, compilation excluded). The bare jitted step
  of :mod:`~benchmarks.convnets`' ResNet-18 on 28x28x1 batches
  of 32 is timed in the same process just before and just after the run.

  Args:
    data_dir: folder with the MNIST IDX files.
    workdir: the run's work directory (must not hold results).
    bare_steps: bare steps per timed sample (three samples before the run,
      three after).

  Returns:
    ``{'train_py_ms_per_step', 'bare_ms_per_step', 'ratio', ...}``.

  Example:
    >>> train_py_against_bare('PATH/TO/mnist', '/tmp/w')  # doctest: +SKIP
  """
  from sparcl_jax.training import cli  # pylint: disable=import-outside-toplevel
  args = ["train.py", "--dataset=mnist", "--data_source=files",
          f"--data_dir={data_dir}", "--scenario=split", "--num_tasks=5",
          "--model=resnet18", "--nf=20", "--method=sgd", "--batch_size=32",
          "--epochs=1", "--lr=0.03", "--seed=0", "--noprogress",
          "--notensorboard", f"--workdir={workdir}"]
  mnist = random_scenario((28, 28, 1), 64)
  bare = build_bare_step("sgd", make_config("sgd", model="resnet18", nf=20),
                         mnist, bare_steps)
  before = time_interleaved({"bare": bare.call}, 3)["bare"]
  say("train.py: ResNet-18 nf 20 on Split MNIST")
  status = cli.main(args)
  if status:
    raise RuntimeError(f"train.py exited with status {status}")
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  after = time_interleaved({"bare": bare.call}, 3)["bare"]
  bare_ms = summarize(before + after, 1e3 / bare_steps)
  keys = ("ms_per_step", "train_time_s", "eval_time_s", "compile_time_s",
          "train_steps", "wall_time_s")
  return {"command": " ".join(args), **{k: results[k] for k in keys},
          "final": results["final"], "bare_ms_per_step": bare_ms,
          "ratio": results["ms_per_step"] / bare_ms["median"]}
