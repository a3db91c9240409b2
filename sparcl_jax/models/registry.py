"""Models, registered by name, plus helpers to initialise them and read
their sown activations.

Each model module of this package registers one :class:`ModelSpec`: how to
build the module from the run's settings, which of its layers SparCL keeps
sparse, its CLNP layer specs (if CLNP can measure its units) and whether it
has batch norm. ``--model=NAME`` is looked up here; no other code compares
model names. Every module of this package is imported with this one, so a
new model is one new file that calls :func:`register`.

Examples:
  >>> get("resnet18").batch_norm
  True
  >>> get("mlp").sparse_filter("hidden_0/kernel", jnp.zeros((4, 3)))
  True
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import pkgutil
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sparcl_jax.errors import ConfigError
from sparcl_jax.models.conv import conv_with_canonical_gradients
from sparcl_jax.models.heads import ACT_SUFFIX, validate_head

PyTree = Any
# How conv layers take their gradients (see models/conv.py).
CONV_GRADIENTS = {"canonical": conv_with_canonical_gradients,
                  "jax": lax.conv_general_dilated}


@dataclasses.dataclass(frozen=True)
class ModelArgs:
  """The run's model settings, as every model's ``build`` receives them.

  Each model reads the fields it has a use for and checks them.

  Attributes:
    num_outputs: number of logits (all classes of all tasks).
    head: ``'shared'`` or ``'multi'`` (already checked).
    head_sizes: classes per task for ``head='multi'``, else None.
    conv: the convolution primitive (a value of ``CONV_GRADIENTS``).
    hidden_sizes: hidden widths (``'mlp'``).
    nf: base width (``'resnet18'``).
    width_multiplier: width scale (``'zenke_cnn'``).
    group: 0, or the output-block size of grouped sparse layers.
    sparsity: weight sparsity of grouped sparse layers.
    kept_fan_in_init: how grouped sparse layers draw their kept weights.

  Examples:
    >>> ModelArgs(10).head
    'shared'
  """

  num_outputs: int
  head: str = "shared"
  head_sizes: Optional[tuple[int, ...]] = None
  conv: Callable = conv_with_canonical_gradients
  hidden_sizes: tuple[int, ...] = (100, 100)
  nf: int = 64
  width_multiplier: int = 1
  group: int = 0
  sparsity: float = 0.0
  kept_fan_in_init: bool = True


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What the library knows about one model.

  Attributes:
    name: the ``--model`` name.
    build: ``build(ModelArgs) -> nn.Module``; raises ConfigError (one line)
      for settings the model cannot take.
    sparse_filter: ``(path, leaf) -> bool``: the layers SparCL keeps sparse
      unless ``--sparse_layers`` says otherwise.
    clnp_layer_specs: ``params -> tuple[LayerSpec, ...]`` for the CLNP
      family, or None when CLNP cannot measure its units.
    batch_norm: whether it keeps batch-norm statistics (the task-level
      runs, CLNP's family, take models without).
    grouped: whether ``ModelArgs.group`` gives it grouped sparse layers.
    grouped_widths: for a grouped model, ``ModelArgs -> {layer: output
      width}`` of the layers ``ModelArgs.group`` structures (each width
      must be a multiple of the group); it reads the width fields it has a
      use for (``nf``, ``hidden_sizes``, ``width_multiplier``).
    default_group: for a grouped model, ``widths -> group`` used when
      ``--mask_group`` is left at 0.
    order: position in listings (then the name).

  Examples:
    >>> spec = ModelSpec("toy", build=lambda args: None,
    ...                  sparse_filter=lambda path, leaf: False)
    >>> spec.batch_norm, spec.clnp_layer_specs
    (False, None)
  """

  name: str
  build: Callable[[ModelArgs], nn.Module]
  sparse_filter: Callable[[str, Any], bool]
  clnp_layer_specs: Optional[Callable[[PyTree], tuple]] = None
  batch_norm: bool = False
  grouped: bool = False
  grouped_widths: Optional[Callable[[ModelArgs], dict[str, int]]] = None
  default_group: Optional[Callable[[dict[str, int]], int]] = None
  order: int = 100


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
  """Registers a model under ``spec.name``.

  Args:
    spec: the entry, with a new name.

  Returns:
    ``spec`` unchanged.

  Raises:
    ValueError: the name is empty or taken.

  Examples:
    >>> _ = register(ModelSpec("toy_example", lambda args: None,
    ...                        lambda path, leaf: False))
    >>> get("toy_example").grouped
    False
    >>> _ = _REGISTRY.pop("toy_example")
  """
  if not spec.name or spec.name in _REGISTRY:
    raise ValueError(f"model name {spec.name!r} is empty or taken")
  _REGISTRY[spec.name] = spec
  return spec


def get(name: str) -> ModelSpec:
  """Returns the registered model called ``name``.

  Args:
    name: a model name, as given to ``--model``.

  Returns:
    Its :class:`ModelSpec`.

  Raises:
    ConfigError: no model has that name (the message lists them).

  Examples:
    >>> get("zenke_cnn").clnp_layer_specs is not None
    True
  """
  if name not in _REGISTRY:
    raise ConfigError(
        f"Unknown model {name!r}; valid models: {', '.join(names())}.")
  return _REGISTRY[name]


