"""Run configuration: one dataclass, validated up front.

The command line (``experiments/train.py``) defines one absl flag per field of
:class:`RunConfig`, so flagfiles, the CLI and Python callers share one list of
names, defaults and checks. The fields declared here apply to every method;
the others are the methods' own, declared by their settings classes
(:mod:`sparcl_jax.methods.settings`) and inherited from them, so each flag is
written once and ``config.alpha`` reads it whatever the method. A run uses,
checks and records only the flags that apply to its method
(:func:`applying`, :func:`validate`, :func:`to_dict`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Iterable, Optional

from sparcl_jax import methods
from sparcl_jax.data import datasets, scenarios, sources
from sparcl_jax.errors import ConfigError
from sparcl_jax.methods import settings as settings_lib
from sparcl_jax.methods.settings import at_least as _at_least
from sparcl_jax.methods.settings import choice as _choice
from sparcl_jax.models import registry

DATASETS = datasets.names()  # the registry's (sparcl_jax.data.datasets)
DATA_SOURCES = sources.SOURCES
SCENARIO_KINDS = ("split", "permuted", "cifar10_100")
MODELS = registry.names()
CONV_GRADIENTS = ("canonical", "jax")
HEADS = ("shared", "multi")
OPTIMIZERS = ("sgd", "adam")
# Every registered method (sparcl_jax.methods), and the task-incremental
# ones of the CLNP comparison.
METHODS = methods.names()
CLNP_METHODS = methods.names(methods.TASK_LEVEL)

# Default number of tasks per (scenario kind, dataset) when --num_tasks is 0:
# the scenario table's (sparcl_jax.data.scenarios).
DEFAULT_NUM_TASKS = scenarios.DEFAULT_NUM_TASKS


# The bases together declare every method's flags (each registered method's
# settings class is built from theirs; tests/test_settings.py checks that).
@dataclasses.dataclass(frozen=True)
class RunConfig(settings_lib.SparclDerppSettings, settings_lib.ClnpSettings,
                settings_lib.EwcSettings, settings_lib.SiSettings):
  """Every setting of one continual-learning run.

  Field docs double as the ``--help`` text of the command line (the first
  line of each ``help`` metadata entry). The fields written below apply to
  every method; the inherited ones are the methods' (see
  :attr:`settings`). The settings classes' ``validate`` method comes along
  with their fields: check a config with this module's :func:`validate`.
  """

  workdir: str = dataclasses.field(
      default="", metadata={"help": "Directory for config, results, logs and "
                                    "plots (required)."})
  dataset: str = dataclasses.field(
      default="digits", metadata={"help": f"One of {', '.join(DATASETS)}; "
                                          "with --data_source=tfds any tfds "
                                          "image-classification name."})
  data_source: str = dataclasses.field(
      default="digits", metadata={"help": "Where images come from: files "
                                          "(original distribution files in "
                                          "--data_dir, downloaded if "
                                          "missing), tfds, or digits "
                                          "(bundled with scikit-learn)."})
  data_dir: str = dataclasses.field(
      default="", metadata={"help": "Directory holding the dataset files "
                                    "(files; default $SPARCL_JAX_DATA_DIR, "
                                    "else ~/.cache/sparcl_jax) or the tfds "
                                    "data dir (tfds)."})
  download: bool = dataclasses.field(
      default=True, metadata={"help": "With --data_source=files, download "
                                      "the files the data folder lacks and "
                                      "check their md5 (--nodownload: "
                                      "never use the network)."})
  scenario: str = dataclasses.field(
      default="split", metadata={"help": "split (disjoint classes per task), "
                                         "permuted (pixel permutations) or "
                                         "cifar10_100 (Zenke et al. 2017)."})
  num_tasks: int = dataclasses.field(
      default=0, metadata={"help": "Number of tasks; 0 takes the usual "
                                   "number for the scenario and dataset."})
  shuffle_classes: bool = dataclasses.field(
      default=False, metadata={"help": "Shuffle the class order with --seed "
                                       "before splitting into tasks."})
  val_fraction: float = dataclasses.field(
      default=0.0, metadata={"help": "Fraction of each task's training data "
                                     "held out for validation (seeded)."})
  model: str = dataclasses.field(
      default="mlp", metadata={"help": f"One of {', '.join(MODELS)}."})
  hidden_sizes: str = dataclasses.field(
      default="100,100", metadata={"help": "MLP hidden widths (units per "
                                           "layer), comma-separated."})
  nf: int = dataclasses.field(
      default=64, metadata={"help": "ResNet-18 base width: channels of its "
                                    "first stage (64 as in SparCL, 20 for "
                                    "the reduced variant)."})
  conv_gradients: str = dataclasses.field(
      default="canonical", metadata={
          "help": "Gradients of conv layers. canonical: "
                  "sc.conv_with_canonical_gradients, which XLA's CPU backend "
                  "runs at full speed inside the train loop (other backends "
                  "get JAX's); jax: JAX's own, 9-19x slower per step "
                  "on a CPU. The same values to rounding."})
  head: str = dataclasses.field(
      default="shared", metadata={"help": "shared: one output layer; multi: "
                                          "one output layer per task."})
  method: str = dataclasses.field(
      default="derpp", metadata={"help": f"One of {', '.join(METHODS)}."})
  epochs: int = dataclasses.field(
      default=1, metadata={"help": "Epochs per task (passes over the "
                                   "task's training data)."})
  batch_size: int = dataclasses.field(
      default=32, metadata={"help": "Stream mini-batch size, in examples "
                                    "(partial batches are dropped)."})
  lr: float = dataclasses.field(
      default=0.03, metadata={"help": "Learning rate (the peak rate under "
                                      "--lr_schedule=cosine)."})
  optimizer: str = dataclasses.field(
      default="sgd", metadata={"help": f"One of {', '.join(OPTIMIZERS)}; a "
                                       "fresh optimizer state every task."})
  seed: int = dataclasses.field(
      default=0, metadata={"help": "Seed for initialisation, data order, "
                                   "buffer and masks."})
  num_seeds: int = dataclasses.field(
      default=1, metadata={
          "help": "Train seeds --seed .. --seed+N-1 in one run. Rehearsal-"
                  "family methods (DER++, ER, DER, ER-ACE, SparCL, SNIP, "
                  "RigL...) on one device with unstructured masks run all "
                  "seeds as one jitted program vmapped over a seed axis, "
                  "each seed with its own init, data order, buffer, masks "
                  "and DDR state; seeds whose padded task sizes differ "
                  "(--shuffle_classes on unbalanced classes), the task-level "
                  "methods (CLNP, EWC, SI, single-task), "
                  "--mask_structure=grouped and --num_devices>1 run the "
                  "seeds one after another in this process instead. "
                  "results.json: final = mean over seeds, final_std = "
                  "their standard deviation, per_seed = each seed's own "
                  "results. No checkpoints (refuses "
                  "--checkpoint_every_steps)."})
  eval_batch_size: int = dataclasses.field(
      default=1000, metadata={"help": "Examples per evaluation batch (speed "
                                      "and memory only)."})
  steps_per_call: int = dataclasses.field(
      default=100, metadata={"help": "Train steps fused into one jitted call "
                                     "(a lax.scan); affects speed only."})
  overwrite: bool = dataclasses.field(
      default=False, metadata={"help": "Allow replacing finished results in "
                                       "--workdir."})
  progress: bool = dataclasses.field(
      default=True, metadata={"help": "Show a progress bar per task when "
                                      "output is a terminal."})
  quiet: bool = dataclasses.field(
      default=False, metadata={"help": "Print no progress line per epoch and "
                                       "per task (the bars stay)."})
  num_devices: int = dataclasses.field(
      default=1, metadata={"help": "Devices for data-parallel training: the "
                                   "batch is sharded over a 'data' mesh axis "
                                   "and the state replicated; 0 uses every "
                                   "device. Must divide --batch_size."})
  checkpoint_every_steps: int = dataclasses.field(
      default=0, metadata={"help": "Also checkpoint every N train steps "
                                   "(rounded up to a --steps_per_call "
                                   "chunk); 0: only at the end of each "
                                   "task. Rerunning on --workdir resumes."})
  tensorboard: bool = dataclasses.field(
      default=True, metadata={"help": "Write TensorBoard event files to "
                                      "WORKDIR/tensorboard (needs no "
                                      "TensorFlow)."})
  coordinator_address: str = dataclasses.field(
      default="", metadata={"help": "Multi-host: host:port of process 0 for "
                                    "jax.distributed.initialize; empty runs "
                                    "on this host only."})
  num_processes: int = dataclasses.field(
      default=1, metadata={"help": "Multi-host: number of processes (with "
                                   "--coordinator_address)."})
  process_id: int = dataclasses.field(
      default=0, metadata={"help": "Multi-host: this process's index in "
                                   "[0, --num_processes)."})

  @property
  def hidden_widths(self) -> tuple[int, ...]:
    return tuple(int(w) for w in self.hidden_sizes.split(",") if w.strip())

  @property
  def group_size(self) -> int:
    """Output units per block of the grouped layers: ``--mask_group``, or
    the model's default when it is 0.

    Examples:
      >>> RunConfig(model="resnet18", nf=20).group_size
      20
    """
    return registry.group_size(self.model, self.mask_group,
                               self.model_widths)

  @property
  def model_widths(self) -> registry.ModelArgs:
    """The run's model widths as :class:`~registry.ModelArgs` (what
    :func:`registry.group_size` reads; ``num_outputs`` is left at 0, the
    scenario gives it)."""
    return registry.ModelArgs(0, hidden_sizes=self.hidden_widths,
                              nf=self.nf)

  @property
  def ddr_epoch_list(self) -> tuple[int, ...]:
    return tuple(int(e) for e in self.ddr_epochs.split(",") if e.strip())

  @property
  def method_object(self) -> methods.Method:
    """The registered method ``--method`` names."""
    return methods.get(self.method)

  @property
  def settings(self) -> settings_lib.Settings:
    """The chosen method's settings, as this config sets them.

    Examples:
      >>> RunConfig(method="ewc", ewc_lambda=5.0).settings
      EwcSettings(lr_schedule='constant', ewc_lambda=5.0)
    """
    return self.method_object.settings.from_config(self)

  @property
  def grouped(self) -> bool:
    """Whether the run's sparse layers are group-balanced (and compact)."""
    return self.mask_structure == "grouped" and self.is_sparse

  @property
  def is_sparse(self) -> bool:
    """Whether weights are masked (SparCL with TDM, SNIP, RigL)."""
    return self.method_object.is_sparse(self)

  @property
  def resolved_num_tasks(self) -> int:
    if self.num_tasks:
      return self.num_tasks
    return scenarios.default_num_tasks(self.scenario, self.dataset)

  @property
  def replay_batch_size(self) -> int:
    return self.minibatch_size or self.batch_size

  @property
  def uses_buffer(self) -> bool:
    return self.method_object.uses_buffer


