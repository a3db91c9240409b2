"""CLNP's pruning search: the activity threshold that keeps accuracy in margin.

:func:`prune_by_threshold` keeps the free units above a threshold;
:func:`graceful_forgetting_search` picks the most aggressive threshold whose
validation accuracy stays within a margin of the unpruned one.
"""

from __future__ import annotations

from typing import (Any, Callable, Mapping, NamedTuple, Optional, Sequence,
                    Union)

import numpy as np

from sparcl_jax.clnp.partition import NoFreeUnitsError
from sparcl_jax.errors import ConfigError

# Steps of 0.01: with thousands of units a coarser grid overshoots the margin
# by hundreds of units per task, and each candidate costs one validation pass.
DEFAULT_QUANTILES = tuple(round(1.0 - i / 100, 2) for i in range(101))


def prune_by_threshold(activity: Mapping[str, np.ndarray],
                       free_units: Mapping[str, np.ndarray],
                       theta: Union[float, Mapping[str, float]]
                       ) -> dict[str, np.ndarray]:
  """Keeps the free units whose activity is strictly above ``theta``.

  Args:
    activity: ``{layer: float[units]}`` from :func:`unit_activity`.
    free_units: ``{layer: bool[units]}``, i.e. ``~used``.
    theta: one threshold, or one per layer.

  Returns:
    ``{layer: bool[units]}`` of kept units (a subset of the free ones).

  Examples:
    >>> act = {'hidden_0': np.array([0.0, 0.2, 0.01, 0.3])}
    >>> used = {'hidden_0': np.array([True, False, False, False])}
    >>> kept = prune_by_threshold(act, {k: ~u for k, u in used.items()}, 0.05)
    >>> kept['hidden_0'].tolist()
    [False, True, False, True]
  """
  kept = {}
  for name, free in free_units.items():
    t = theta[name] if isinstance(theta, Mapping) else theta
    kept[name] = np.asarray(free, bool) & (np.asarray(activity[name]) > t)
  return kept


class SearchResult(NamedTuple):
  """Outcome of :func:`graceful_forgetting_search`.

  Attributes:
    theta: chosen threshold (a float, or a per-layer dict with
      ``per_layer=True``); ``-inf`` when no candidate passed.
    quantile: the quantile theta came from, ``None`` for the fallback.
    kept: ``{layer: bool[units]}`` kept at ``theta``.
    accuracy: validation accuracy at ``theta`` (percent).
    accepted: whether ``accuracy >= acc_before - margin``.
    tuned: what ``finetune_fn`` returned at ``theta`` (``None`` without it).
    trials: ``(quantile, accuracy)`` of every evaluated candidate, in order.

  Examples:
    >>> act = {'hidden_0': np.array([0.0, 0.2, 0.01, 0.3])}
    >>> free = {'hidden_0': np.array([False, True, True, True])}
    >>> evaluate = lambda kept: 97.0  # accuracy with the cut applied
    >>> res = graceful_forgetting_search(evaluate, act, free, 1.0, 97.5)
    >>> res.quantile, res.accepted, res.trials
    (1.0, True, ((1.0, 97.0),))
  """

  theta: Union[float, dict[str, float]]
  quantile: Optional[float]
  kept: dict[str, np.ndarray]
  accuracy: float
  accepted: bool
  tuned: Any
  trials: tuple[tuple[float, float], ...]


def _thresholds(activities, free_units, q: float, per_layer: bool):
  if per_layer:
    # A full layer keeps nothing new whatever its threshold.
    return {name: (float(np.quantile(np.asarray(activities[name])[free], q))
                   if free.any() else np.inf)
            for name, free in free_units.items()}
  pooled = np.concatenate([np.asarray(activities[name])[free]
                           for name, free in free_units.items()])
  return float(np.quantile(pooled, q))


