"""Wall time of a run split into compilation and execution.

JAX reports every tracing, lowering and XLA compilation through
``jax.monitoring``; summing those events is how a run tells the seconds it
spent compiling from the seconds it spent training, without compiling
anything twice or guessing which call compiled.
"""

from __future__ import annotations

import time
from typing import Any

import jax

# The three stages of turning a Python function into an executable, as
# ``jax._src.dispatch`` names them.
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
BACKEND_COMPILE_EVENT = COMPILE_EVENTS[2]


class CompileTimer:
  """Sums the seconds JAX spends tracing, lowering and compiling.

  Use as a context manager (or ``start()`` / ``stop()``); ``seconds`` and
  ``compiles`` (XLA compilations) grow while it is active. ``mark()`` and
  ``excluding_compiles(mark)`` time a block of work net of the compilation
  that happened inside it.

  Examples:
    >>> with CompileTimer() as timer:
    ...   since = timer.mark()
    ...   _ = jax.jit(lambda x: x * 3.0)(1.0)
    ...   net = timer.excluding_compiles(since)
    >>> timer.compiles, timer.seconds > 0, net >= 0
    (1, True, True)
  """

  def __init__(self):
    self.seconds = 0.0
    self.compiles = 0
    self._active = False

  def _listener(self, event: str, duration: float, **kwargs) -> None:
    del kwargs
    if not self._active or event not in COMPILE_EVENTS:
      return
    self.seconds += float(duration)
    if event == BACKEND_COMPILE_EVENT:
      self.compiles += 1

  def start(self) -> "CompileTimer":
    """Starts listening; returns self."""
    if not self._active:
      self._active = True
      jax.monitoring.register_event_duration_secs_listener(self._listener)
    return self

  def stop(self) -> None:
    """Stops listening; the totals stay readable."""
    if self._active:
      self._active = False
      jax.monitoring.unregister_event_duration_listener(self._listener)

  def __enter__(self) -> "CompileTimer":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()

  def mark(self) -> tuple[float, float]:
    """The current wall clock and compile total, for ``excluding_compiles``."""
    return time.perf_counter(), self.seconds

  def excluding_compiles(self, since: tuple[float, float]) -> float:
    """Wall seconds since ``since`` minus the compilation inside them.

    Args:
      since: a value of :meth:`mark`.

    Returns:
      The seconds, never negative.
    """
    wall = time.perf_counter() - since[0]
    return max(0.0, wall - (self.seconds - since[1]))


def results_keys(compiles: CompileTimer, train_time: float, eval_time: float,
                 train_steps: int) -> dict[str, Any]:
  """The timing keys of results.json (see docs/reference/results-json.md).

  Args:
    compiles: the run's compile timer.
    train_time: seconds in training epochs, net of compilation.
    eval_time: seconds in evaluation, net of compilation.
    train_steps: train steps this process ran (a resumed run's share).

  Returns:
    ``compile_time_s``, ``compiles``, ``train_time_s``, ``eval_time_s``,
    ``train_steps`` and ``ms_per_step`` (training and evaluation per train
    step, compilation excluded).

  Examples:
    >>> results_keys(CompileTimer(), 2.0, 1.0, 100)["ms_per_step"]
    30.0
  """
  return {"compile_time_s": compiles.seconds, "compiles": compiles.compiles,
          "train_time_s": train_time, "eval_time_s": eval_time,
          "train_steps": train_steps,
          "ms_per_step": (1e3 * (train_time + eval_time) / train_steps
                          if train_steps else 0.0)}


__all__ = ["COMPILE_EVENTS", "CompileTimer", "results_keys"]
