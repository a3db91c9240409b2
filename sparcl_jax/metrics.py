"""Continual-learning metrics over an accuracy matrix, and jittable
per-example correctness for Class-IL and Task-IL evaluation.

Throughout, ``R`` is a [T, T] array with ``R[i, j]`` the accuracy (percent) on
task j after training task i.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _as_matrix(R: np.ndarray) -> np.ndarray:
  R = np.asarray(R, dtype=np.float64)
  if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
    raise ValueError(
        f"Accuracy matrix must be square [T, T] with T >= 1, got {R.shape}.")
  return R


def average_accuracy(R: np.ndarray) -> float:
  """Mean accuracy over all tasks after the last task.

  Args:
    R: accuracy matrix [T, T].

  Returns:
    ``mean(R[T-1, :])``.

  Examples:
    >>> average_accuracy([[90., 10.], [70., 80.]])
    75.0
  """
  R = _as_matrix(R)
  return float(R[-1].mean())


def average_forgetting(R: np.ndarray) -> float:
  """Mean drop from each old task's best accuracy to its final accuracy.

  For each task j < T-1: ``max_{i in [j, T-2]} R[i, j] - R[T-1, j]``.

  Args:
    R: accuracy matrix [T, T].

  Returns:
    The mean over j < T-1, or 0.0 when T = 1.

  Examples:
    >>> average_forgetting([[90., 10.], [70., 80.]])
    20.0
  """
  R = _as_matrix(R)
  T = R.shape[0]
  if T == 1:
    return 0.0
  # Only rows j..T-2 count for task j, so blank out rows before j.
  rows = np.arange(T - 1)[:, None]
  cols = np.arange(T - 1)[None, :]
  earlier = np.where(rows >= cols, R[:-1, :-1], -np.inf)
  best = earlier.max(axis=0)
  return float(np.mean(best - R[-1, :-1]))


def backward_transfer(R: np.ndarray) -> float:
  """Mean change on old tasks between learning them and the end (BWT).

  Args:
    R: accuracy matrix [T, T].

  Returns:
    ``mean_{j < T-1} (R[T-1, j] - R[j, j])``, or 0.0 when T = 1. Negative
    values mean forgetting.

  Examples:
    >>> backward_transfer([[90., 10.], [70., 80.]])
    -20.0
  """
  R = _as_matrix(R)
  T = R.shape[0]
  if T == 1:
    return 0.0
  return float(np.mean(R[-1, :-1] - np.diag(R)[:-1]))


def forward_transfer(R: np.ndarray, baseline: np.ndarray) -> float:
  """Mean accuracy on each task just before training it, minus a baseline.

  Args:
    R: accuracy matrix [T, T].
    baseline: [T] accuracy of a reference (usually the randomly initialised
      model) on each task.

  Returns:
    ``mean_{j > 0} (R[j-1, j] - baseline[j])``, or 0.0 when T = 1.

  Examples:
    >>> forward_transfer([[90., 15.], [70., 80.]], [50., 10.])
    5.0
  """
  R = _as_matrix(R)
  b = np.asarray(baseline, dtype=np.float64).reshape(-1)
  T = R.shape[0]
  if b.shape[0] != T:
    raise ValueError(f"baseline must have {T} entries, got {b.shape[0]}.")
  if T == 1:
    return 0.0
  before = R[np.arange(T - 1), np.arange(1, T)]
  return float(np.mean(before - b[1:]))


def summarize(R_class_il: np.ndarray,
              R_task_il: np.ndarray) -> dict[str, float]:
  """Headline metrics for a run evaluated in both Class-IL and Task-IL.

  Args:
    R_class_il: Class-IL accuracy matrix [T, T].
    R_task_il: Task-IL accuracy matrix [T, T].

  Returns:
    Dict with float values under ``class_il``, ``task_il``,
    ``forgetting_class_il``, ``forgetting_task_il``, ``bwt_class_il`` and
    ``bwt_task_il``.

  Examples:
    >>> summarize([[90.]], [[99.]])['task_il']
    99.0
  """
  return {
      "class_il": average_accuracy(R_class_il),
      "task_il": average_accuracy(R_task_il),
      "forgetting_class_il": average_forgetting(R_class_il),
      "forgetting_task_il": average_forgetting(R_task_il),
      "bwt_class_il": backward_transfer(R_class_il),
      "bwt_task_il": backward_transfer(R_task_il),
  }


def _masked_argmax_correct(logits: jax.Array, y: jax.Array,
                           mask: jax.Array) -> jax.Array:
  mask = jnp.broadcast_to(jnp.asarray(mask, bool), logits.shape)
  masked = jnp.where(mask, logits, -jnp.inf)
  return jnp.argmax(masked, axis=-1) == y


def class_il_correct(logits: jax.Array, y: jax.Array,
                     seen_classes_mask: jax.Array) -> jax.Array:
  """Class-IL correctness: argmax over every class seen so far.

  Args:
    logits: float [B, C].
    y: int labels [B] (global class ids).
    seen_classes_mask: bool [C] (or [B, C]), True for classes of tasks
      trained so far.

  Returns:
    bool [B], True where the masked argmax equals ``y``.

  Examples:
    >>> class_il_correct(jnp.array([[1., 3., 2.]]), jnp.array([2]),
    ...                  jnp.array([True, False, True]))
    Array([ True], dtype=bool)
  """
  return _masked_argmax_correct(logits, y, seen_classes_mask)


def task_il_correct(logits: jax.Array, y: jax.Array,
                    task_classes_mask: jax.Array) -> jax.Array:
  """Task-IL correctness: argmax within the example's own task's classes.

  Args:
    logits: float [B, C].
    y: int labels [B] (global class ids).
    task_classes_mask: bool [C] when the whole batch comes from one task, or
      [B, C] with each example's task classes.

  Returns:
    bool [B], True where the masked argmax equals ``y``.

  Examples:
    >>> task_il_correct(jnp.array([[5., 1., 2.]]), jnp.array([2]),
    ...                 jnp.array([False, True, True]))
    Array([ True], dtype=bool)
  """
  return _masked_argmax_correct(logits, y, task_classes_mask)
