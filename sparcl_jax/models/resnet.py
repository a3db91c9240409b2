"""ResNet-18 as in mammoth (the DER++ and SparCL code base).

Differences from the ImageNet ResNet-18: a 3x3 stride-1 stem and no max-pool,
so 32x32 inputs keep their resolution in the first stage; ``nf`` scales every
width (64 is the standard net, 20 the "reduced" one common in CL papers).
Convolutions take their gradients from ``conv_with_canonical_gradients``, so
the train step is as fast inside the library's loops as alone on a CPU.

With ``group`` (``--mask_structure=grouped``) the 3x3 convs of the residual
blocks are :class:`~sparcl_jax.models.grouped_conv.GroupedSparseConv`: in
every block of ``group`` output channels they keep the same input channels
(all taps) and compute with the kept kernel only. The rest stays dense, as
SparCL keeps it: the stem reads 1 or 3 channels (a kept count ``k`` of 0-1
channels would leave nothing to drop and grow), and the 1x1 shortcuts and
the head are a small share of the work: of the dense model's forward MACs
at nf 20, the shortcuts take 1.2% (1.1% at 32x32x3), the stem 0.3%
(1.0% at 32x32x3), the head under 0.01%, the block convs 98.5% (97.9%)
(``tests/test_grouped_resnet.py`` checks them).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparcl_jax.errors import ConfigError
from sparcl_jax.models.conv import conv_with_canonical_gradients
from sparcl_jax.models.grouped_conv import GroupedSparseConv
from sparcl_jax.models.heads import ACT_SUFFIX, OutputHead
from sparcl_jax.models import registry
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
             conv_general_dilated: Callable, group: int = 0,
             sparsity: float = 0.0,
             kept_fan_in_init: bool = True) -> nn.Module:
  # Explicit padding 1 matches PyTorch; Flax's 'SAME' pads stride-2 convs
  # asymmetrically and would shift every feature map by half a pixel.
  padding = ((1, 1), (1, 1))
  if group:
    return GroupedSparseConv(features, (3, 3), group, sparsity,
                             strides=(stride, stride), padding=padding,
                             use_bias=False,
                             kept_fan_in_init=kept_fan_in_init, name=name)
  return nn.Conv(features, (3, 3), strides=(stride, stride),
                 padding=padding, use_bias=False, name=name,
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
    group: 0 for dense convs; else ``conv1``/``conv2`` are grouped sparse
      convs with blocks of ``group`` output channels.
    sparsity: weight sparsity of the grouped convs.
    kept_fan_in_init: how the grouped convs draw their kept kernel.

  Examples:
    >>> block = BasicBlock(8, 2)
    >>> v = block.init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)))
    >>> sorted(v['params'])
    ['bn1', 'bn2', 'conv1', 'conv2', 'shortcut_bn', 'shortcut_conv']
  """

  features: int
  stride: int = 1
  conv_general_dilated: Callable = conv_with_canonical_gradients
  group: int = 0
  sparsity: float = 0.0
  kept_fan_in_init: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Applies the block.

    Args:
      x: float array [B, H, W, C_in].
      train: batch statistics (True) or running averages (False).

    Returns:
      Float array [B, H / stride, W / stride, features].

    Examples:
      >>> y = BasicBlock(8, 2).apply(v, x)  # doctest: +SKIP
    """
    conv = self.conv_general_dilated
    grouped = (self.group, self.sparsity, self.kept_fan_in_init)
    h = _conv3x3(self.features, self.stride, "conv1", conv, *grouped)(x)
    h = nn.relu(_batch_norm(train, "bn1")(h))
    self.sow("intermediates", "conv1" + ACT_SUFFIX, h)
    h = _conv3x3(self.features, 1, "conv2", conv, *grouped)(h)
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
    group: 0 for dense block convs, else the output channels per block of
      grouped sparse ones (must divide every stage's width).
    sparsity: weight sparsity of the grouped block convs.
    kept_fan_in_init: how the grouped convs draw their kept kernel.

  Examples:
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
  group: int = 0
  sparsity: float = 0.0
  kept_fan_in_init: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Computes logits.

    Args:
      x: normalised float images [B, H, W, C] (any H, W >= 8).
      train: batch statistics (True) or running averages (False).

    Returns:
      Logits [B, num_outputs].

    Examples:
      >>> logits = ResNet18(nf=4).apply(v, x)  # doctest: +SKIP
    """
    h = _conv3x3(self.nf, 1, "conv1", self.conv_general_dilated)(x)
    h = nn.relu(_batch_norm(train, "bn1")(h))
    self.sow("intermediates", "conv1" + ACT_SUFFIX, h)
    for stage, stride in enumerate(STAGE_STRIDES):
      features = self.nf * 2**stage
      for b in range(BLOCKS_PER_STAGE):
        h = BasicBlock(features, stride if b == 0 else 1,
                       self.conv_general_dilated, self.group, self.sparsity,
                       self.kept_fan_in_init,
                       name=f"layer{stage + 1}_{b}")(h, train)
    h = jnp.mean(h, axis=(1, 2))
    return OutputHead(self.head, self.num_outputs, self.head_sizes,
                      name="head")(h)


