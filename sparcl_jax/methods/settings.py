"""Each method's hyper-parameters: frozen dataclasses, one field per flag.

A method names its settings class (``Method.settings``); the fields of that
class are the flags the method reads, their defaults and ``--help`` text are
the fields', and its ``validate`` checks their values. Classes build on one
another as the methods do (DER++'s settings are DER's plus ``beta``; SparCL-
DER++'s are SparCL's plus DER++'s), in the manner of jaxpruner's updaters.
:class:`~sparcl_jax.training.config.RunConfig` inherits every class's fields,
so ``config.alpha`` reads the same flag for the training loop; a flag the
chosen method's class lacks does not apply to the run (the command line warns
about it and leaves it out of the saved ``config``).

Examples:
  >>> settings = DerppSettings(buffer_size=500, alpha=0.2)
  >>> settings.beta, "alpha" in DerppSettings.flag_names()
  (0.5, True)
  >>> "sparsity" in DerppSettings.flag_names()
  False
"""

from __future__ import annotations

import dataclasses
import re

from sparcl_jax.sparse import rules as mask_rules
from sparcl_jax.errors import ConfigError


def flag(default, helptext: str):
  """A settings field: its default and its ``--help`` line.

  Args:
    default: the flag's default value.
    helptext: its ``--help`` text.

  Returns:
    A ``dataclasses.field``.

  Examples:
    >>> flag(0.5, "Weight of a term.").metadata["help"]
    'Weight of a term.'
  """
  return dataclasses.field(default=default, metadata={"help": helptext})


def choice(name: str, value: str, choices) -> None:
  """Refuses ``--name=value`` unless ``value`` is one of ``choices``.

  Args:
    name: the flag.
    value: its value.
    choices: the allowed values.

  Raises:
    ConfigError: naming the choices.

  Examples:
    >>> choice("head", "multi", ("shared", "multi"))
  """
  if value not in choices:
    raise ConfigError(f"--{name}={value!r} is not known; choose one of: "
                      f"{', '.join(choices)}.")


def at_least(name: str, value, low) -> None:
  """Refuses ``--name=value`` below ``low``.

  Args:
    name: the flag.
    value: its value.
    low: the least value allowed.

  Raises:
    ConfigError: naming the bound.

  Examples:
    >>> at_least("epochs", 1, 1)
  """
  if value < low:
    raise ConfigError(f"--{name}={value} must be at least {low}.")


def _share(settings, *names: str) -> None:
  """Refuses a share (a fraction of weights, gradient or data) outside
  [0, 1)."""
  for name in names:
    value = getattr(settings, name)
    if not 0.0 <= value < 1.0:
      raise ConfigError(f"--{name}={value} is impossible: it must be in "
                        "[0, 1).")


def _non_negative(settings, *names: str) -> None:
  for name in names:
    value = getattr(settings, name)
    if value < 0:
      raise ConfigError(f"--{name}={value} must be non-negative.")


def _positive(settings, *names: str) -> None:
  for name in names:
    value = getattr(settings, name)
    if not value > 0:
      raise ConfigError(f"--{name}={value} must be positive.")


def declared_names(cls: type) -> tuple[str, ...]:
  """The fields a dataclass declares itself, not inherits from its bases.

  Args:
    cls: a dataclass (a settings class, or ``RunConfig``).

  Returns:
    Field names, in declaration order.

  Examples:
    >>> declared_names(DerppSettings), declared_names(ErSettings)
    (('beta',), ())
  """
  inherited = {f.name for base in cls.__bases__
               if dataclasses.is_dataclass(base)
               for f in dataclasses.fields(base)}
  return tuple(f.name for f in dataclasses.fields(cls)
               if f.name not in inherited)


