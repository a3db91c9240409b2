"""The human-readable tables printed after a benchmark run.

Pure formatting of the results dict (the JSON the run writes), so a saved
``benchmark.json`` can be printed again without rerunning anything.
"""

from __future__ import annotations


def format_table(results: dict) -> str:
  """The human-readable summary printed after a full or ``--quick`` run.

  Args:
    results: the dict of :func:`~benchmarks.suite.run_benchmark`.

  Returns:
    The table as text.

  Example:
    >>> import json
    >>> print(format_table(json.load(open('benchmark.json'))))
    ... # doctest: +SKIP
  """
  env = results["environment"]
  lines = [f"device {env['device']}, {env['cpu_count']} CPUs, jax "
           f"{env['jax']}, flax {env['flax']}, optax {env['optax']}",
           f"matmul {results['matmul']['n']}^2: "
           f"{results['matmul']['flops_per_s'] / 1e9:.1f} GFLOP/s", ""]
  header = (f"{'model':<28}{'step':<15}{'ms/step':>9}{'IQR%':>7}"
            f"{'x plain':>9}{'compile s':>11}{'GFLOP/s':>9}{'% peak':>8}")
  lines.append(header)
  for model, variants in results["steps"].items():
    for name, r in variants.items():
      ms = r["ms_per_step"]
      lines.append(
          f"{model:<28}{name:<15}{ms['median']:>9.2f}"
          f"{100 * ms['spread']:>7.1f}{r.get('ratio_to_plain', 1.0):>9.2f}"
          f"{r['compile_s']:>11.1f}{r['flops_per_s'] / 1e9:>9.1f}"
          f"{100 * r['fraction_of_peak']:>8.1f}")
    peak = next(iter(variants.values()))["peak_flops_per_s"]
    lines.append(f"{'':<28}interleaved matmul reference: {peak / 1e9:.1f} "
                 "GFLOP/s")
    lines.extend(paired_ratio_lines(variants, " " * 28))
  lines.append("")
  lines.extend(format_conv_table(results.get("conv_steps", {})))
  for name, r in results["epoch_throughput"].items():
    lines.append(f"epoch {name}: {r['examples_per_s']:.0f} examples/s, "
                 f"{r['epoch_ms_per_step']['median']:.2f} ms/step vs bare "
                 f"{r['bare_ms_per_step']['median']:.2f} -> "
                 f"{r['ratio_to_bare']:.3f}x")
  for n, r in results["compiles"].items():
    lines.append(f"whole run, {n} tasks: {r['compiles']} compilations "
                 f"({r['compile_s']:.1f} s), {r['compiles_after_first_task']}"
                 f" after task 1, {r['wall_s']:.1f} s wall, "
                 f"{r['eval_s']:.2f} s evaluating")
  for sweep, points in results.get("scaling", {}).items():
    lines.append(f"scaling DER++ step vs {sweep}: " + ", ".join(
        f"{v}: {ms:.2f} ms" for v, ms in points.items()))
  if "split_mnist_savings" in results:
    s = results["split_mnist_savings"]
    lines.append(
        f"Split MNIST ({s['data']}): DER++ {s['derpp']['wall_s']:.1f} s, "
        f"SparCL-DER++ {s['sparcl_derpp']['wall_s']:.1f} s "
        f"(x{s['wall_ratio']:.2f} wall, x{s['examples_ratio']:.2f} examples,"
        f" x{s['flops_ratio']:.2f} FLOPs counted sparse)")
  mem = results["memory"]
  lines.append(f"peak host RSS {mem['host_peak_rss_mb']:.0f} MB, device peak "
               f"{mem['device_peak_bytes']}")
  lines.append(f"total {results['total_s']:.0f} s")
  return "\n".join(lines)


def format_conv_table(conv: dict) -> list[str]:
  """Lines of the conv-model table: each step against its bare step.

  Args:
    conv: the dict of :func:`~benchmarks.conv.conv_steps`.

  Returns:
    The lines (empty without conv results).

  Example:
    >>> format_conv_table({})
    []
  """
  lines = []
  for model, variants in conv.items():
    shape = "x".join(str(v) for v in variants.get("input_shape", []))
    lines.append(f"{model} ({shape}, batch 32){'':<6}{'ms/step':>9}"
                 f"{'IQR%':>7}{'x bare':>8}{'compile s':>11}")
    for name, r in variants.items():
      if name == "input_shape":
        continue
      ms = r["ms_per_step"]
      ratio = r.get("ratio_to_bare")
      lines.append(f"  {name:<32}{ms['median']:>9.1f}"
                   f"{100 * ms['spread']:>7.1f}"
                   f"{'' if ratio is None else f'{ratio:.3f}':>8}"
                   f"{r['compile_s']:>11.1f}")
    lines.extend(paired_ratio_lines(variants, "  "))
    lines.append("")
  return lines