# Seeds reach numpy's default_rng (non-negative only) and jax.random.key.
MAX_SEED = 2**32 - 1
# Every other integer flag counts or indexes things held in int32 arrays.
MAX_INT = 2**31 - 1


def _check_numbers(config: RunConfig) -> None:
  """Every float field finite, every integer one in its machine range.

  Generic over the fields of :class:`RunConfig`, so a new float flag is
  checked without being named; the per-flag ranges follow in
  :func:`validate` and the settings classes.
  """
  for field in config_fields():
    name, value = field.name, getattr(config, field.name)
    if field.type in ("float", float):
      try:
        finite = math.isfinite(float(value))
      except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"--{name}={value!r} must be a number.") from None
      if not finite:
        raise ConfigError(f"--{name}={value} is not a finite number; give "
                          "a finite value.")
    elif field.type in ("int", int) and isinstance(value, numbers.Integral):
      low, high = (0, MAX_SEED) if name == "seed" else (-MAX_INT, MAX_INT)
      if not low <= value <= high:
        raise ConfigError(f"--{name}={value} is out of range: it must be in "
                          f"[{low}, {high}].")


def validate(config: RunConfig) -> RunConfig:
  """Checks the flags of a run that apply to its method, before any work.

  The flags of every method are checked here; the method's own through its
  settings class's ``validate``. A flag of another method is not checked
  (the command line drops such flags with a warning, :func:`without`).

  Args:
    config: the configuration to check.

  Returns:
    The same configuration, unchanged, when every value is possible.

  Raises:
    ConfigError: with a one-line message naming the flag and what to do.

  Examples:
    >>> validate(RunConfig(workdir="/tmp/run", method="er")).buffer_size
    200
    >>> validate(RunConfig(workdir="/tmp/run", method="er", buffer_size=0))
    Traceback (most recent call last):
    sparcl_jax.errors.ConfigError: --method=er replays from a buffer: set --buffer_size to at least 1.
  """
  _check_numbers(config)
  if not config.workdir:
    raise ConfigError("--workdir is required: pass a directory for the run's "
                      "results, e.g. --workdir=/tmp/sparcl_run.")
  if config.data_source != "tfds":
    _choice("dataset", config.dataset, DATASETS)
  _choice("data_source", config.data_source, DATA_SOURCES)
  _choice("scenario", config.scenario, SCENARIO_KINDS)
  _choice("model", config.model, MODELS)
  _choice("conv_gradients", config.conv_gradients, CONV_GRADIENTS)
  _choice("head", config.head, HEADS)
  _choice("method", config.method, METHODS)
  _choice("optimizer", config.optimizer, OPTIMIZERS)
  if (config.data_source in sources.EMBEDDED_SOURCES and
      not datasets.get(config.dataset).embedded):
    raise ConfigError(f"--data_source={config.data_source} only provides "
                      f"--dataset=digits, not {config.dataset!r}; use "
                      "--data_source=files or tfds for it.")
  _at_least("num_tasks", config.num_tasks, 0)
  if config.scenario != "permuted" and config.resolved_num_tasks < 2:
    raise ConfigError(f"--num_tasks={config.num_tasks} must be at least 2 "
                      "for a split scenario.")
  _at_least("epochs", config.epochs, 1)
  _at_least("batch_size", config.batch_size, 1)
  _at_least("nf", config.nf, 1)
  _at_least("eval_batch_size", config.eval_batch_size, 1)
  _at_least("steps_per_call", config.steps_per_call, 1)
  _at_least("num_devices", config.num_devices, 0)
  if config.num_devices > 1 and config.batch_size % config.num_devices:
    raise ConfigError(f"--batch_size={config.batch_size} cannot be split "
                      f"evenly over --num_devices={config.num_devices}; use "
                      "a batch size divisible by the device count.")
  _at_least("checkpoint_every_steps", config.checkpoint_every_steps, 0)
  _at_least("num_seeds", config.num_seeds, 1)
  if config.seed + config.num_seeds - 1 > MAX_SEED:
    raise ConfigError(f"--seed={config.seed} --num_seeds={config.num_seeds} "
                      f"reaches seed {config.seed + config.num_seeds - 1}, "
                      f"past {MAX_SEED}; lower --seed or --num_seeds.")
  if config.num_seeds > 1 and config.checkpoint_every_steps:
    raise ConfigError(f"--num_seeds={config.num_seeds} runs keep no "
                      "checkpoints; drop --checkpoint_every_steps or run "
                      "one seed per --workdir.")
  _at_least("num_processes", config.num_processes, 1)
  if not 0 <= config.process_id < config.num_processes:
    raise ConfigError(f"--process_id={config.process_id} must be in [0, "
                      f"--num_processes={config.num_processes}).")
  if config.num_processes > 1 and not config.coordinator_address:
    raise ConfigError("--num_processes > 1 needs --coordinator_address "
                      "(host:port of process 0).")
  if not config.lr > 0:
    raise ConfigError(f"--lr={config.lr} must be a positive number.")
  if not 0.0 <= config.val_fraction < 1.0:
    raise ConfigError(f"--val_fraction={config.val_fraction} must be in "
                      "[0, 1).")
  try:
    widths = config.hidden_widths
  except ValueError:
    raise ConfigError(f"--hidden_sizes={config.hidden_sizes!r} must be "
                      "comma-separated positive integers, e.g. 100,100.")
  if config.model == "mlp" and (not widths or min(widths) < 1):
    raise ConfigError(f"--hidden_sizes={config.hidden_sizes!r} must be "
                      "comma-separated positive integers, e.g. 100,100.")
  config.settings.validate(config)
  return config