@dataclasses.dataclass(frozen=True)
class Settings:
  """A method without hyper-parameters of its own; the base of the others.

  Subclasses add fields (made with :func:`flag`) and extend ``validate``,
  calling ``super().validate(config)`` first, so a class combining two
  others checks both.

  Examples:
    >>> Settings.flag_names()
    ()
  """

  @classmethod
  def flag_names(cls) -> tuple[str, ...]:
    """The flags this class's methods read, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls))

  @classmethod
  def from_config(cls, config) -> "Settings":
    """This class's fields as ``config`` (a ``RunConfig``) sets them."""
    return cls(**{name: getattr(config, name) for name in cls.flag_names()})

  def validate(self, config) -> None:
    """Raises ConfigError, in one line, for an impossible value.

    Args:
      config: the run's ``RunConfig``, for the method and the flags common
        to every method that a check relates these settings to.
    """
    del config


@dataclasses.dataclass(frozen=True)
class StreamSettings(Settings):
  """The stream loss of a rehearsal-family method (ER-ACE fixes its own)."""

  current_task_logit_mask: bool = flag(
      False, "Mask logits outside the current task's classes in the stream "
             "loss (SparCL's use_cl_mask).")


@dataclasses.dataclass(frozen=True)
class ReplaySettings(Settings):
  """A reservoir buffer replayed at every step."""

  buffer_size: int = flag(200, "Reservoir buffer size, in examples.")
  minibatch_size: int = flag(0, "Examples drawn from the buffer per replay "
                                "step; 0 means --batch_size.")
  replay_first_task: bool = flag(
      False, "Replay from the buffer during the first task too (mammoth "
             "does; SparCL's code does not).")

  def validate(self, config) -> None:
    super().validate(config)
    at_least("minibatch_size", self.minibatch_size, 0)
    at_least("buffer_size", self.buffer_size, 0)
    if self.buffer_size < 1:
      raise ConfigError(f"--method={config.method} replays from a buffer: "
                        "set --buffer_size to at least 1.")
    replay_batch = self.minibatch_size or config.batch_size
    if replay_batch > self.buffer_size:
      raise ConfigError(f"the replay mini-batch ({replay_batch}) is larger "
                        f"than --buffer_size={self.buffer_size}; lower "
                        "--minibatch_size or raise --buffer_size.")
    if config.num_devices > 1 and replay_batch % config.num_devices:
      raise ConfigError(f"the replay mini-batch ({replay_batch}) cannot be "
                        "split evenly over --num_devices="
                        f"{config.num_devices}; set --minibatch_size to a "
                        "multiple of the device count.")


@dataclasses.dataclass(frozen=True)
class ErSettings(ReplaySettings, StreamSettings):
  """ER: a buffer replayed into a stream loss over every output."""


@dataclasses.dataclass(frozen=True)
class DerSettings(ErSettings):
  """DER: ER's settings and the weight of the logit-matching term."""

  alpha: float = flag(0.1, "Weight of the logit-matching (MSE) replay term.")

  def validate(self, config) -> None:
    super().validate(config)
    _non_negative(self, "alpha")


@dataclasses.dataclass(frozen=True)
class DerppSettings(DerSettings):
  """DER++: DER's settings and the weight of the label replay term."""

  beta: float = flag(0.5, "Weight of the label (CE) replay term.")

  def validate(self, config) -> None:
    super().validate(config)
    _non_negative(self, "beta")


SPARSITY_DISTRIBUTIONS = ("uniform", "erk")
MASK_STRUCTURES = ("unstructured", "grouped")
SPARSE_INITS = ("dense", "kept_fan_in")


