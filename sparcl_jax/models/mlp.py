"""Fully connected ReLU network (CLNP's permuted-MNIST model)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax

from sparcl_jax.clnp.specs import mlp_layer_specs
from sparcl_jax.errors import ConfigError
from sparcl_jax.sparse.grouped import check_group
from sparcl_jax.models.grouped_dense import GroupedSparseDense
from sparcl_jax.models.heads import ACT_SUFFIX, OutputHead
from sparcl_jax.models.registry import ModelArgs, ModelSpec, register
from sparcl_jax.models.registry import largest_divisor_up_to


class MLP(nn.Module):
  """Flattens the input, applies Dense+ReLU layers, then an output head.

  Hidden layers are named ``hidden_0``, ``hidden_1``, ...; their post-ReLU
  activations are sown to ``intermediates`` as ``hidden_<i>_act``.

  Attributes:
    hidden_sizes: units per hidden layer.
    num_outputs: number of logits.
    head: ``'shared'`` or ``'multi'`` (see ``OutputHead``).
    head_sizes: classes per task, for ``head='multi'``.
    group: 0 for dense hidden layers; else each hidden layer is a
      :class:`GroupedSparseDense` with blocks of ``group`` output units
      keeping ``round((1 - sparsity) * fan_in)`` input rows each (the
      ``'sparsity'`` collection holds the kept rows).
    sparsity: weight sparsity of the grouped hidden layers.
    kept_fan_in_init: the grouped layers draw their kept weights at the
      kept fan-in (see :class:`GroupedSparseDense`); False cuts them from a
      dense kernel.

  Examples:
    >>> model = MLP((100, 100), 10)
    >>> v = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    >>> model.apply(v, jnp.zeros((2, 28, 28, 1))).shape
    (2, 10)
  """

  hidden_sizes: Sequence[int] = (100, 100)
  num_outputs: int = 10
  head: str = "shared"
  head_sizes: Optional[Sequence[int]] = None
  group: int = 0
  sparsity: float = 0.0
  kept_fan_in_init: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Computes logits.

    Args:
      x: float array [B, ...] (NHWC images or already flat vectors).
      train: unused; kept so every model has the same call signature.

    Returns:
      Logits [B, num_outputs].

    Examples:
      >>> x = jnp.ones((2, 4))
      >>> v = MLP((8,), 2).init(jax.random.key(0), x)
      >>> MLP((8,), 2).apply(v, x).shape
      (2, 2)
    """
    del train
    h = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden_sizes):
      name = f"hidden_{i}"
      if self.group:
        layer = GroupedSparseDense(int(width), self.group, self.sparsity,
                                   kept_fan_in_init=self.kept_fan_in_init,
                                   name=name)
      else:
        layer = nn.Dense(int(width), name=name)
      h = nn.relu(layer(h))
      self.sow("intermediates", name + ACT_SUFFIX, h)
    return OutputHead(self.head, self.num_outputs, self.head_sizes,
                      name="head")(h)


def _build(args: ModelArgs) -> MLP:
  hidden = tuple(int(h) for h in args.hidden_sizes)
  if any(h < 1 for h in hidden):
    raise ConfigError(f"hidden_sizes must be positive, got {hidden}.")
  if args.group:
    for width in hidden:
      check_group(width, args.group)
  return MLP(hidden, args.num_outputs, args.head, args.head_sizes,
             args.group, args.sparsity, args.kept_fan_in_init)


def sparse_layers(path: str, leaf: Any) -> bool:
  """The MLP's sparse layers: the 2-D kernels of its hidden layers.

  Args:
    path: ``'/'``-joined parameter path.
    leaf: the parameter (only its rank is read).

  Returns:
    Whether SparCL keeps the leaf sparse; the head stays dense.

  Examples:
    >>> import numpy as np
    >>> sparse_layers("hidden_1/kernel", np.zeros((4, 3)))
    True
    >>> sparse_layers("head/kernel", np.zeros((3, 2)))
    False
  """
  parts = path.split("/")
  return (len(getattr(leaf, "shape", ())) == 2 and len(parts) >= 2 and
          parts[-1] == "kernel" and parts[-2].startswith("hidden_"))


# Blocks of 50 output units: the best Class-IL of 25, 50, 100 and 250 on
# the structured MLP 784-2000-2000 configs at sparsity 0.90 and 0.95
# (docs/performance.md), and what every structured MLP config sets; the largest
# divisor of the widths up to 50 elsewhere (50 at 100, 400 and 2000).
register(ModelSpec(name="mlp", build=_build, sparse_filter=sparse_layers,
                   clnp_layer_specs=mlp_layer_specs, grouped=True,
                   grouped_widths=lambda args: {
                       f"hidden_{i}": int(w)
                       for i, w in enumerate(args.hidden_sizes)},
                   default_group=lambda widths: largest_divisor_up_to(
                       widths, 50), order=0))
