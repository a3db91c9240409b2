"""The small CNN of Zenke et al. 2017, used by CLNP on split CIFAR-10/100.

Its convolutions take their gradients from ``conv_with_canonical_gradients``
(fast inside the library's loops on a CPU).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax

from sparcl_jax.clnp.specs import cnn_layer_specs
from sparcl_jax.errors import ConfigError
from sparcl_jax.models.conv import conv_with_canonical_gradients
from sparcl_jax.models.heads import ACT_SUFFIX, OutputHead
from sparcl_jax.models.registry import ModelArgs, ModelSpec, register


class ZenkeCNN(nn.Module):
  """conv32-conv32-pool-conv64-conv64-pool-dense512, dropout, output head.

  Layers are named ``conv_0 .. conv_3`` and ``dense_0``; their post-ReLU
  activations (before pooling) are sown as ``<name>_act``. Dropout is active
  only with ``train=True`` and then needs a ``'dropout'`` rng.

  Attributes:
    num_outputs: number of logits.
    head: ``'shared'`` or ``'multi'``.
    head_sizes: classes per task, for ``head='multi'``.
    width_multiplier: scales every hidden width (CLNP used wide versions).
    conv_general_dilated: the convolution primitive; the default gives the
      same values as ``lax.conv_general_dilated`` with gradients that stay
      fast inside loops on a CPU.

  Examples:
    >>> model = ZenkeCNN(num_outputs=10)
    >>> v = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    >>> model.apply(v, jnp.zeros((2, 32, 32, 3))).shape
    (2, 10)
  """

  num_outputs: int = 10
  head: str = "shared"
  head_sizes: Optional[Sequence[int]] = None
  width_multiplier: int = 1
  conv_general_dilated: Callable = conv_with_canonical_gradients

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Computes logits.

    Args:
      x: normalised float images [B, H, W, C].
      train: enables dropout (pass ``rngs={'dropout': key}``).

    Returns:
      Logits [B, num_outputs].

    Examples:
      >>> x = jnp.zeros((2, 32, 32, 3))
      >>> v = ZenkeCNN(10).init(jax.random.key(0), x)
      >>> logits = ZenkeCNN(10).apply(v, x, train=True,
      ...                             rngs={'dropout': jax.random.key(1)})
      >>> logits.shape
      (2, 10)
    """
    w = int(self.width_multiplier)
    h = x
    conv_specs = ((32, "SAME"), (32, "VALID"), (64, "SAME"), (64, "VALID"))
    for i, (width, padding) in enumerate(conv_specs):
      name = f"conv_{i}"
      conv = nn.Conv(width * w, (3, 3), padding=padding, name=name,
                     conv_general_dilated=self.conv_general_dilated)
      h = nn.relu(conv(h))
      self.sow("intermediates", name + ACT_SUFFIX, h)
      if i % 2 == 1:
        h = nn.max_pool(h, (2, 2), strides=(2, 2))
        h = nn.Dropout(0.25, deterministic=not train)(h)
    h = h.reshape((h.shape[0], -1))
    h = nn.relu(nn.Dense(512 * w, name="dense_0")(h))
    self.sow("intermediates", "dense_0" + ACT_SUFFIX, h)
    h = nn.Dropout(0.5, deterministic=not train)(h)
    return OutputHead(self.head, self.num_outputs, self.head_sizes,
                      name="head")(h)


def _build(args: ModelArgs) -> ZenkeCNN:
  if args.width_multiplier < 1:
    raise ConfigError(
        f"width_multiplier must be >= 1, got {args.width_multiplier}.")
  return ZenkeCNN(args.num_outputs, args.head, args.head_sizes,
                  int(args.width_multiplier), args.conv)


register(ModelSpec(
    name="zenke_cnn", build=_build,
    # SparCL's rule (hidden_* kernels, ResNet block convs) names none of its
    # layers: sparse runs choose them with --sparse_layers.
    sparse_filter=lambda path, leaf: False,
    clnp_layer_specs=cnn_layer_specs, order=20))