def field_help(field: dataclasses.Field) -> str:
  return field.metadata.get("help", field.name)


def config_fields() -> tuple[dataclasses.Field, ...]:
  return dataclasses.fields(RunConfig)


def common_names() -> tuple[str, ...]:
  """The flags of every method: those :class:`RunConfig` itself declares.

  Examples:
    >>> "lr" in common_names(), "alpha" in common_names()
    (True, False)
  """
  return settings_lib.declared_names(RunConfig)


def applying(config: RunConfig) -> tuple[str, ...]:
  """The flags that apply to ``config``'s method: common ones, then its own.

  Args:
    config: a config whose ``method`` is registered.

  Returns:
    Flag names, the common ones in declaration order, then the method's.

  Raises:
    ConfigError: the method is not known.

  Examples:
    >>> applying(RunConfig(method="ewc"))[-2:]
    ('lr_schedule', 'ewc_lambda')
  """
  return common_names() + config.method_object.settings.flag_names()


def not_applying(config: RunConfig, names: Iterable[str]) -> tuple[str, ...]:
  """Those of ``names`` (e.g. the flags a user set) that the method ignores.

  Args:
    config: the run's config.
    names: flag names.

  Returns:
    The names that do not apply, in :class:`RunConfig`'s field order.

  Examples:
    >>> not_applying(RunConfig(method="clnp"), ["lr", "alpha", "buffer_size"])
    ('buffer_size', 'alpha')
  """
  names, keep = set(names), set(applying(config))
  return tuple(f.name for f in config_fields()
               if f.name in names and f.name not in keep)


