"""ResNet-18 as in mammoth (the DER++ and SparCL code base).

Differences from the ImageNet ResNet-18: a 3x3 stride-1 stem and no max-pool,
so 32x32 inputs keep their resolution in the first stage; ``nf`` scales every
width (64 is the standard net, 20 the "reduced" one common in CL papers).
Convolutions take their gradients from ``conv_with_canonical_gradients``, so
the train step is as fast inside the library's loops as alone on a CPU.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparcl_jax.errors import ConfigError
from sparcl_jax.models.conv import conv_with_canonical_gradients
from sparcl_jax.models.heads import ACT_SUFFIX, OutputHead
from sparcl_jax.models.registry import ModelArgs, ModelSpec, register

# PyTorch's BatchNorm momentum 0.1 weights the new batch; Flax's weights the
# running average, hence 0.9. (Flax keeps the biased batch variance in the
# running average where PyTorch keeps the unbiased one; with B*H*W values per
# channel the difference is negligible.)
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
STAGE_STRIDES = (1, 2, 2, 2)
BLOCKS_PER_STAGE = 2


def _conv3x3(features: int, stride: int, name: str,
             conv_general_dilated: Callable) -> nn.Conv:
  # Explicit padding 1 matches PyTorch; Flax's 'SAME' pads stride-2 convs
  # asymmetrically and would shift every feature map by half a pixel.
  return nn.Conv(features, (3, 3), strides=(stride, stride),
                 padding=((1, 1), (1, 1)), use_bias=False, name=name,
                 conv_general_dilated=conv_general_dilated)


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                      epsilon=BN_EPSILON, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN layers with a residual connection.

  Post-ReLU outputs are sown as ``conv1_act`` (after ``bn1``) and
  ``conv2_act`` (the block output, after the residual sum).

  Attributes:
    features: output channels.
    stride: stride of ``conv1`` and of the shortcut.
    conv_general_dilated: the convolution primitive (see ``ResNet18``).

  Example:
    >>> block = BasicBlock(8, 2)
    >>> v = block.init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)))
    >>> sorted(v['params'])
    ['bn1', 'bn2', 'conv1', 'conv2', 'shortcut_bn', 'shortcut_conv']
  """

  features: int
  stride: int = 1
  conv_general_dilated: Callable = conv_with_canonical_gradients

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Applies the block.

    Args:
      x: float array [B, H, W, C_in].
      train: batch statistics (True) or running averages (False).

    Returns:
      Float array [B, H / stride, W / stride, features].

    Example:
      >>> y = BasicBlock(8, 2).apply(v, x)  # doctest: +SKIP
    """
    conv = self.conv_general_dilated
    h = _conv3x3(self.features, self.stride, "conv1", conv)(x)
    h = nn.relu(_batch_norm(train, "bn1")(h))
    self.sow("intermediates", "conv1" + ACT_SUFFIX, h)
    h = _conv3x3(self.features, 1, "conv2", conv)(h)
    h = _batch_norm(train, "bn2")(h)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = nn.Conv(self.features, (1, 1),
                         strides=(self.stride, self.stride), padding="VALID",
                         use_bias=False, name="shortcut_conv",
                         conv_general_dilated=conv)(x)
      shortcut = _batch_norm(train, "shortcut_bn")(shortcut)
    out = nn.relu(h + shortcut)
    self.sow("intermediates", "conv2" + ACT_SUFFIX, out)
    return out


class ResNet18(nn.Module):
  """Mammoth's ResNet-18: stem, 4 stages of 2 BasicBlocks, global pool, head.

  Parameter names: stem ``conv1``/``bn1``; blocks ``layer{1..4}_{0,1}``;
  output ``head``. Call with ``mutable=['batch_stats']`` when
  ``train=True``.

  Attributes:
    nf: width of the first stage; stages have nf, 2nf, 4nf, 8nf channels.
    num_outputs: number of logits.
    head: ``'shared'`` or ``'multi'``.
    head_sizes: classes per task, for ``head='multi'``.
    conv_general_dilated: the convolution primitive; the default gives the
      same values as ``lax.conv_general_dilated`` with gradients that stay
      fast inside loops on a CPU (pass ``jax.lax.conv_general_dilated`` for
      JAX's own gradients).

  Example:
    >>> model = ResNet18(nf=4, num_outputs=10)
    >>> x = jnp.zeros((2, 32, 32, 3))
    >>> v = jax.jit(model.init)(jax.random.key(0), x)
    >>> train_forward = jax.jit(lambda v, x: model.apply(
    ...     v, x, train=True, mutable=['batch_stats']))
    >>> logits, new_state = train_forward(v, x)
    >>> logits.shape
    (2, 10)
  """

  nf: int = 64
  num_outputs: int = 10
  head: str = "shared"
  head_sizes: Optional[Sequence[int]] = None
  conv_general_dilated: Callable = conv_with_canonical_gradients

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Computes logits.

    Args:
      x: normalised float images [B, H, W, C] (any H, W >= 8).
      train: batch statistics (True) or running averages (False).

    Returns:
      Logits [B, num_outputs].

    Example:
      >>> logits = ResNet18(nf=4).apply(v, x)  # doctest: +SKIP
    """
    h = _conv3x3(self.nf, 1, "conv1", self.conv_general_dilated)(x)
    h = nn.relu(_batch_norm(train, "bn1")(h))
    self.sow("intermediates", "conv1" + ACT_SUFFIX, h)
    for stage, stride in enumerate(STAGE_STRIDES):
      features = self.nf * 2**stage
      for b in range(BLOCKS_PER_STAGE):
        h = BasicBlock(features, stride if b == 0 else 1,
                       self.conv_general_dilated,
                       name=f"layer{stage + 1}_{b}")(h, train)
    h = jnp.mean(h, axis=(1, 2))
    return OutputHead(self.head, self.num_outputs, self.head_sizes,
                      name="head")(h)


def _build(args: ModelArgs) -> ResNet18:
  if args.nf < 1:
    raise ConfigError(f"nf must be >= 1, got {args.nf}.")
  return ResNet18(int(args.nf), args.num_outputs, args.head, args.head_sizes,
                  args.conv)


def sparse_layers(path: str, leaf: Any) -> bool:
  """ResNet-18's sparse layers: the two 3x3 convs inside residual blocks.

  As in SparCL, the stem conv, the shortcut convs, norms and the head stay
  dense.

  Args:
    path: ``'/'``-joined parameter path.
    leaf: the parameter (only its rank is read).

  Returns:
    Whether SparCL keeps the leaf sparse.

  Example:
    >>> sparse_layers("layer1_0/conv1/kernel", jnp.zeros((3, 3, 4, 4)))
    True
    >>> sparse_layers("layer2_0/shortcut_conv/kernel", jnp.zeros((1, 1, 4, 8)))
    False
  """
  if len(getattr(leaf, "shape", ())) != 4 or "shortcut" in path:
    return False
  in_block = any(p.startswith("layer") for p in path.split("/")[:-2])
  return in_block and path.endswith(("conv1/kernel", "conv2/kernel"))


register(ModelSpec(name="resnet18", build=_build, sparse_filter=sparse_layers,
                   batch_norm=True, order=10))