def graceful_forgetting_search(
    evaluate_fn: Callable[..., float],
    activities: Mapping[str, np.ndarray],
    free_units: Mapping[str, np.ndarray],
    margin: float,
    acc_before: float,
    candidate_quantiles: Sequence[float] = DEFAULT_QUANTILES,
    *,
    finetune_fn: Optional[Callable[[dict[str, np.ndarray]], Any]] = None,
    per_layer: bool = False,
    strategy: str = "scan") -> SearchResult:
  """Chooses the most aggressive threshold whose accuracy stays in margin.

  Candidates are quantiles of the free units' activities, pooled over layers
  (the paper speaks of one theta (?)) or, with ``per_layer=True``, one
  quantile threshold per layer, which prunes more evenly when the layers'
  activity scales differ. With ``strategy="scan"`` they are tried from the
  highest quantile down and the first whose validation accuracy is
  ``>= acc_before - margin`` wins; ``strategy="bisect"`` assumes accuracy
  falls as the quantile rises and binary-searches the candidates for the
  highest that passes (about log2 of their number evaluations: the choice
  when each evaluation fine-tunes). If none passes, every free unit is kept
  (``theta = -inf``). Thresholds that keep the same units are evaluated
  once.

  Args:
    evaluate_fn: ``evaluate_fn(kept) -> accuracy`` in percent, with the cut
      applied (e.g. via :func:`apply_cut`); with ``finetune_fn`` it is called
      as ``evaluate_fn(kept, tuned)``.
    activities: ``{layer: float[units]}``.
    free_units: ``{layer: bool[units]}`` free before this task's commit.
    margin: accepted accuracy loss in percent points, in ``[0, 100]``.
    acc_before: validation accuracy before pruning, in percent.
    candidate_quantiles: quantiles in ``[0, 1]`` to try.
    finetune_fn: optional ``finetune_fn(kept) -> tuned`` run before each
      evaluation (the "with fine-tuning" variant).
    per_layer: one quantile threshold per layer instead of a pooled one.
    strategy: ``"scan"`` (every candidate from the top, exact for any
      accuracy curve) or ``"bisect"`` (binary search, for monotone curves).

  Returns:
    A :class:`SearchResult`.

  Examples:
    >>> act = {'hidden_0': np.array([0.0, 0.2, 0.01, 0.3])}
    >>> free = {'hidden_0': np.array([False, True, True, True])}
    >>> # Stand-in for the accuracy of apply_cut(params, specs, used, kept):
    >>> acc = lambda kept: 95.0 + kept['hidden_0'].sum()
    >>> res = graceful_forgetting_search(acc, act, free, margin=1.0,
    ...                                  acc_before=97.5)
    >>> res.quantile, res.accuracy, res.kept['hidden_0'].tolist()
    (0.49, 97.0, [False, True, False, True])
  """
  if not 0.0 <= margin <= 100.0:
    raise ConfigError(f"margin must be in [0, 100] percent points, got "
                      f"{margin}")
  if not 0.0 <= acc_before <= 100.0:
    raise ConfigError(f"acc_before must be a percentage in [0, 100], got "
                      f"{acc_before}")
  qs = sorted({float(q) for q in candidate_quantiles}, reverse=True)
  if not qs or not all(0.0 <= q <= 1.0 for q in qs):
    raise ConfigError(f"candidate_quantiles must be non-empty and in [0, 1], "
                      f"got {list(candidate_quantiles)}")
  free_units = {k: np.asarray(v, bool) for k, v in free_units.items()}
  if not any(f.any() for f in free_units.values()):
    raise NoFreeUnitsError("graceful_forgetting_search: no free units to "
                           "prune; use a wider network")
  floor = acc_before - margin
  seen: dict[bytes, tuple[float, Any]] = {}
  trials = []

  def run(kept):
    key = b"".join(kept[k].tobytes() for k in sorted(kept))
    if key not in seen:
      if finetune_fn is None:
        seen[key] = (float(evaluate_fn(kept)), None)
      else:
        tuned = finetune_fn(kept)
        seen[key] = (float(evaluate_fn(kept, tuned)), tuned)
    return seen[key]

  def trial(q):
    theta = _thresholds(activities, free_units, q, per_layer)
    kept = prune_by_threshold(activities, free_units, theta)
    acc, tuned = run(kept)
    trials.append((q, acc))
    return SearchResult(theta, q, kept, acc, acc >= floor, tuned, ())

  if strategy == "scan":
    for q in qs:
      res = trial(q)
      if res.accepted:
        return res._replace(trials=tuple(trials))
  elif strategy == "bisect":
    # qs is descending: passing candidates are a suffix. Find its start.
    fail, best = -1, None
    lo_pass = len(qs)
    while lo_pass - fail > 1:
      mid = (fail + lo_pass) // 2
      res = trial(qs[mid])
      if res.accepted:
        lo_pass, best = mid, res
      else:
        fail = mid
    if best is not None:
      return best._replace(trials=tuple(trials))
  else:
    raise ConfigError(f"strategy must be 'scan' or 'bisect', got "
                      f"{strategy!r}")
  kept = {k: f.copy() for k, f in free_units.items()}
  acc, tuned = run(kept)
  return SearchResult(-np.inf, None, kept, acc, acc >= floor, tuned,
                      tuple(trials))