def without(config: RunConfig, names: Iterable[str]) -> RunConfig:
  """``config`` with the flags ``names`` back at their defaults.

  Examples:
    >>> without(RunConfig(method="clnp", buffer_size=500),
    ...         ["buffer_size"]).buffer_size
    200
  """
  defaults = RunConfig()
  return dataclasses.replace(config, **{n: getattr(defaults, n)
                                        for n in names})


def replace(config: RunConfig, **changes) -> RunConfig:
  """Returns a copy of ``config`` with ``changes`` applied (not validated)."""
  return dataclasses.replace(config, **changes)


def to_dict(config: RunConfig) -> dict:
  """The flags that apply to the run, by name: what its outputs record.

  The saved ``config`` flagfile, ``results.json``'s ``flags`` and the
  checkpoints' metadata hold these; a flag of another method is left out.

  Examples:
    >>> values = to_dict(RunConfig(method="derpp"))
    >>> values["alpha"], "tdm" in values, "ewc_lambda" in values
    (0.1, False, False)
  """
  return {name: getattr(config, name) for name in applying(config)}


def from_dict(values: dict, base: Optional[RunConfig] = None) -> RunConfig:
  """Builds a config from a dict of field values, rejecting unknown keys."""
  names = {f.name for f in config_fields()}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; see "
                      "--help for the list.")
  return dataclasses.replace(base or RunConfig(), **values)