def _build(args: ModelArgs) -> ResNet18:
  if args.nf < 1:
    raise ConfigError(f"nf must be >= 1, got {args.nf}.")
  if args.group:
    registry.group_size("resnet18", args.group, args)
  return ResNet18(int(args.nf), args.num_outputs, args.head, args.head_sizes,
                  args.conv, args.group, args.sparsity, args.kept_fan_in_init)


def grouped_widths(args: ModelArgs) -> dict[str, int]:
  """Output channels of the block convs ``--mask_structure=grouped``
  structures, by stage.

  Args:
    args: the model settings (``nf`` is read).

  Returns:
    ``{'layer1': nf, ..., 'layer4': 8 nf}``.

  Examples:
    >>> grouped_widths(ModelArgs(10, nf=20))
    {'layer1': 20, 'layer2': 40, 'layer3': 80, 'layer4': 160}
  """
  nf = int(args.nf)
  return {f"layer{stage + 1}": nf * 2**stage
          for stage in range(len(STAGE_STRIDES))}


def sparse_layers(path: str, leaf: Any) -> bool:
  """ResNet-18's sparse layers: the two 3x3 convs inside residual blocks.

  As in SparCL, the stem conv, the shortcut convs, norms and the head stay
  dense.

  Args:
    path: ``'/'``-joined parameter path.
    leaf: the parameter (only its rank is read).

  Returns:
    Whether SparCL keeps the leaf sparse.

  Examples:
    >>> sparse_layers("layer1_0/conv1/kernel", jnp.zeros((3, 3, 4, 4)))
    True
    >>> sparse_layers("layer2_0/shortcut_conv/kernel", jnp.zeros((1, 1, 4, 8)))
    False
  """
  if len(getattr(leaf, "shape", ())) != 4 or "shortcut" in path:
    return False
  in_block = any(p.startswith("layer") for p in path.split("/")[:-2])
  return in_block and path.endswith(("conv1/kernel", "conv2/kernel"))


# One block spans the first stage's width (nf output channels), so a stage
# of width 2^s nf runs 2^s blocks per conv. Per-block convolutions pay per
# block: at nf 64 on 32x32x3 (experiments/grouped_conv_steps.py, 2026-12-07)
# blocks of 64 ran each stage's 3x3 SGD step 1.3-2.6x faster than blocks of
# 16 at kept shares 0.25, 0.10 and 0.05 (layer4 at 0.25: 2.13x dense's
# speed against 0.88x). At nf 20 this is the 20 the earlier probe chose.
register(ModelSpec(name="resnet18", build=_build, sparse_filter=sparse_layers,
                   batch_norm=True, grouped=True,
                   grouped_widths=grouped_widths,
                   default_group=lambda widths: widths["layer1"], order=10))
