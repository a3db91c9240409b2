"""Run configuration: one dataclass, validated up front.

The command line (``experiments/train.py``) defines one absl flag per field of
:class:`RunConfig`, so flagfiles, the CLI and Python callers share one list of
names, defaults and checks.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from typing import Optional

from sparcl_jax.sparse import rules as mask_rules
from sparcl_jax import methods
from sparcl_jax.data import scenarios
from sparcl_jax.errors import ConfigError

DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "tiny_imagenet",
            "digits")
DATA_SOURCES = ("files", "tfds", "digits")
SCENARIO_KINDS = ("split", "permuted", "cifar10_100")
MODELS = ("mlp", "resnet18", "zenke_cnn")
CONV_GRADIENTS = ("canonical", "jax")
HEADS = ("shared", "multi")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "cosine")
PRUNE_SEARCHES = ("scan", "bisect")
# Every registered method (sparcl_jax.methods), and the task-incremental
# ones of the CLNP comparison.
METHODS = methods.names()
CLNP_METHODS = methods.names(methods.TASK_LEVEL)
ACTIVITY_READINGS = ("mean", "firing_rate")
SPARSITY_DISTRIBUTIONS = ("uniform", "erk")
MASK_STRUCTURES = ("unstructured", "grouped")
SPARSE_INITS = ("dense", "kept_fan_in")

# Default number of tasks per (scenario kind, dataset) when --num_tasks is 0:
# the scenario table's (sparcl_jax.data.scenarios).
DEFAULT_NUM_TASKS = scenarios.DEFAULT_NUM_TASKS


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Every setting of one continual-learning run.

  Field docs double as the ``--help`` text of the command line (the first
  line of each ``help`` metadata entry).
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
                                          "--data_dir), tfds, or digits "
                                          "(bundled with scikit-learn)."})
  data_dir: str = dataclasses.field(
      default="", metadata={"help": "Directory holding the dataset files "
                                    "(files) or the tfds data dir (tfds)."})
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
      default="100,100", metadata={"help": "MLP hidden widths, "
                                           "comma-separated."})
  nf: int = dataclasses.field(
      default=64, metadata={"help": "ResNet-18 base width (64 as in SparCL, "
                                    "20 for the reduced variant)."})
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
      default=1, metadata={"help": "Epochs per task."})
  batch_size: int = dataclasses.field(
      default=32, metadata={"help": "Stream mini-batch size (partial batches "
                                    "are dropped)."})
  minibatch_size: int = dataclasses.field(
      default=0, metadata={"help": "Buffer mini-batch size for replay; 0 "
                                   "means --batch_size."})
  lr: float = dataclasses.field(
      default=0.03, metadata={"help": "Learning rate (the peak rate under "
                                      "--lr_schedule=cosine)."})
  lr_schedule: str = dataclasses.field(
      default="constant", metadata={"help": "constant, or cosine: decay --lr "
                                            "to 0 over each task's training "
                                            "steps (CLNP, EWC, SI and "
                                            "single-task runs, whose "
                                            "optimizer restarts every task)."})
  optimizer: str = dataclasses.field(
      default="sgd", metadata={"help": f"One of {', '.join(OPTIMIZERS)}; a "
                                       "fresh optimizer state every task."})
  buffer_size: int = dataclasses.field(
      default=200, metadata={"help": "Reservoir buffer size (rehearsal "
                                     "methods)."})
  alpha: float = dataclasses.field(
      default=0.1, metadata={"help": "DER/DER++ weight of the logit-matching "
                                     "(MSE) replay term."})
  beta: float = dataclasses.field(
      default=0.5, metadata={"help": "DER++ weight of the label (CE) replay "
                                     "term."})
  current_task_logit_mask: bool = dataclasses.field(
      default=False, metadata={"help": "Mask logits outside the current "
                                       "task's classes in the stream loss "
                                       "(SparCL's use_cl_mask)."})
  replay_first_task: bool = dataclasses.field(
      default=False, metadata={"help": "Replay from the buffer during the "
                                       "first task too (mammoth does; "
                                       "SparCL's code does not)."})
  sparsity: float = dataclasses.field(
      default=0.75, metadata={"help": "SparCL/SNIP/RigL: target weight "
                                      "sparsity of the sparse layers."})
  sparsity_distribution: str = dataclasses.field(
      default="uniform", metadata={"help": "How sparsity spreads over layers: "
                                           "uniform or erk."})
  sparse_layers: str = dataclasses.field(
      default="", metadata={"help": "Regex over parameter paths (e.g. "
                                    "'hidden_.*/kernel') choosing the sparse "
                                    "layers; empty: residual-block convs and "
                                    "MLP hidden kernels."})
  mask_structure: str = dataclasses.field(
      default="unstructured", metadata={
          "help": "TDM: 'unstructured' (SparCL's masks over dense layers) "
                  "or 'grouped' (the MLP's hidden layers keep the same "
                  "input rows count in every block of --mask_group output "
                  "units and compute with the kept weights only)."})
  mask_group: int = dataclasses.field(
      default=250, metadata={"help": "TDM with --mask_structure=grouped: "
                                     "output units per block (must divide "
                                     "every hidden width)."})
  sparse_init: str = dataclasses.field(
      default="dense", metadata={
          "help": "How a sparse layer's kept weights start: 'dense' (as a "
                  "dense layer's, the rest masked: SparCL's) or "
                  "'kept_fan_in' (as a dense layer's whose fan-in is the "
                  "kept count, so a unit's output starts with a dense "
                  "layer's variance)."})
  tdm: bool = dataclasses.field(
      default=True, metadata={"help": "SparCL: task-aware dynamic masking "
                                      "(sparse weights)."})
  dgm: bool = dataclasses.field(
      default=True, metadata={"help": "SparCL: dynamic gradient masking."})
  ddr: bool = dataclasses.field(
      default=True, metadata={"help": "SparCL: dynamic data removal."})
  mask_update_interval: int = dataclasses.field(
      default=5, metadata={"help": "TDM: epochs between drop-and-grow "
                                   "updates (the counter restarts every "
                                   "task)."})
  mask_extra_growth: float = dataclasses.field(
      default=0.01, metadata={"help": "TDM: extra density grown at each task "
                                      "start."})
  mask_swap_fraction: float = dataclasses.field(
      default=0.01, metadata={"help": "TDM: share of connections swapped at "
                                      "the middle updates."})
  mask_growth: str = dataclasses.field(
      default="", metadata={"help": "TDM: the grow rule, by name (a file of "
                                    "sparcl_jax/sparse/rules: random, "
                                    "gradient, ...); empty: the method's own "
                                    "(random for SparCL, gradient for "
                                    "RigL)."})
  importance_lambda: float = dataclasses.field(
      default=0.5, metadata={"help": "TDM: importance = |W| + lambda |g|."})
  gradient_sparsity: float = dataclasses.field(
      default=0.8, metadata={"help": "DGM: share of each sparse layer's "
                                     "gradient zeroed (must exceed "
                                     "--sparsity to matter)."})
  dgm_refresh: int = dataclasses.field(
      default=30, metadata={"help": "DGM: iterations between gradient-mask "
                                    "refreshes (restarts every epoch)."})
  ddr_epochs: str = dataclasses.field(
      default="5,10,15,20", metadata={"help": "DDR: epochs of a task at whose "
                                              "start data is removed, "
                                              "comma-separated."})
  ddr_fraction: float = dataclasses.field(
      default=0.075, metadata={"help": "DDR: share of the task's training "
                                       "set removed at each removal epoch."})
  l1: float = dataclasses.field(
      default=1e-5, metadata={"help": "CLNP: weight of the L1 penalty on the "
                                      "trainable (free) weights (?)."})
  margin: float = dataclasses.field(
      default=0.1, metadata={"help": "CLNP: graceful-forgetting margin m in "
                                     "accuracy points, in [0, 100]."})
  activity_reading: str = dataclasses.field(
      default="mean", metadata={"help": "CLNP: unit activity = mean post-ReLU "
                                        "activation (mean) or share of inputs "
                                        "with positive activation "
                                        "(firing_rate) (?)."})
  threshold_per_layer: bool = dataclasses.field(
      default=True, metadata={"help": "CLNP: search one activity quantile "
                                      "per layer rather than one pooled "
                                      "threshold (?)."})
  prune_search: str = dataclasses.field(
      default="scan", metadata={"help": "CLNP: how the activity quantile is "
                                        "searched in steps of 0.01: scan "
                                        "(every candidate from the most "
                                        "aggressive down) or bisect (binary "
                                        "search, ~7 evaluations; for "
                                        "--finetune_epochs > 0)."})
  finetune_lr: float = dataclasses.field(
      default=0.0, metadata={"help": "CLNP: learning rate of the fine-tuning "
                                     "after pruning, under the same "
                                     "--lr_schedule over the fine-tuning "
                                     "steps (0: --lr)."})
  finetune_epochs: int = dataclasses.field(
      default=0, metadata={"help": "CLNP: epochs of fine-tuning after "
                                   "pruning, before the validation check "
                                   "(0: no fine-tuning)."})
  ewc_lambda: float = dataclasses.field(
      default=100.0, metadata={"help": "EWC: penalty strength lambda."})
  si_c: float = dataclasses.field(
      default=0.1, metadata={"help": "SI: penalty strength c."})
  si_xi: float = dataclasses.field(
      default=1e-3, metadata={"help": "SI: damping xi."})
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
      default=1000, metadata={"help": "Batch size of evaluation."})
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
  def ddr_epoch_list(self) -> tuple[int, ...]:
    return tuple(int(e) for e in self.ddr_epochs.split(",") if e.strip())

  @property
  def method_object(self) -> methods.Method:
    """The registered method ``--method`` names."""
    return methods.get(self.method)

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


def _choice(name: str, value: str, choices) -> None:
  if value not in choices:
    raise ConfigError(f"--{name}={value!r} is not known; choose one of: "
                      f"{', '.join(choices)}.")


def _at_least(name: str, value, low) -> None:
  if value < low:
    raise ConfigError(f"--{name}={value} must be at least {low}.")


# Seeds reach numpy's default_rng (non-negative only) and jax.random.key.
MAX_SEED = 2**32 - 1
# Every other integer flag counts or indexes things held in int32 arrays.
MAX_INT = 2**31 - 1


def _check_numbers(config: RunConfig) -> None:
  """Every float field finite, every integer one in its machine range.

  Generic over the fields of :class:`RunConfig`, so a new float flag is
  checked without being named; the per-flag ranges follow in
  :func:`validate`.
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
  """Checks every field of a run configuration before any work starts.

  Args:
    config: the configuration to check.

  Returns:
    The same configuration, unchanged, when every value is possible.

  Raises:
    ConfigError: with a one-line message naming the flag and what to do.

  Example:
    >>> validate(RunConfig(workdir="/tmp/run", method="er"))  # doctest: +SKIP
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
  _choice("lr_schedule", config.lr_schedule, LR_SCHEDULES)
  if (config.lr_schedule != "constant" and
      config.method_object.family != methods.TASK_LEVEL):
    raise ConfigError(f"--lr_schedule={config.lr_schedule} is supported by "
                      f"the methods {', '.join(CLNP_METHODS)}; use "
                      "--lr_schedule=constant with --method="
                      f"{config.method}.")
  if config.data_source == "digits" and config.dataset != "digits":
    raise ConfigError(f"--data_source=digits only provides --dataset=digits, "
                      f"not {config.dataset!r}; use --data_source=files or "
                      "tfds for it.")
  if config.data_source == "files" and not config.data_dir:
    raise ConfigError("--data_source=files needs --data_dir: the directory "
                      "holding the original dataset files.")
  _at_least("num_tasks", config.num_tasks, 0)
  if config.scenario != "permuted" and config.resolved_num_tasks < 2:
    raise ConfigError(f"--num_tasks={config.num_tasks} must be at least 2 "
                      "for a split scenario.")
  _at_least("epochs", config.epochs, 1)
  _at_least("batch_size", config.batch_size, 1)
  _at_least("minibatch_size", config.minibatch_size, 0)
  _at_least("buffer_size", config.buffer_size, 0)
  _at_least("nf", config.nf, 1)
  _at_least("eval_batch_size", config.eval_batch_size, 1)
  _at_least("steps_per_call", config.steps_per_call, 1)
  _at_least("num_devices", config.num_devices, 0)
  if config.num_devices > 1 and config.batch_size % config.num_devices:
    raise ConfigError(f"--batch_size={config.batch_size} cannot be split "
                      f"evenly over --num_devices={config.num_devices}; use "
                      "a batch size divisible by the device count.")
  if (config.num_devices > 1 and config.uses_buffer and
      config.replay_batch_size % config.num_devices):
    raise ConfigError(f"the replay mini-batch ({config.replay_batch_size}) "
                      f"cannot be split evenly over --num_devices="
                      f"{config.num_devices}; set --minibatch_size to a "
                      "multiple of the device count.")
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
  if config.alpha < 0 or config.beta < 0:
    raise ConfigError("--alpha and --beta must be non-negative.")
  if not 0.0 <= config.val_fraction < 1.0:
    raise ConfigError(f"--val_fraction={config.val_fraction} must be in "
                      "[0, 1).")
  _choice("activity_reading", config.activity_reading, ACTIVITY_READINGS)
  _choice("prune_search", config.prune_search, PRUNE_SEARCHES)
  if not 0.0 <= config.margin <= 100.0:
    raise ConfigError(f"--margin={config.margin} must be in [0, 100] "
                      "(accuracy points).")
  for name in ("l1", "ewc_lambda", "si_c", "si_xi"):
    if getattr(config, name) < 0:
      raise ConfigError(f"--{name}={getattr(config, name)} must be "
                        "non-negative.")
  _at_least("finetune_epochs", config.finetune_epochs, 0)
  if config.finetune_lr < 0:
    raise ConfigError(f"--finetune_lr={config.finetune_lr} must be positive, "
                      "or 0 for --lr.")
  _choice("sparsity_distribution", config.sparsity_distribution,
          SPARSITY_DISTRIBUTIONS)
  for name in ("sparsity", "gradient_sparsity", "mask_extra_growth",
               "mask_swap_fraction", "ddr_fraction"):
    value = getattr(config, name)
    if not 0.0 <= value < 1.0:
      raise ConfigError(f"--{name}={value} is impossible: it must be in "
                        "[0, 1).")
  if config.sparsity + config.mask_swap_fraction >= 1.0:
    raise ConfigError(f"--sparsity={config.sparsity} leaves no weights once "
                      "TDM swaps connections; use a sparsity below "
                      f"{1.0 - config.mask_swap_fraction:.2f}.")
  _choice("mask_structure", config.mask_structure, MASK_STRUCTURES)
  _choice("sparse_init", config.sparse_init, SPARSE_INITS)
  if config.mask_growth:
    try:
      mask_rules.grow_score(config.mask_growth)
    except ConfigError as err:
      raise ConfigError(f"--mask_growth: {err}") from None
  if config.importance_lambda < 0:
    raise ConfigError("--importance_lambda must be non-negative.")
  _at_least("mask_update_interval", config.mask_update_interval, 1)
  _at_least("dgm_refresh", config.dgm_refresh, 1)
  try:
    epochs = config.ddr_epoch_list
  except ValueError:
    epochs = (-1,)
  if min(epochs, default=0) < 0:
    raise ConfigError(f"--ddr_epochs={config.ddr_epochs!r} must be "
                      "comma-separated non-negative integers, e.g. "
                      "5,10,15,20.")
  if config.ddr_fraction * len(set(epochs)) >= 1.0:
    raise ConfigError(f"--ddr_fraction={config.ddr_fraction} at "
                      f"{len(set(epochs))} removal epochs would remove the "
                      "whole task; lower it.")
  if config.sparse_layers:
    try:
      re.compile(config.sparse_layers)
    except re.error as err:
      raise ConfigError(f"--sparse_layers={config.sparse_layers!r} is not a "
                        f"valid regular expression ({err}).")
  try:
    widths = config.hidden_widths
  except ValueError:
    raise ConfigError(f"--hidden_sizes={config.hidden_sizes!r} must be "
                      "comma-separated positive integers, e.g. 100,100.")
  if config.model == "mlp" and (not widths or min(widths) < 1):
    raise ConfigError(f"--hidden_sizes={config.hidden_sizes!r} must be "
                      "comma-separated positive integers, e.g. 100,100.")
  if config.grouped:
    _check_grouped(config)
  if config.sparse_init != "dense" and not config.is_sparse:
    raise ConfigError(f"--sparse_init={config.sparse_init} sets how sparse "
                      f"layers start, and --method={config.method} here "
                      "trains no sparse layers: drop it.")
  if config.uses_buffer:
    if config.buffer_size < 1:
      raise ConfigError(f"--method={config.method} replays from a buffer: "
                        "set --buffer_size to at least 1.")
    if config.replay_batch_size > config.buffer_size:
      raise ConfigError(f"the replay mini-batch ({config.replay_batch_size}) "
                        f"is larger than --buffer_size={config.buffer_size}; "
                        "lower --minibatch_size or raise --buffer_size.")
  return config


def _check_grouped(config: RunConfig) -> None:
  """What --mask_structure=grouped supports, each refusal with its fix."""
  refuse = "--mask_structure=grouped "
  if config.model != "mlp":
    raise ConfigError(refuse + f"has layers for --model=mlp only, not "
                      f"{config.model!r}; use the unstructured masks.")
  method = config.method_object
  if getattr(method, "static_masks", False):
    raise ConfigError(refuse + f"drops and grows rows on TDM's schedule; "
                      f"--method={config.method} keeps a static mask: use "
                      "the unstructured masks.")
  if (config.mask_growth or getattr(method, "growth", "random")) != "random":
    raise ConfigError(refuse + "grows rows at random (SparCL's rule); "
                      "gradient growth needs the dense gradient: drop "
                      "--mask_growth or use the unstructured masks.")
  if config.sparsity_distribution != "uniform" or config.sparse_layers:
    raise ConfigError(refuse + "makes every MLP hidden layer sparse at "
                      "--sparsity: drop --sparsity_distribution and "
                      "--sparse_layers.")
  if config.mask_group < 1:
    raise ConfigError(f"--mask_group={config.mask_group} must be >= 1.")
  for width in config.hidden_widths:
    if width % config.mask_group:
      raise ConfigError(f"--mask_group={config.mask_group} must divide "
                        f"every hidden width (--hidden_sizes="
                        f"{config.hidden_sizes}); pick a divisor.")


def field_help(field: dataclasses.Field) -> str:
  return field.metadata.get("help", field.name)


def config_fields() -> tuple[dataclasses.Field, ...]:
  return dataclasses.fields(RunConfig)


def replace(config: RunConfig, **changes) -> RunConfig:
  """Returns a copy of ``config`` with ``changes`` applied (not validated)."""
  return dataclasses.replace(config, **changes)


def to_dict(config: RunConfig) -> dict:
  return dataclasses.asdict(config)


def from_dict(values: dict, base: Optional[RunConfig] = None) -> RunConfig:
  """Builds a config from a dict of field values, rejecting unknown keys."""
  names = {f.name for f in config_fields()}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; see "
                      "--helpfull for the list.")
  return dataclasses.replace(base or RunConfig(), **values)