@dataclasses.dataclass(frozen=True)
class MaskSettings(Settings):
  """Masked weights: how sparse, which layers, in what structure."""

  sparsity: float = flag(0.75, "Target weight sparsity of the sparse "
                               "layers: the share of their weights that is "
                               "zero, in [0, 1) (0.75 keeps a quarter).")
  sparsity_distribution: str = flag(
      "uniform", "How sparsity spreads over layers: uniform or erk.")
  sparse_layers: str = flag(
      "", "Regex over parameter paths (e.g. 'hidden_.*/kernel') choosing the "
          "sparse layers; empty: residual-block convs and MLP hidden "
          "kernels.")
  mask_structure: str = flag(
      "unstructured", "'unstructured' (SparCL's masks over dense layers) or "
                      "'grouped' (the MLP's hidden layers, ResNet-18's "
                      "block convs and the Zenke CNN's conv_1..conv_3 keep "
                      "the same input rows count in every block of "
                      "--mask_group output units and compute with the kept "
                      "weights only).")
  mask_group: int = flag(0, "With --mask_structure=grouped: output units "
                            "per block, dividing every structured layer's "
                            "width; 0: the model's default, the largest "
                            "divisor of the widths up to 50 for the MLP, "
                            "nf for ResNet-18 and 16 for the Zenke CNN.")
  sparse_init: str = flag(
      "dense", "How a sparse layer's kept weights start: 'dense' (as a dense "
               "layer's, the rest masked: SparCL's) or 'kept_fan_in' (as a "
               "dense layer's whose fan-in is the kept count, so a unit's "
               "output starts with a dense layer's variance).")

  def validate(self, config) -> None:
    super().validate(config)
    choice("sparsity_distribution", self.sparsity_distribution,
           SPARSITY_DISTRIBUTIONS)
    _share(self, "sparsity")
    choice("mask_structure", self.mask_structure, MASK_STRUCTURES)
    choice("sparse_init", self.sparse_init, SPARSE_INITS)
    if self.sparse_layers:
      try:
        re.compile(self.sparse_layers)
      except re.error as err:
        raise ConfigError(f"--sparse_layers={self.sparse_layers!r} is not a "
                          f"valid regular expression ({err}).") from None
    if config.grouped:
      self._check_grouped(config)
    if self.sparse_init != "dense" and not config.is_sparse:
      raise ConfigError(f"--sparse_init={self.sparse_init} sets how sparse "
                        f"layers start, and --method={config.method} here "
                        "trains no sparse layers: drop it.")

  def _check_grouped(self, config) -> None:
    """What --mask_structure=grouped supports, each refusal with its fix."""
    refuse = "--mask_structure=grouped "
    from sparcl_jax.models import registry  # pylint: disable=g-import-not-at-top
    spec = registry.get(config.model)
    if not spec.grouped:
      models = ", ".join(f"--model={n}" for n in registry.names()
                         if registry.get(n).grouped)
      raise ConfigError(refuse + f"has layers for {models} only, not "
                        f"{config.model!r}; use the unstructured masks.")
    method = config.method_object
    if getattr(method, "static_masks", False):
      raise ConfigError(refuse + f"drops and grows rows on TDM's schedule; "
                        f"--method={config.method} keeps a static mask: use "
                        "the unstructured masks.")
    # SNIP's settings have no grow rule (its mask is static).
    growth = getattr(self, "mask_growth", "")
    if (growth or getattr(method, "growth", "random")) != "random":
      raise ConfigError(refuse + "grows rows at random (SparCL's rule); "
                        "gradient growth needs the dense gradient: drop "
                        "--mask_growth or use the unstructured masks.")
    if self.sparsity_distribution != "uniform" or self.sparse_layers:
      raise ConfigError(refuse + "makes every MLP hidden layer (ResNet-18 "
                        "block conv, Zenke CNN conv_1..conv_3) sparse at "
                        "--sparsity: drop --sparsity_distribution and "
                        "--sparse_layers.")
    if self.mask_group < 0:
      raise ConfigError(f"--mask_group={self.mask_group} must be >= 1, or "
                        "0 for the model's default.")
    registry.group_size(config.model, self.mask_group, config.model_widths)


