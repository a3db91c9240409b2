"""The small CNN of Zenke et al. 2017, used by CLNP on split CIFAR-10/100.

Its convolutions take their gradients from ``conv_with_canonical_gradients``
(fast inside the library's loops on a CPU).

With ``group`` (``--mask_structure=grouped``) conv_1, conv_2 and conv_3 are
:class:`~sparcl_jax.models.grouped_conv.GroupedSparseConv` (every block of
``group`` output channels keeps the same input channels, all taps); conv_0,
dense_0 and the head stay dense. conv_0 reads 3 channels (a block would keep
1 at sparsity 0.75, none at 0.9). dense_0 (fan-in 2304 at 32x32, 5.7% of the
forward MACs; conv_1..conv_3 take 90%) was measured and left dense: a train
step (batch 32, 32x32x3, SGD, dropout on; XLA CPU, 2 shared cores, medians
of 15 interleaved repeats) ran, against the dense model in the same run,

  ============================  =============  =============
  grouped layers (group)        sparsity 0.75  sparsity 0.90
  ============================  =============  =============
  conv_1..conv_3 (16)           1.42x          1.40x
  conv_1..conv_3 (32)           1.50x          1.54x
  conv_1..conv_3, dense_0 (32)  1.36x          1.48x
  dense_0 alone (32)            0.89x          0.99x
  ============================  =============  =============

(``PYTHONPATH=. python experiments/grouped_zenke_steps.py --repeats 15
--sets conv_1+conv_2+conv_3:16,conv_1+conv_2+conv_3:32,``
``conv_1+conv_2+conv_3+dense_0:32,dense_0:32``; a loaded machine, so the
ratios move by about 0.1-0.3 between runs). The default group is 16, the
largest divisor of the structured widths up to 16: blocks of 32 ran a few
per cent faster, but at width 1 conv_1 (32 channels) would be one block,
every output channel reading the same kept channels of conv_0 (pass
``--mask_group=32`` for it).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax

from sparcl_jax.clnp.specs import cnn_layer_specs
from sparcl_jax.errors import ConfigError
from sparcl_jax.models import registry
from sparcl_jax.models.conv import conv_with_canonical_gradients
from sparcl_jax.models.grouped_conv import GroupedSparseConv
from sparcl_jax.models.grouped_dense import GroupedSparseDense
from sparcl_jax.models.heads import ACT_SUFFIX, OutputHead
from sparcl_jax.models.registry import ModelArgs, ModelSpec, register

# (output channels at width 1, padding) of conv_0 .. conv_3.
CONV_SPECS = ((32, "SAME"), (32, "VALID"), (64, "SAME"), (64, "VALID"))
DENSE_WIDTH = 512
# The layers --mask_structure=grouped structures (see the module doc).
GROUPED_LAYERS = ("conv_1", "conv_2", "conv_3")


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
    group: 0 for dense layers; else the layers named in ``structured`` are
      grouped sparse (:class:`GroupedSparseConv`, :class:`GroupedSparseDense`)
      with blocks of ``group`` output units (must divide their widths).
    sparsity: weight sparsity of the grouped layers.
    kept_fan_in_init: how the grouped layers draw their kept weights.
    structured: the layers ``group`` structures, among ``conv_0 .. conv_3``
      and ``dense_0`` (default :data:`GROUPED_LAYERS`).

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
  group: int = 0
  sparsity: float = 0.0
  kept_fan_in_init: bool = True
  structured: Sequence[str] = GROUPED_LAYERS

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
    for i, (width, padding) in enumerate(CONV_SPECS):
      name = f"conv_{i}"
      if self._grouped(name):
        conv = GroupedSparseConv(width * w, (3, 3), self.group,
                                 self.sparsity, padding=padding,
                                 kept_fan_in_init=self.kept_fan_in_init,
                                 name=name)
      else:
        conv = nn.Conv(width * w, (3, 3), padding=padding, name=name,
                       conv_general_dilated=self.conv_general_dilated)
      h = nn.relu(conv(h))
      self.sow("intermediates", name + ACT_SUFFIX, h)
      if i % 2 == 1:
        h = nn.max_pool(h, (2, 2), strides=(2, 2))
        h = nn.Dropout(0.25, deterministic=not train)(h)
    h = h.reshape((h.shape[0], -1))
    if self._grouped("dense_0"):
      dense = GroupedSparseDense(DENSE_WIDTH * w, self.group, self.sparsity,
                                 kept_fan_in_init=self.kept_fan_in_init,
                                 name="dense_0")
    else:
      dense = nn.Dense(DENSE_WIDTH * w, name="dense_0")
    h = nn.relu(dense(h))
    self.sow("intermediates", "dense_0" + ACT_SUFFIX, h)
    h = nn.Dropout(0.5, deterministic=not train)(h)
    return OutputHead(self.head, self.num_outputs, self.head_sizes,
                      name="head")(h)

  def _grouped(self, name: str) -> bool:
    return bool(self.group) and name in self.structured


def _build(args: ModelArgs) -> ZenkeCNN:
  if args.width_multiplier < 1:
    raise ConfigError(
        f"width_multiplier must be >= 1, got {args.width_multiplier}.")
  if args.group:
    registry.group_size("zenke_cnn", args.group, args)
  return ZenkeCNN(args.num_outputs, args.head, args.head_sizes,
                  int(args.width_multiplier), args.conv, args.group,
                  args.sparsity, args.kept_fan_in_init)


def grouped_widths(args: ModelArgs) -> dict[str, int]:
  """Output widths of the layers ``--mask_structure=grouped`` structures.

  Args:
    args: the model settings (``width_multiplier`` is read).

  Returns:
    ``{layer: output units}`` of :data:`GROUPED_LAYERS`.

  Examples:
    >>> grouped_widths(ModelArgs(10, width_multiplier=2))
    {'conv_1': 64, 'conv_2': 128, 'conv_3': 128}
  """
  w = int(args.width_multiplier)
  widths = {f"conv_{i}": c * w for i, (c, _) in enumerate(CONV_SPECS)}
  widths["dense_0"] = DENSE_WIDTH * w
  return {name: widths[name] for name in GROUPED_LAYERS}


register(ModelSpec(
    name="zenke_cnn", build=_build,
    # SparCL's rule (hidden_* kernels, ResNet block convs) names none of its
    # layers: sparse runs choose them with --sparse_layers.
    # --mask_structure=grouped needs no filter: grouped_tdm finds the
    # grouped layers by their 'sparsity' collection (rows, kept).
    sparse_filter=lambda path, leaf: False,
    clnp_layer_specs=cnn_layer_specs, grouped=True,
    grouped_widths=grouped_widths,
    default_group=lambda widths: registry.largest_divisor_up_to(widths, 16),
    order=20))
