"""Timing samples that stay comparable on a busy machine.

Variants are timed interleaved (round-robin) so that the machine's load
(other processes, frequency changes) weighs evenly on all of them, and are
summarised by their median and quartiles rather than a mean a single stall
can move. Compilation is counted apart from the timed calls.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from sparcl_jax.training import timing


def say(message: str) -> None:
  """Prints a timestamped progress line to stderr.

  Progress goes to stderr so that stdout holds only the tables.

  Args:
    message: what the benchmark is doing now.

  Example:
    >>> say('steps of mlp')  # doctest: +SKIP
    [benchmark 12:00:00] steps of mlp
  """
  print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr,
        flush=True)


class CompileCounter(timing.CompileTimer):
  """The library's compile timer, with ``count`` for its XLA compilations.

  ``seconds`` covers tracing, lowering and XLA compilation
  (:class:`sparcl_jax.training.timing.CompileTimer`).

  Example:
    >>> with CompileCounter() as counter:
    ...   _ = jax.jit(lambda x: x + 1)(1.0)
    >>> counter.count
    1
  """

  @property
  def count(self) -> int:
    return self.compiles


class StepBench(NamedTuple):
  """One compiled training chunk ready to be called repeatedly.

  Attributes:
    call: ``call(rep) -> outputs``; runs ``steps`` train steps.
    steps: train steps per call.
    examples_per_step: forward/backward examples per step (replay included).
    macs_per_example: forward MACs of one example (dense).
    compile_s: seconds of the first (compiling) call.
    compiles: XLA compilations of the first call.
    note: how the step was built.
  """

  call: Callable[[int], Any]
  steps: int
  examples_per_step: int
  macs_per_example: int
  compile_s: float
  compiles: int
  note: str


def time_interleaved(fns: dict[str, Callable[[int], Any]], repeats: int
                     ) -> dict[str, list[float]]:
  """Times each function ``repeats`` times, round-robin, in seconds.

  Interleaving spreads the machine's load (other processes, frequency
  changes) evenly over the variants, so their ratios stay meaningful on a
  busy machine.

  Args:
    fns: name -> ``fn(rep)``; its result is blocked on.
    repeats: calls per function.

  Returns:
    name -> list of ``repeats`` wall times.

  Example:
    >>> t = time_interleaved({'a': lambda r: jnp.ones(3)}, 2)
    >>> len(t['a'])
    2
  """
  times = {name: [] for name in fns}
  for rep in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(rep))
      times[name].append(time.perf_counter() - start)
  return times


def summarize(samples: Sequence[float], scale: float = 1.0) -> dict:
  """Median, quartiles, min and relative spread of timing samples.

  Args:
    samples: the measurements.
    scale: factor applied to every value (e.g. 1e3 / steps for ms/step).

  Returns:
    ``{'median', 'p25', 'p75', 'min', 'spread', 'n'}``; ``spread`` is the
    interquartile range over the median.

  Example:
    >>> summarize([1.0, 2.0, 3.0])['median']
    2.0
  """
  x = np.asarray(samples, np.float64) * scale
  median = float(np.median(x))
  p25, p75 = (float(v) for v in np.percentile(x, [25, 75]))
  return {"median": median, "p25": p25, "p75": p75, "min": float(x.min()),
          "spread": (p75 - p25) / median if median else 0.0, "n": len(x)}


def first_call(fn: Callable[[], Any]) -> tuple[float, int]:
  """Wall seconds and XLA compilations of one (compiling) call.

  Args:
    fn: the call; its result is blocked on.

  Returns:
    ``(seconds, compilations)``.

  Example:
    >>> first_call(lambda: jax.jit(lambda x: x - 1)(2.0))[1]
    1
  """
  with CompileCounter() as counter:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    seconds = time.perf_counter() - start
  return seconds, counter.count


def whole_epoch(call: Callable[[int], Any], num_calls: int
                ) -> Callable[[int], Any]:
  """``fn(rep)`` running chunk calls ``0..num_calls-1``: one simulated epoch.

  Timing a whole epoch per sample keeps work that happens at set steps of an
  epoch (SparCL's drop-and-grow, DGM refreshes) in every sample, instead of
  making per-chunk times bimodal.

  Args:
    call: ``call(i)`` runs chunk ``i`` of the epoch.
    num_calls: chunks per epoch.

  Returns:
    ``epoch(rep)``, returning the last chunk's output.

  Example:
    >>> seen = []
    >>> whole_epoch(lambda i: seen.append(i) or i, 3)(0), seen
    (2, [0, 1, 2])
  """

  def epoch(rep):
    del rep
    out = None
    for i in range(num_calls):
      out = call(i)
    return out

  return epoch