@dataclasses.dataclass(frozen=True)
class DropGrowSettings(MaskSettings):
  """Masks that drop and grow connections on TDM's schedule (RigL, SparCL).
  """

  mask_update_interval: int = flag(
      5, "Epochs between drop-and-grow updates (the counter restarts every "
         "task).")
  mask_extra_growth: float = flag(
      0.01, "Extra density grown at each task start, as a share of a "
            "layer's weights: pruned to --sparsity, regrown to --sparsity "
            "minus this.")
  mask_swap_fraction: float = flag(
      0.01, "Share of a layer's weights dropped and as many grown at each "
            "update between a task's first and last.")
  mask_growth: str = flag(
      "", "The grow rule, by name (a file of sparcl_jax/sparse/rules: random, "
          "gradient, ...); empty: the method's own (random for SparCL, "
          "gradient for RigL).")

  def validate(self, config) -> None:
    super().validate(config)
    at_least("mask_update_interval", self.mask_update_interval, 1)
    _share(self, "mask_extra_growth", "mask_swap_fraction")
    if self.sparsity + self.mask_swap_fraction >= 1.0:
      raise ConfigError(f"--sparsity={self.sparsity} leaves no weights once "
                        "TDM swaps connections; use a sparsity below "
                        f"{1.0 - self.mask_swap_fraction:.2f}.")
    if self.mask_growth:
      try:
        mask_rules.grow_score(self.mask_growth)
      except ConfigError as err:
        raise ConfigError(f"--mask_growth: {err}") from None


@dataclasses.dataclass(frozen=True)
class SparclSettings(DropGrowSettings):
  """SparCL: TDM (drop by importance), DGM and DDR, each behind its flag."""

  tdm: bool = flag(True, "Task-aware dynamic masking (sparse weights).")
  dgm: bool = flag(True, "Dynamic gradient masking.")
  ddr: bool = flag(True, "Dynamic data removal.")
  importance_lambda: float = flag(0.5, "TDM: importance = |W| + lambda "
                                       "|g|.")
  gradient_sparsity: float = flag(
      0.8, "DGM: share of each sparse layer's gradient zeroed (must exceed "
           "--sparsity to matter).")
  dgm_refresh: int = flag(30, "DGM: train steps between gradient-mask "
                              "refreshes (the count restarts every "
                              "epoch).")
  ddr_epochs: str = flag("5,10,15,20", "DDR: epochs of a task at whose start "
                                       "data is removed, comma-separated.")
  ddr_fraction: float = flag(0.075, "DDR: share of the task's training set "
                                    "removed at each removal epoch.")

  def validate(self, config) -> None:
    super().validate(config)
    if self.importance_lambda < 0:
      raise ConfigError("--importance_lambda must be non-negative.")
    _share(self, "gradient_sparsity", "ddr_fraction")
    at_least("dgm_refresh", self.dgm_refresh, 1)
    try:
      epochs = [int(e) for e in self.ddr_epochs.split(",") if e.strip()]
    except ValueError:
      epochs = [-1]
    if min(epochs, default=0) < 0:
      raise ConfigError(f"--ddr_epochs={self.ddr_epochs!r} must be "
                        "comma-separated non-negative integers, e.g. "
                        "5,10,15,20.")
    if self.ddr_fraction * len(set(epochs)) >= 1.0:
      raise ConfigError(f"--ddr_fraction={self.ddr_fraction} at "
                        f"{len(set(epochs))} removal epochs would remove the "
                        "whole task; lower it.")


@dataclasses.dataclass(frozen=True)
class SnipDerppSettings(MaskSettings, DerppSettings):
  """DER++ with a static SNIP mask."""


@dataclasses.dataclass(frozen=True)
class RiglDerppSettings(DropGrowSettings, DerppSettings):
  """DER++ with RigL's masks."""


@dataclasses.dataclass(frozen=True)
class SparclErSettings(SparclSettings, ErSettings):
  """SparCL on ER."""


@dataclasses.dataclass(frozen=True)
class SparclDerppSettings(SparclSettings, DerppSettings):
  """SparCL on DER++."""


