"""Structured sparsity against dense and unstructured DER++ (issue 13).

Two tables answer whether group-balanced sparsity (``--mask_structure=
grouped``) saves wall time where unstructured SparCL does not:

* :func:`structured_steps`: the library's train chunk of dense DER++,
  unstructured SparCL-DER++ and structured SparCL-DER++ at each sparsity,
  timed interleaved in one process, per step and as a speed-up over dense
  DER++;
* :func:`structured_train_times`: whole Split MNIST runs of
  ``experiments/train.py`` with the MLP 784-2000-2000 configs, back to
  back, with their training time, accuracy and FLOPs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Callable, Optional, Sequence

from benchmarks import chunks
from benchmarks.harness import (say, summarize, time_interleaved,
                                whole_epoch)
from benchmarks.inputs import make_config, random_scenario

# Training examples of one Split MNIST task (60000 over 5 tasks): the default
# simulated epoch is as long as a real one, so SparCL's once-per-epoch
# drop-and-grow weighs in a sample as it does in a run.
SPLIT_MNIST_TASK_EXAMPLES = 12000

# The runs of the end-to-end table, in the order they run: (name, flagfile
# under experiments/configs/). The first is the baseline of the speed-ups.
STRUCTURED_RUNS = (
    ("dense", "split_mnist_derpp_mlp2000"),
    ("structured_s75", "split_mnist_sparcl_derpp_structured_s75"),
    ("structured_s90", "split_mnist_sparcl_derpp_structured_s90"),
    ("structured_s95", "split_mnist_sparcl_derpp_structured_s95"),
    ("unstructured_s75", "split_mnist_sparcl_derpp_mlp2000_s75"),
    ("unstructured_s90", "split_mnist_sparcl_derpp_mlp2000_s90"),
    ("unstructured_s95", "split_mnist_sparcl_derpp_mlp2000_s95"),
)

# Runs given as ``[(name, train.py arguments)]``.
RunArgs = Sequence[tuple[str, Sequence[str]]]


def variant_name(structure: str, sparsity: Optional[float] = None) -> str:
  """The table name of a variant: ``'dense'`` or ``'<structure>_s<pct>'``.

  Args:
    structure: ``'dense'``, ``'structured'`` or ``'unstructured'``.
    sparsity: weight sparsity (unused for ``'dense'``).

  Returns:
    The name.

  Example:
    >>> variant_name('structured', 0.9), variant_name('dense')
    ('structured_s90', 'dense')
  """
  if structure == "dense":
    return "dense"
  return f"{structure}_s{round(100 * sparsity)}"


# The settings a structured variant takes from its config: SparCL's, and
# the epochs per task its schedule is laid over (--sparsity and
# --mask_group are set per variant).
SPARCL_FIELDS = ("tdm", "dgm", "ddr", "sparsity_distribution",
                 "mask_update_interval", "mask_extra_growth",
                 "mask_swap_fraction", "importance_lambda",
                 "gradient_sparsity", "dgm_refresh", "sparse_init", "epochs")


def config_settings(config_name: str,
                    fields: Sequence[str] = SPARCL_FIELDS) -> dict:
  """Settings of a shipped config, as ``train.py`` would parse them.

  The benchmark's structured ResNet-18 variants take their SparCL settings
  from the ``split_mnist_resnet18_sparcl_derpp_structured_sXX.cfg`` configs
  this way, so a change to the configs reaches the benchmark.

  Args:
    config_name: a config under ``experiments/configs/``, without
      ``.cfg``.
    fields: the ``RunConfig`` fields to return.

  Returns:
    ``{field: value}``.

  Example:
    >>> config_settings('split_mnist_resnet18_sparcl_derpp_structured_s75',
    ...                 ('dgm', 'mask_extra_growth', 'epochs'))
    {'dgm': True, 'mask_extra_growth': 0.0, 'epochs': 1}
  """
  from sparcl_jax.training import cli  # pylint: disable=import-outside-toplevel
  path = os.path.join(repo_root(), "experiments", "configs",
                      f"{config_name}.cfg")
  config = cli.parse_config(["train.py", f"--flagfile={path}",
                             "--workdir=/tmp/unused", "--data_dir=/unused"])
  return {field: getattr(config, field) for field in fields}


def resnet_structured_flags(sparsity: float) -> dict:
  """The SparCL settings of the structured ResNet-18 config at ``sparsity``
  (see :func:`config_settings`), for :func:`structured_steps`.

  Args:
    sparsity: 0.75, 0.90 or 0.95: the config
      ``split_mnist_resnet18_sparcl_derpp_structured_s<pct>.cfg``.

  Returns:
    ``{field: value}`` of :data:`SPARCL_FIELDS`.

  Example:
    >>> flags = resnet_structured_flags(0.9)
    >>> flags['sparse_init'], flags['dgm']
    ('kept_fan_in', False)
  """
  return config_settings(dict(RESNET_RUNS)[variant_name("structured",
                                                         sparsity)])


def structured_steps(batch_sizes: Sequence[int] = (32, 256),
                     sparsities: Sequence[float] = (0.75, 0.90, 0.95),
                     repeats: int = 5, hidden_sizes: str = "2000,2000",
                     steps_per_call: int = 100, mask_group: int = 0,
                     steps_per_epoch: Optional[int] = None,
                     image_shape: Sequence[int] = (28, 28, 1),
                     buffer_size: int = 200, task_id: int = 1,
                     epoch: int = 1, model_flags: Optional[dict] = None,
                     unstructured: bool = True,
                     structured_flags: Optional[Callable[[float], dict]] = None
                     ) -> dict:
  """Per-step time of dense, unstructured and structured DER++ chunks.

  For each batch size, every variant is the library's train chunk
  (:func:`~benchmarks.chunks.build_train_chunk`) of task
  ``task_id`` at epoch ``epoch`` (replay on, a full buffer), on random data
  of ``image_shape``: dense DER++, then structured SparCL-DER++ (grouped,
  blocks of ``mask_group`` outputs) and unstructured SparCL-DER++ at each
  sparsity, with the SparCL schedule of
  :func:`~benchmarks.inputs.make_config`. Each timed sample is
  one whole simulated epoch (every chunk, as ``train.py`` calls them), so
  the drop-and-grow at its start and the DGM refreshes weigh in every
  sample; the variants of one batch size are timed round-robin in this
  process, so the machine's load weighs on all alike. DDR's shorter epochs
  are a whole-run saving and do not show here (see
  :func:`structured_train_times`).

  Args:
    batch_sizes: stream batch sizes; the replay mini-batch is the same.
    sparsities: weight sparsities of the SparCL variants.
    repeats: timed samples (simulated epochs) per variant.
    hidden_sizes: the MLP's hidden widths (``mask_group`` must divide each).
    steps_per_call: steps fused in one call (``train.py``'s default 100),
      capped at the epoch's length as ``loop.run`` caps it.
    mask_group: output units per block of the structured variants; 0
      takes the model's default (``--mask_group=0``), and the results say
      the size it resolved to.
    steps_per_epoch: steps of the simulated epoch; None: a Split MNIST
      task's (12000 examples: 375 steps at batch 32, 46 at 256).
    image_shape: (H, W, C) of the random inputs.
    buffer_size: rehearsal buffer; raised to the batch size where smaller
      (the replay mini-batch is drawn without replacement).
    task_id: the task trained (> 0, so that replay runs).
    epoch: the epoch within the task.
    model_flags: other flags of every variant, e.g. ``{'model':
      'resnet18', 'nf': 20}`` for the structured ResNet (its block convs
      grouped; ``hidden_sizes`` then unused).
    unstructured: include the unstructured SparCL-DER++ rows.
    structured_flags: ``sparsity -> flags`` of the structured variants
      only, e.g. :func:`resnet_structured_flags` (the configs' settings,
      where the default 1% shares would move no row of a small layer,
      which ``grouped_tdm`` refuses).

  Returns:
    ``{'hidden_sizes', 'mask_group', 'model_flags', 'task_id', 'epoch',
    'repeats',
    'image_shape', 'batches': {str(batch): {'steps_per_epoch',
    'steps_per_call', 'buffer_size', 'variants': {name: {...}}}}}``; each
    variant has ``structure``, ``sparsity``, ``ms_per_step`` (the harness's
    summary), ``speedup`` (dense median over its median), ``compile_s``,
    ``compiles``, ``examples_per_step``, ``dense_flops_per_step`` and
    ``built_by``. Variants are in table order: dense, structured, then
    unstructured, each by sparsity.

  Example:
    >>> r = structured_steps((8,), (0.5,), 1, '8,8', 4, 4, 2, (4, 4, 1), 16)
    ... # doctest: +SKIP
    >>> list(r['batches']['8']['variants'])  # doctest: +SKIP
    ['dense', 'structured_s50', 'unstructured_s50']
    >>> r['batches']['8']['variants']['dense']['speedup']  # doctest: +SKIP
    1.0
  """
  if task_id < 1:
    raise ValueError("task_id must be > 0: task 0 has no replay")
  epochs = {b: steps_per_epoch or SPLIT_MNIST_TASK_EXAMPLES // b
            for b in batch_sizes}
  # One scenario serves every batch size: each task holds the longest
  # simulated epoch's examples.
  data = random_scenario(image_shape,
                         max(b * epochs[b] for b in batch_sizes))
  out = {"hidden_sizes": hidden_sizes, "mask_group": mask_group,
         "model_flags": dict(model_flags or {}),
         "task_id": task_id, "epoch": epoch, "repeats": repeats,
         "image_shape": list(image_shape), "batches": {}}
  for b in batch_sizes:
    spe = epochs[b]
    k = max(1, min(steps_per_call, spe))
    buffer = max(buffer_size, b)
    common = dict(hidden_sizes=hidden_sizes, batch_size=b, minibatch_size=b,
                  buffer_size=buffer, steps_per_call=k,
                  **(model_flags or {}))
    configs = {variant_name("dense"): ("dense", None,
                                       make_config("derpp", **common))}
    for s in sparsities:
      own = structured_flags(s) if structured_flags else {}
      configs[variant_name("structured", s)] = (
          "structured", s, make_config("sparcl_derpp", sparsity=s,
                                       mask_structure="grouped",
                                       mask_group=mask_group,
                                       **{**common, **own}))
    out["mask_group"] = next(
        (cfg.group_size for kind, _, cfg in configs.values()
         if kind == "structured"), mask_group)
    for s in sparsities if unstructured else ():
      configs[variant_name("unstructured", s)] = (
          "unstructured", s, make_config("sparcl_derpp", sparsity=s,
                                         **common))
    say(f"structured steps at batch {b}: building {len(configs)} chunks")
    benches = {name: chunks.build_train_chunk(cfg, data, spe, task_id, epoch)
               for name, (_, _, cfg) in configs.items()}
    # Chunks per epoch: the last one may be partly past the epoch's end,
    # where its steps are skipped (as in train.py).
    calls = -(-spe // k)
    say(f"structured steps at batch {b}: {repeats} interleaved epochs of "
        f"{spe} steps per variant")
    times = time_interleaved(
        {name: whole_epoch(bench.call, calls)
         for name, bench in benches.items()}, repeats)
    variants = {}
    for name, bench in benches.items():
      structure, sparsity, _ = configs[name]
      variants[name] = {
          "structure": structure, "sparsity": sparsity,
          "ms_per_step": summarize(times[name], 1e3 / spe),
          "compile_s": bench.compile_s, "compiles": bench.compiles,
          "examples_per_step": bench.examples_per_step,
          "dense_flops_per_step": (6.0 * bench.macs_per_example *
                                   bench.examples_per_step),
          "built_by": bench.note}
    dense = variants["dense"]["ms_per_step"]["median"]
    for r in variants.values():
      r["speedup"] = dense / r["ms_per_step"]["median"]
    out["batches"][str(b)] = {"steps_per_epoch": spe, "steps_per_call": k,
                              "buffer_size": buffer, "variants": variants}
  return out


def repo_root() -> str:
  """The checkout holding ``experiments/`` (train.py and its configs).

  The harness is a top-level package of the checkout, run from it and never
  installed, so the checkout is the parent of this file's folder.

  Returns:
    Its absolute path.

  Example:
    >>> os.path.isfile(os.path.join(repo_root(), 'experiments', 'train.py'))
    True
  """
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_runs(data_dir: str) -> list[tuple[str, list[str]]]:
  """The end-to-end runs of :data:`STRUCTURED_RUNS` as train.py arguments.

  Args:
    data_dir: folder with the MNIST IDX files.

  Returns:
    ``[(name, args)]``; ``args`` exclude the program name and ``--workdir``.

  Example:
    >>> name, args = default_runs('/data/mnist')[1]
    >>> name, args[1]
    ('structured_s75', '--data_dir=/data/mnist')
    >>> os.path.basename(args[0])
    'split_mnist_sparcl_derpp_structured_s75.cfg'
  """
  return [(name, [f"--flagfile=experiments/configs/{cfg}.cfg",
                  f"--data_dir={data_dir}"])
          for name, cfg in STRUCTURED_RUNS]


# The ResNet-18 runs of issue 26 (Split MNIST, nf 20, one epoch per task):
# (name, flagfile under experiments/configs/); the first is the baseline.
RESNET_RUNS = (
    ("dense", "split_mnist_resnet18_derpp"),
    ("structured_s75", "split_mnist_resnet18_sparcl_derpp_structured_s75"),
    ("structured_s90", "split_mnist_resnet18_sparcl_derpp_structured_s90"),
    ("structured_s95", "split_mnist_resnet18_sparcl_derpp_structured_s95"),
)


def resnet_seed_runs(data_dir: str, seeds: Sequence[int] = (0, 1, 2)
                     ) -> list[tuple[str, list[str]]]:
  """The runs of :data:`RESNET_RUNS` for several seeds, seed by seed.

  Every config runs once per seed, and each seed's round runs all configs
  before the next seed starts, so each round compares them back to back.

  Args:
    data_dir: folder with the MNIST IDX files (or where to download them).
    seeds: the ``--seed`` values.

  Returns:
    ``[(name, args)]`` with names ``<config>.seed<seed>``; ``args`` exclude
    the program name and ``--workdir``.

  Example:
    >>> runs = resnet_seed_runs('/data', (0, 1))
    >>> [name for name, _ in runs][:5]
    ['dense.seed0', 'structured_s75.seed0', 'structured_s90.seed0', \
'structured_s95.seed0', 'dense.seed1']
    >>> runs[4][1][1:]
    ['--data_dir=/data', '--seed=1']
  """
  return [(f"{name}.seed{seed}",
           [f"--flagfile=experiments/configs/{cfg}.cfg",
            f"--data_dir={data_dir}", f"--seed={seed}"])
          for seed in seeds for name, cfg in RESNET_RUNS]


def seed_summary(results: dict) -> dict:
  """Mean and standard deviation over seeds of runs named ``NAME.seedS``.

  Args:
    results: the dict of :func:`structured_train_times`.

  Returns:
    ``{name: {'seeds', 'train_time_s', 'class_il', 'task_il',
    'flops_ratio': {'mean', 'std'}, 'speedup'}}`` in the runs' order;
    ``speedup`` is the first name's mean training time over this one's;
    ``std`` is the population standard deviation (numpy's default).

  Example:
    >>> run = lambda t, acc: {'train_time_s': t, 'class_il': acc,
    ...                       'task_il': 99.0, 'flops_ratio': 1.0}
    >>> s = seed_summary({'runs': {'a.seed0': run(100.0, 80.0),
    ...     'a.seed1': run(120.0, 82.0), 'b.seed0': run(50.0, 79.0),
    ...     'b.seed1': run(60.0, 81.0)}})
    >>> s['b']['speedup'], s['a']['class_il']
    (2.0, {'mean': 81.0, 'std': 1.0})
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  grouped: dict[str, list[dict]] = {}
  for name, run in results["runs"].items():
    grouped.setdefault(name.rsplit(".seed", 1)[0], []).append(run)
  summary = {}
  for name, runs in grouped.items():
    summary[name] = {"seeds": len(runs)}
    for key in ("train_time_s", "class_il", "task_il", "flops_ratio"):
      values = np.array([r[key] for r in runs], dtype=float)
      summary[name][key] = {"mean": float(values.mean()),
                            "std": float(values.std())}
  base = summary[next(iter(summary))]["train_time_s"]["mean"]
  for entry in summary.values():
    entry["speedup"] = base / entry["train_time_s"]["mean"]
  return summary


def read_run(run_dir: str) -> dict:
  """A finished run's times, FLOPs and final accuracy, from its results.

  Args:
    run_dir: the run's ``--workdir``.

  Returns:
    ``{'train_time_s', 'compile_time_s', 'eval_time_s', 'wall_time_s',
    'train_steps', 'train_flops', 'dense_train_flops', 'class_il',
    'task_il', 'flops_ratio'}`` read from its ``results.json``.

  Example:
    >>> read_run('/tmp/structured/dense')['class_il']  # doctest: +SKIP
    85.28
  """
  with open(os.path.join(run_dir, "results.json")) as f:
    results = json.load(f)
  return {
      **{key: results[key] for key in (
          "train_time_s", "compile_time_s", "eval_time_s", "wall_time_s",
          "train_steps", "train_flops", "dense_train_flops")},
      "class_il": results["final"]["class_il"],
      "task_il": results["final"]["task_il"],
      "flops_ratio": results["train_flops"] / results["dense_train_flops"]}


def structured_train_times(data_dir: Optional[str], workdir: str,
                           configs: Optional[RunArgs] = None,
                           in_process: bool = False) -> dict:
  """Whole ``train.py`` runs back to back: time, accuracy and FLOPs.

  By default the MLP 784-2000-2000 configs on Split MNIST, in the order of
  :data:`STRUCTURED_RUNS` (dense DER++, structured SparCL-DER++ at 0.75,
  0.90 and 0.95, then unstructured at the same sparsities). Each run is
  ``experiments/train.py`` in a fresh process (run from the checkout, where
  the configs' nested flagfiles resolve), with ``--overwrite --noprogress
  --notensorboard`` and ``--workdir=<workdir>/<name>``; the figures are
  read from the ``results.json`` it writes. ``train_time_s`` excludes
  compilation and evaluation, so the speed-up (the first run's
  ``train_time_s`` over each run's) compares training alone.

  Args:
    data_dir: folder with the MNIST IDX files, for the default runs (unused
      when ``configs`` is given).
    workdir: parent of the runs' work directories.
    configs: ``[(name, train.py arguments)]`` instead of the defaults; the
      first is the baseline of the speed-ups.
    in_process: run ``train.py``'s code (``cli.main``) in this process
      instead of a subprocess (faster to start; compilation caches are then
      shared between runs, which ``compile_time_s`` shows).

  Returns:
    ``{'baseline', 'runs': {name: {'command', 'train_time_s',
    'compile_time_s', 'eval_time_s', 'wall_time_s', 'train_steps',
    'class_il', 'task_il', 'train_flops', 'dense_train_flops',
    'flops_ratio', 'speedup'}}}``.

  Example:
    >>> structured_train_times('PATH/TO/mnist', '/tmp/structured')
    ... # doctest: +SKIP
  """
  if configs is None:
    if not data_dir:
      raise ValueError("the default runs need data_dir (the MNIST files)")
    # Absolute: the runs start in the checkout, not in this directory.
    configs = default_runs(os.path.abspath(data_dir))
  if not configs:
    raise ValueError("no runs given")
  root = repo_root()
  runs = {}
  for name, args in configs:
    run_dir = os.path.join(os.path.abspath(workdir), name)
    argv = ["train.py", *args, f"--workdir={run_dir}", "--overwrite",
            "--noprogress", "--notensorboard"]
    say(f"structured runs: {name}")
    _run_train_py(argv, root, run_dir, in_process)
    runs[name] = {
        "command": "python experiments/train.py " + " ".join(argv[1:]),
        **read_run(run_dir)}
  baseline = configs[0][0]
  for r in runs.values():
    r["speedup"] = runs[baseline]["train_time_s"] / r["train_time_s"]
  return {"baseline": baseline, "runs": runs}


def _run_train_py(argv: list[str], root: str, run_dir: str,
                  in_process: bool) -> None:
  """One train.py run; raises RuntimeError, with its output's tail, if it
  fails."""
  if in_process:
    from sparcl_jax.training import cli  # pylint: disable=import-outside-toplevel
    # The configs name their nested flagfiles relative to the checkout.
    cwd = os.getcwd()
    os.chdir(root)
    try:
      status = cli.main(argv)
    finally:
      os.chdir(cwd)
    if status:
      raise RuntimeError(f"train.py {' '.join(argv[1:])} exited with "
                         f"status {status}")
    return
  os.makedirs(os.path.dirname(run_dir), exist_ok=True)
  log_path = run_dir + ".log"
  # This checkout's package first, so that its train.py runs its own code
  # whatever is installed.
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (root, env.get("PYTHONPATH")) if p)
  with open(log_path, "w") as log:
    status = subprocess.run(
        [sys.executable, os.path.join("experiments", "train.py"),
         *argv[1:]], cwd=root, env=env, stdout=log,
        stderr=subprocess.STDOUT, check=False).returncode
  if status:
    with open(log_path) as log:
      tail = log.read()[-2000:]
    raise RuntimeError(f"train.py {' '.join(argv[1:])} exited with status "
                       f"{status}; the end of {log_path}:\n{tail}")
