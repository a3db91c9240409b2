"""A small VGG-style CNN: two blocks of two 3x3 convs and a max-pool
(widths 32 and 64), then a dense layer and the output head.

No batch norm and no dropout, so the CLNP family can train it: its conv
filters and dense units are CLNP's units (``conv_0 .. conv_3``,
``dense_0``). SparCL keeps every conv but the first, and the dense layer,
sparse; the first conv (few weights, every pixel's features) and the head
stay dense, as in SparCL's ResNet.

Examples:
  >>> from sparcl_jax.models import registry
  >>> model = registry.make_model("small_vgg", 10)
  >>> x = jnp.zeros((2, 28, 28, 1))
  >>> variables = registry.init_model(model, jax.random.key(0), x.shape)
  >>> model.apply(variables, x).shape
  (2, 10)
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparcl_jax.clnp.specs import cnn_layer_specs
from sparcl_jax.errors import ConfigError
from sparcl_jax.models.conv import conv_with_canonical_gradients
from sparcl_jax.models.heads import ACT_SUFFIX, OutputHead
from sparcl_jax.models.registry import ModelArgs, ModelSpec, register

# Output channels of the convs, block by block.
BLOCKS = ((32, 32), (64, 64))


class SmallVGG(nn.Module):
  """conv32-conv32-pool-conv64-conv64-pool-dense, then an output head.

  Convs pad to keep their input's size; each pool halves it. Layers are
  named ``conv_0 .. conv_3`` and ``dense_0``; their post-ReLU activations
  are sown as ``<name>_act`` (before pooling), which CLNP measures.

  Attributes:
    num_outputs: number of logits.
    head: ``'shared'`` or ``'multi'``.
    head_sizes: classes per task, for ``head='multi'``.
    dense_width: units of ``dense_0``.
    conv_general_dilated: the convolution primitive (see ``ZenkeCNN``).

  Examples:
    >>> model = SmallVGG(num_outputs=4, dense_width=16)
    >>> v = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    >>> v["params"]["dense_0"]["kernel"].shape  # 8x8 pooled twice: 2x2x64
    (256, 16)
  """

  num_outputs: int = 10
  head: str = "shared"
  head_sizes: Optional[Sequence[int]] = None
  dense_width: int = 128
  conv_general_dilated: Callable = conv_with_canonical_gradients

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Computes logits.

    Args:
      x: normalised float images [B, H, W, C]; H and W divisible by 4.
      train: unused (no dropout, no batch norm); kept so every model has
        the same call signature.

    Returns:
      Logits [B, num_outputs].

    Examples:
      >>> x = jnp.zeros((2, 8, 8, 1))
      >>> v = SmallVGG(3).init(jax.random.key(0), x)
      >>> SmallVGG(3).apply(v, x, train=True).shape
      (2, 3)
    """
    del train
    h = x
    i = 0
    for widths in BLOCKS:
      for width in widths:
        name = f"conv_{i}"
        conv = nn.Conv(width, (3, 3), padding="SAME", name=name,
                       conv_general_dilated=self.conv_general_dilated)
        h = nn.relu(conv(h))
        self.sow("intermediates", name + ACT_SUFFIX, h)
        i += 1
      h = nn.max_pool(h, (2, 2), strides=(2, 2))
    h = h.reshape((h.shape[0], -1))
    h = nn.relu(nn.Dense(self.dense_width, name="dense_0")(h))
    self.sow("intermediates", "dense_0" + ACT_SUFFIX, h)
    return OutputHead(self.head, self.num_outputs, self.head_sizes,
                      name="head")(h)


def _build(args: ModelArgs) -> SmallVGG:
  if args.width_multiplier != 1:
    raise ConfigError(f"small_vgg has fixed widths (32/64); drop "
                      f"--width_multiplier={args.width_multiplier}.")
  return SmallVGG(args.num_outputs, args.head, args.head_sizes,
                  conv_general_dilated=args.conv)


def sparse_layers(path: str, leaf: Any) -> bool:
  """SmallVGG's sparse layers: ``conv_1 .. conv_3`` and ``dense_0`` kernels.

  Args:
    path: ``'/'``-joined parameter path.
    leaf: the parameter (only its rank is read).

  Returns:
    Whether SparCL keeps the leaf sparse.

  Examples:
    >>> sparse_layers("conv_2/kernel", jnp.zeros((3, 3, 32, 64)))
    True
    >>> sparse_layers("conv_0/kernel", jnp.zeros((3, 3, 1, 32)))
    False
  """
  parts = path.split("/")
  if len(parts) != 2 or parts[1] != "kernel":
    return False
  ndim = len(getattr(leaf, "shape", ()))
  return ((ndim == 4 and parts[0] in ("conv_1", "conv_2", "conv_3")) or
          (ndim == 2 and parts[0] == "dense_0"))


register(ModelSpec(name="small_vgg", build=_build,
                   sparse_filter=sparse_layers,
                   clnp_layer_specs=cnn_layer_specs, order=30))