def names() -> tuple[str, ...]:
  """Names of the registered models, by ``order`` then name.

  Returns:
    The names.

  Examples:
    >>> names()[:3]
    ('mlp', 'resnet18', 'zenke_cnn')
  """
  return tuple(s.name for s in sorted(_REGISTRY.values(),
                                      key=lambda s: (s.order, s.name)))


def make_model(name: str, num_outputs: int, *,
               hidden_sizes: Sequence[int] = (100, 100), nf: int = 64,
               head: str = "shared",
               head_sizes: Optional[Sequence[int]] = None,
               width_multiplier: int = 1,
               conv_gradients: str = "canonical",
               group: int = 0, sparsity: float = 0.0,
               kept_fan_in_init: bool = True) -> nn.Module:
  """Builds a registered model by name after checking its settings.

  Args:
    name: one of :func:`names`.
    num_outputs: number of logits (all classes of all tasks).
    hidden_sizes: hidden widths of ``'mlp'``.
    nf: base width of ``'resnet18'``.
    head: ``'shared'`` or ``'multi'``.
    head_sizes: classes per task, required for ``head='multi'``.
    width_multiplier: width scale of ``'zenke_cnn'``.
    conv_gradients: a key of ``CONV_GRADIENTS``, for the conv models.
    group: 0 for dense layers, else group-balanced sparse ones with blocks
      of ``group`` output units (models declared ``grouped`` only; it must
      divide the width of every layer it structures: see
      :func:`group_size`).
    sparsity: weight sparsity of the grouped hidden layers.
    kept_fan_in_init: the grouped layers draw their kept weights at the
      kept fan-in (else cut from a dense kernel); see
      :class:`~sparcl_jax.GroupedSparseDense`.

  Returns:
    An unbound Flax Linen module.

  Raises:
    ConfigError: an unknown name or setting (one line).

  Examples:
    >>> model = make_model('resnet18', 10, nf=20)
  """
  spec = get(name)
  if conv_gradients not in CONV_GRADIENTS:
    raise ConfigError(f"Unknown conv_gradients {conv_gradients!r}; valid: "
                      f"{', '.join(CONV_GRADIENTS)}.")
  validate_head(head, num_outputs, head_sizes)
  if group and not spec.grouped:
    grouped = [n for n in names() if get(n).grouped]
    raise ConfigError(f"grouped sparse layers exist for the "
                      f"{', '.join(grouped)} model"
                      f"{'s' if len(grouped) > 1 else ''} only, not "
                      f"{name!r}; use the unstructured masks.")
  return spec.build(ModelArgs(
      num_outputs, head,
      None if head_sizes is None else tuple(int(s) for s in head_sizes),
      CONV_GRADIENTS[conv_gradients], tuple(hidden_sizes), nf,
      width_multiplier, int(group), float(sparsity), bool(kept_fan_in_init)))


def group_size(name: str, mask_group: int, args: ModelArgs) -> int:
  """The output block size of a grouped model's sparse layers, checked.

  Args:
    name: a model declared ``grouped``.
    mask_group: ``--mask_group``; 0 takes the model's default.
    args: the model's settings; only the widths (``nf``, ``hidden_sizes``,
      ``width_multiplier``) are read.

  Returns:
    The group, a divisor of every structured layer's width.

  Raises:
    ConfigError: the group does not divide a layer's width (one line, naming
      the layer and the valid sizes).

  Examples:
    >>> [group_size("resnet18", 0, ModelArgs(10, nf=nf)) for nf in (20, 64)]
    [20, 64]
    >>> group_size("resnet18", 8, ModelArgs(10, nf=20))
    Traceback (most recent call last):
    ...
    sparcl_jax.errors.ConfigError: --mask_group=8 must divide every hidden width: layer1 has 20 outputs; valid sizes: 1, 2, 4, 5, 10, 20.
  """
  spec = get(name)
  if not spec.grouped or spec.grouped_widths is None:
    raise ConfigError(f"--model={name} has no grouped layers.")
  widths = spec.grouped_widths(args)
  group = int(mask_group) or spec.default_group(widths)
  if group < 1:
    raise ConfigError(f"--mask_group={mask_group} must be >= 1.")
  for layer, width in widths.items():
    if width % group:
      common = math.gcd(*widths.values())
      valid = ", ".join(str(d) for d in range(1, common + 1)
                        if common % d == 0)
      raise ConfigError(
          f"--mask_group={group} must divide every hidden width: {layer} "
          f"has {width} outputs; valid sizes: {valid}.")
  return group


def largest_divisor_up_to(widths: dict[str, int], most: int) -> int:
  """The largest common divisor of ``widths`` not above ``most``.

  Args:
    widths: ``{layer: width}``.
    most: the preferred group.

  Returns:
    The group.

  Examples:
    >>> largest_divisor_up_to({'a': 64, 'b': 128}, 20)
    16
  """
  common = math.gcd(*widths.values())
  return max(d for d in range(1, min(common, most) + 1) if common % d == 0)


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

  Examples:
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

  Examples:
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


# Every model module registers itself on import; importing them here makes
# the registry complete whichever module was imported first.
for _module in pkgutil.iter_modules([os.path.dirname(__file__)]):
  if _module.name != "registry":
    importlib.import_module(f"sparcl_jax.models.{_module.name}")