# (variant, its ratio key, label) of the ratios between paired variants.
_PAIRED_RATIOS = (("sparcl_derpp", "ratio_to_derpp", "SparCL-DER++ / DER++"),
                  ("clnp", "ratio_to_finetune", "CLNP / fine-tuning (adam)"))


def paired_ratio_lines(variants: dict, indent: str) -> list[str]:
  """SparCL-DER++ / DER++ and CLNP / Adam fine-tuning, where both ran.

  Args:
    variants: one model's results of
      :func:`~benchmarks.variants.benchmark_steps`.
    indent: prefix of each line.

  Returns:
    The lines.

  Example:
    >>> paired_ratio_lines({'sparcl_derpp': {'ratio_to_derpp': 0.5}}, '  ')
    ['  SparCL-DER++ / DER++ = 0.500']
  """
  return [f"{indent}{label} = {variants[name][key]:.3f}"
          for name, key, label in _PAIRED_RATIOS if name in variants]


def format_conv_epochs(epochs: dict) -> str:
  """The line of :func:`~benchmarks.conv.conv_epochs`' results.

  Args:
    epochs: its dict.

  Returns:
    One line.

  Example:
    >>> print(format_conv_epochs({'nf': 20, 'steps': 312, 'derpp': 60.2,
    ...     'sparcl_derpp': 50.7}))  # doctest: +NORMALIZE_WHITESPACE
    one 312-step epoch of ResNet-18 nf 20 on 32x32x3: DER++ 60 s,
    SparCL-DER++ 51 s
  """
  return (f"one {epochs['steps']}-step epoch of ResNet-18 nf {epochs['nf']} "
          f"on 32x32x3: DER++ {epochs['derpp']:.0f} s, SparCL-DER++ "
          f"{epochs['sparcl_derpp']:.0f} s")


def format_train_py(r: dict) -> str:
  """The line of :func:`~benchmarks.runs.train_py_against_bare`.

  Args:
    r: its dict.

  Returns:
    One line.

  Example:
    >>> print(format_train_py({'ms_per_step': 30.0, 'train_time_s': 60.0,
    ...     'eval_time_s': 3.0, 'train_steps': 2000, 'compile_time_s': 9.0,
    ...     'bare_ms_per_step': {'median': 25.0}, 'ratio': 1.2}))
    ... # doctest: +NORMALIZE_WHITESPACE
    train.py ResNet-18 nf 20, Split MNIST: 30.0 ms/step (training 60 s +
    evaluation 3 s over 2000 steps, compilation 9 s excluded); bare step
    25.0 ms -> 1.200x
  """
  return (f"train.py ResNet-18 nf 20, Split MNIST: {r['ms_per_step']:.1f} "
          f"ms/step (training {r['train_time_s']:.0f} s + evaluation "
          f"{r['eval_time_s']:.0f} s over {r['train_steps']} steps, "
          f"compilation {r['compile_time_s']:.0f} s excluded); bare step "
          f"{r['bare_ms_per_step']['median']:.1f} ms -> {r['ratio']:.3f}x")


def _variant_label(name: str) -> str:
  """``'structured_s75'`` -> ``'structured 0.75'``; ``'dense'`` -> DER++."""
  if name == "dense":
    return "dense DER++"
  structure, _, pct = name.rpartition("_s")
  return f"{structure} 0.{pct}" if pct.isdigit() and structure else name


def format_structured_steps(results: dict) -> str:
  """The per-step table of the structured-sparsity benchmark.

  Args:
    results: the dict of
      :func:`~benchmarks.structured.structured_steps`.

  Returns:
    The table as text: per batch size and variant, the median ms per step,
    the interquartile range (% of the median), the speed-up over dense
    DER++ and the compile time.

  Example:
    >>> ms = {'median': 2.0, 'spread': 0.05}
    >>> print(format_structured_steps({'hidden_sizes': '40,40',
    ...     'image_shape': [8, 8, 1], 'mask_group': 10, 'task_id': 1,
    ...     'epoch': 1, 'repeats': 2, 'batches': {'8': {
    ...     'steps_per_epoch': 4, 'steps_per_call': 4, 'buffer_size': 16,
    ...     'variants': {'dense': {'ms_per_step': ms, 'speedup': 1.0,
    ...     'compile_s': 1.5}, 'structured_s75': {'ms_per_step': ms,
    ...     'speedup': 1.0, 'compile_s': 2.0}}}}}))
    ... # doctest: +NORMALIZE_WHITESPACE
    DER++ train chunks, MLP hidden 40,40 on 8x8x1, task 1 epoch 1;
    structured: blocks of 10 outputs; 2 interleaved epochs per variant
    batch  variant              ms/step   IQR%  x dense  compile s
        8  dense DER++             2.00    5.0     1.00        1.5
        8  structured 0.75         2.00    5.0     1.00        2.0
           (4-step epochs in chunks of 4, buffer 16)
  """
  shape = "x".join(str(v) for v in results["image_shape"])
  flags = results.get("model_flags") or {}
  model = (f"{flags['model']} nf {flags.get('nf', 64)}" if flags.get("model")
           not in (None, "mlp") else f"MLP hidden {results['hidden_sizes']}")
  lines = [f"DER++ train chunks, {model} on "
           f"{shape}, task {results['task_id']} epoch {results['epoch']}; "
           f"structured: blocks of {results['mask_group']} outputs; "
           f"{results['repeats']} interleaved epochs per variant",
           f"{'batch':>5}  {'variant':<19}{'ms/step':>8}{'IQR%':>7}"
           f"{'x dense':>9}{'compile s':>11}"]
  for batch, r in results["batches"].items():
    for name, v in r["variants"].items():
      ms = v["ms_per_step"]
      lines.append(f"{batch:>5}  {_variant_label(name):<19}"
                   f"{ms['median']:>8.2f}{100 * ms['spread']:>7.1f}"
                   f"{v['speedup']:>9.2f}{v['compile_s']:>11.1f}")
    lines.append(f"{'':>5}  ({r['steps_per_epoch']}-step epochs in chunks "
                 f"of {r['steps_per_call']}, buffer {r['buffer_size']})")
  return "\n".join(lines)


