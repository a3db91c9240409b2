"""Training-FLOPs bookkeeping of a run, epoch by epoch.

The counts follow SparCL's model (see :mod:`sparcl_jax.flops`): every example
processed, from the stream or the buffer, costs a forward and a backward
pass whose sparse layers are discounted by their weight and gradient
sparsity at that epoch.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from sparcl_jax import flops as flops_lib


@dataclasses.dataclass
class FlopsCounter:
  """Accumulates sparse and dense training FLOPs over a run.

  Attributes:
    layer_macs: forward MACs per example of each kernel path.
    train_flops: FLOPs counted with the run's sparsity.
    dense_train_flops: the same examples counted as fully dense.
    examples: stream plus buffer examples processed.

  Examples:
    >>> counter = FlopsCounter({"w": 10})
    >>> counter.add(4, {"w": 0.5, "b": 0.5}, {"w": 0.5})  # "b": no MACs
    120.0
    >>> counter.train_flops, counter.dense_train_flops
    (120.0, 240.0)
  """

  layer_macs: Mapping[str, int]
  train_flops: float = 0.0
  dense_train_flops: float = 0.0
  examples: int = 0

  def add(self, num_examples: int, weight_sparsity: Mapping[str, float],
          grad_sparsity: Mapping[str, float]) -> float:
    """Counts ``num_examples`` training examples; returns their FLOPs.

    The sparsities come from the run's own parameter tree, the one
    ``layer_macs`` was traced on, so a path missing from ``layer_macs`` is a
    masked leaf that no matrix product uses (a bias under a broad
    ``--sparse_layers``): it costs no MACs and is left out, where
    ``train_flops`` would refuse it.
    """
    known = lambda tree: {p: s for p, s in tree.items()
                          if p in self.layer_macs}
    sparse = flops_lib.train_flops(self.layer_macs, known(weight_sparsity),
                                   known(grad_sparsity), num_examples)
    self.train_flops += sparse
    self.dense_train_flops += flops_lib.dense_train_flops(self.layer_macs,
                                                          num_examples)
    self.examples += int(num_examples)
    return sparse


def replayed_examples(num_steps: int, batch_size: int, replay_batch: int,
                      replay_terms: int, replay_active: bool,
                      buffer_seen_before: int) -> int:
  """Buffer examples a run of ``num_steps`` steps replays.

  Replay starts only once the buffer has seen ``replay_batch`` examples, so
  the first steps of the first task replay nothing.

  Args:
    num_steps: stream steps of the epoch.
    batch_size: stream examples offered to the buffer per step.
    replay_batch: buffer examples per replay term.
    replay_terms: replay forward passes per step (ER/DER: 1, DER++: 2).
    replay_active: whether this task replays at all.
    buffer_seen_before: examples the buffer had seen before the epoch.

  Returns:
    The number of replayed examples.

  Examples:
    >>> replayed_examples(10, 4, 8, 2, True, 0)  # steps 2..9 replay
    128
  """
  if not replay_active or replay_terms == 0:
    return 0
  steps_without = 0
  if buffer_seen_before < replay_batch:
    missing = replay_batch - buffer_seen_before
    steps_without = min(num_steps, -(-missing // batch_size))
  return (num_steps - steps_without) * replay_terms * replay_batch
