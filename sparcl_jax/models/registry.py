"""Models looked up by name, plus helpers to initialise them and read
their sown activations."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparcl_jax.errors import ConfigError
from sparcl_jax.sparse.grouped import check_group
from jax import lax

from sparcl_jax.models.cnn import ZenkeCNN
from sparcl_jax.models.conv import conv_with_canonical_gradients
from sparcl_jax.models.heads import ACT_SUFFIX, validate_head
from sparcl_jax.models.mlp import MLP
from sparcl_jax.models.resnet import ResNet18

MODELS = ("mlp", "resnet18", "zenke_cnn")
# How conv layers take their gradients (see models/conv.py).
CONV_GRADIENTS = {"canonical": conv_with_canonical_gradients,
                  "jax": lax.conv_general_dilated}


def make_model(name: str, num_outputs: int, *,
               hidden_sizes: Sequence[int] = (100, 100), nf: int = 64,
               head: str = "shared",
               head_sizes: Optional[Sequence[int]] = None,
               width_multiplier: int = 1,
               conv_gradients: str = "canonical",
               group: int = 0, sparsity: float = 0.0,
               kept_fan_in_init: bool = True) -> nn.Module:
  """Builds a model by name after checking its hyper-parameters.

  Args:
    name: one of ``MODELS``.
    num_outputs: number of logits (all classes of all tasks).
    hidden_sizes: hidden widths of ``'mlp'``.
    nf: base width of ``'resnet18'``.
    head: ``'shared'`` or ``'multi'``.
    head_sizes: classes per task, required for ``head='multi'``.
    width_multiplier: width scale of ``'zenke_cnn'``.
    conv_gradients: a key of ``CONV_GRADIENTS``, for the conv models.
    group: for ``'mlp'``: 0 for dense hidden layers, else group-balanced
      sparse ones with blocks of ``group`` output units (must divide every
      hidden width).
    sparsity: weight sparsity of the grouped hidden layers.
    kept_fan_in_init: the grouped layers draw their kept weights at the
      kept fan-in (else cut from a dense kernel); see
      :class:`~sparcl_jax.GroupedSparseDense`.

  Returns:
    An unbound Flax Linen module.

  Example:
    >>> model = make_model('resnet18', 10, nf=20)
  """
  if name not in MODELS:
    raise ConfigError(
        f"Unknown model {name!r}; valid models: {', '.join(MODELS)}.")
  if conv_gradients not in CONV_GRADIENTS:
    raise ConfigError(f"Unknown conv_gradients {conv_gradients!r}; valid: "
                      f"{', '.join(CONV_GRADIENTS)}.")
  conv = CONV_GRADIENTS[conv_gradients]
  validate_head(head, num_outputs, head_sizes)
  sizes = None if head_sizes is None else tuple(int(s) for s in head_sizes)
  if name == "mlp":
    hidden = tuple(int(h) for h in hidden_sizes)
    if any(h < 1 for h in hidden):
      raise ConfigError(f"hidden_sizes must be positive, got {hidden}.")
    if group:
      for width in hidden:
        check_group(width, group)
    return MLP(hidden, num_outputs, head, sizes, int(group), float(sparsity),
               bool(kept_fan_in_init))
  if group:
    raise ConfigError(f"grouped sparse layers exist for the mlp model only, "
                      f"not {name!r}; use the unstructured masks.")
  if name == "resnet18":
    if nf < 1:
      raise ConfigError(f"nf must be >= 1, got {nf}.")
    return ResNet18(int(nf), num_outputs, head, sizes, conv)
  if width_multiplier < 1:
    raise ConfigError(
        f"width_multiplier must be >= 1, got {width_multiplier}.")
  return ZenkeCNN(num_outputs, head, sizes, int(width_multiplier), conv)


def init_model(model: nn.Module, rng: jax.Array,
               input_shape: Sequence[int]) -> dict[str, Any]:
  """Initialises a model's variables from a dummy batch of zeros.

  Args:
    model: a module whose ``__call__`` takes ``(x, train)``.
    rng: PRNG key for the parameter initialisers.
    input_shape: shape of the dummy batch, batch axis first, as for Flax's
      ``init``, e.g. ``(1, 32, 32, 3)``.

  Returns:
    ``{'params': ...}`` plus ``'batch_stats'`` when the model has batch norm;
    sown intermediates are dropped.

  Example:
    >>> variables = init_model(make_model('mlp', 10), jax.random.key(0),
    ...                        (1, 28, 28, 1))
  """
  shape = tuple(int(d) for d in input_shape)
  if len(shape) < 2:
    raise ConfigError(
        f"input_shape must include the batch axis, e.g. (1, 28, 28, 1); "
        f"got {shape}.")
  variables = model.init(rng, jnp.zeros(shape, jnp.float32), train=False)
  return {k: v for k, v in variables.items() if k != "intermediates"}


def collect_activations(
    intermediates: Mapping[str, Any]) -> dict[str, jax.Array]:
  """Flattens sown post-ReLU activations to ``{layer path: array}``.

  The layer path is the parameter path of the layer whose units the
  activation measures, joined by ``/`` (e.g. ``'hidden_0'``,
  ``'layer2_1/conv1'``), so it can be matched against parameter paths.

  Args:
    intermediates: the ``'intermediates'`` collection returned by
      ``model.apply(..., mutable=['intermediates'])``.

  Returns:
    A dict from layer path to the last activation sown there.

  Example:
    >>> model, x = make_model('mlp', 2, hidden_sizes=(8,)), jnp.ones((2, 4))
    >>> v = model.init(jax.random.key(0), x)
    >>> _, state = model.apply(v, x, mutable=['intermediates'])
    >>> acts = collect_activations(state['intermediates'])
    >>> {k: a.shape for k, a in acts.items()}
    {'hidden_0': (2, 8)}
  """
  out: dict[str, jax.Array] = {}

  def visit(prefix: tuple[str, ...], node: Any) -> None:
    for key, value in node.items():
      if isinstance(value, Mapping):
        visit(prefix + (key,), value)
      elif key.endswith(ACT_SUFFIX):
        layer = key[:-len(ACT_SUFFIX)]
        # sow() appends to a tuple each call; the last call is the current one.
        out["/".join(prefix + (layer,))] = value[-1]

  visit((), intermediates)
  return out