def format_structured_train_times(results: dict) -> str:
  """The table of the structured-sparsity benchmark's whole runs.

  Args:
    results: the dict of
      :func:`~benchmarks.structured.structured_train_times`.

  Returns:
    The table as text: per run, training time (compilation and evaluation
    excluded), compile time, speed-up over the baseline's training time,
    training FLOPs over the dense count, and final class-IL and task-IL
    accuracy (%).

  Example:
    >>> run = {'train_time_s': 100.0, 'compile_time_s': 5.0, 'speedup': 1.0,
    ...        'flops_ratio': 1.0, 'class_il': 80.5, 'task_il': 97.25}
    >>> print(format_structured_train_times({'baseline': 'dense',
    ...     'runs': {'dense': run}}))  # doctest: +NORMALIZE_WHITESPACE
    train.py runs back to back; speed-up: dense's training time over each
    run's
    run                  train s  compile s  x dense  FLOPs/dense  class-IL
      task-IL
    dense                  100.0        5.0     1.00        1.000     80.50
        97.25
  """
  base = results["baseline"]
  lines = [f"train.py runs back to back; speed-up: {base}'s training time "
           "over each run's",
           f"{'run':<22}{'train s':>9}{'compile s':>11}{'x dense':>9}"
           f"{'FLOPs/dense':>13}{'class-IL':>10}{'task-IL':>9}"]
  for name, r in results["runs"].items():
    lines.append(f"{name:<22}{r['train_time_s']:>9.1f}"
                 f"{r['compile_time_s']:>11.1f}{r['speedup']:>9.2f}"
                 f"{r['flops_ratio']:>13.3f}{r['class_il']:>10.2f}"
                 f"{r['task_il']:>9.2f}")
  return "\n".join(lines)


def format_seed_summary(summary: dict) -> str:
  """The table of runs summarised over seeds.

  Args:
    summary: the dict of :func:`~benchmarks.structured.seed_summary`.

  Returns:
    The table as text: per config, the number of seeds, the mean training
    time (compilation and evaluation excluded) and its speed-up over the
    first config's, training FLOPs over the dense count, and class-IL and
    task-IL accuracy (%), each mean +- standard deviation.

  Example:
    >>> stat = lambda m, s: {'mean': m, 'std': s}
    >>> print(format_seed_summary({'dense': {'seeds': 3,
    ...     'train_time_s': stat(100.0, 2.0), 'speedup': 1.0,
    ...     'flops_ratio': stat(1.0, 0.0), 'class_il': stat(80.5, 0.25),
    ...     'task_il': stat(97.0, 0.5)}}))  # doctest: +NORMALIZE_WHITESPACE
    train.py runs over seeds (mean +- std); speed-up: dense's mean training
    time over each config's
    config           seeds  train s  x dense  FLOPs/dense  class-IL  task-IL
    dense                3    100.0     1.00        1.000  80.50 +- 0.25
      97.00 +- 0.50
  """
  base = next(iter(summary))
  lines = [f"train.py runs over seeds (mean +- std); speed-up: {base}'s mean "
           "training time over each config's",
           f"{'config':<17}{'seeds':>5}{'train s':>9}{'x dense':>9}"
           f"{'FLOPs/dense':>13}  {'class-IL':<15}{'task-IL'}"]
  for name, r in summary.items():
    def pm(key):
      return f"{r[key]['mean']:.2f} +- {r[key]['std']:.2f}"
    lines.append(f"{name:<17}{r['seeds']:>5}{r['train_time_s']['mean']:>9.1f}"
                 f"{r['speedup']:>9.2f}{r['flops_ratio']['mean']:>13.3f}"
                 f"  {pm('class_il'):<15}{pm('task_il')}")
  return "\n".join(lines)