LR_SCHEDULES = ("constant", "cosine")
ACTIVITY_READINGS = ("mean", "firing_rate")
PRUNE_SEARCHES = ("scan", "bisect")


@dataclasses.dataclass(frozen=True)
class TaskLevelSettings(Settings):
  """A task-level method: a fresh optimizer, and its schedule, every task."""

  lr_schedule: str = flag(
      "constant", "constant, or cosine: decay --lr to 0 over each task's "
                  "training steps.")

  def validate(self, config) -> None:
    super().validate(config)
    choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)


@dataclasses.dataclass(frozen=True)
class ClnpSettings(TaskLevelSettings):
  """CLNP: the L1 penalty, the pruning search, the fine-tuning after it."""

  l1: float = flag(1e-5, "Weight of the L1 penalty added to the loss: l1 "
                         "x sum |w| over the kernel weights still free to "
                         "train (biases are not penalised; the CLNP paper "
                         "does not say whether it penalises them).")
  margin: float = flag(0.1, "Graceful-forgetting margin m in accuracy "
                            "points, in [0, 100].")
  activity_reading: str = flag(
      "mean", "A unit's activity on the task's validation data: mean (its "
              "mean post-ReLU activation) or firing_rate (the share of its "
              "activations above 0); conv units also average over "
              "positions. The CLNP paper does not say which; mean is our "
              "reading of it.")
  threshold_per_layer: bool = flag(
      True, "Prune each layer at its own activity quantile (evener when the "
            "layers' activity scales differ); --nothreshold_per_layer: one "
            "threshold pooled over the layers (the paper's single theta).")
  prune_search: str = flag(
      "scan", "How the activity quantile is searched in steps of 0.01: scan "
              "(every candidate from the most aggressive down) or bisect "
              "(binary search, ~7 evaluations; for --finetune_epochs > 0).")
  finetune_lr: float = flag(
      0.0, "Learning rate of the fine-tuning after pruning, under the same "
           "--lr_schedule over the fine-tuning steps (0: --lr).")
  finetune_epochs: int = flag(0, "Epochs of fine-tuning after pruning, "
                                 "before the validation check (0: no "
                                 "fine-tuning).")

  def validate(self, config) -> None:
    super().validate(config)
    choice("activity_reading", self.activity_reading, ACTIVITY_READINGS)
    choice("prune_search", self.prune_search, PRUNE_SEARCHES)
    if not 0.0 <= self.margin <= 100.0:
      raise ConfigError(f"--margin={self.margin} must be in [0, 100] "
                        "(accuracy points).")
    _non_negative(self, "l1")
    at_least("finetune_epochs", self.finetune_epochs, 0)
    if self.finetune_lr < 0:
      raise ConfigError(f"--finetune_lr={self.finetune_lr} must be "
                        "positive, or 0 for --lr.")


@dataclasses.dataclass(frozen=True)
class EwcSettings(TaskLevelSettings):
  """EWC: the penalty's strength."""

  ewc_lambda: float = flag(100.0, "EWC penalty weight lambda: the loss "
                                  "adds lambda / 2 x sum over past tasks t "
                                  "of F_t (theta - theta*_t)^2.")

  def validate(self, config) -> None:
    super().validate(config)
    _non_negative(self, "ewc_lambda")


@dataclasses.dataclass(frozen=True)
class SiSettings(TaskLevelSettings):
  """SI: the penalty's strength and damping."""

  si_c: float = flag(0.1, "SI penalty weight c: the loss adds c x sum "
                          "Omega (theta - theta*)^2.")
  si_xi: float = flag(1e-3, "SI damping xi: each task end adds omega / "
                            "(Delta^2 + xi) to Omega (Zenke et al.: 1e-3 "
                            "on MNIST, 0.1 on CIFAR).")

  def validate(self, config) -> None:
    super().validate(config)
    _non_negative(self, "si_c")
    # xi divides at every task end: 0 would fail there, after a task's work.
    _positive(self, "si_xi")
