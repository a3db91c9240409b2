"""The command line's flags: one per RunConfig field, in ``--help`` groups.

``train.py --help`` lists every flag under the heading of what it
configures (:data:`FLAG_GROUPS`), ``--help_method=NAME`` the flags one
method reads, and ``--list_configs`` the shipped configs with a line each;
:mod:`sparcl_jax.training.cli` parses and runs.
"""

from __future__ import annotations

import os
from typing import Optional

from absl import flags

from sparcl_jax import methods
from sparcl_jax.training import config as config_lib
from sparcl_jax.training import flagfiles
from sparcl_jax.training.config import RunConfig


# The headings of ``--help``, in the order printed, and the flags under
# each: grouped by what they configure, not by the method that reads them
# (``--help_method=NAME`` lists one method's). Every RunConfig field is in
# exactly one group; make_flag_values refuses a field that is in none.
FLAG_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Data and scenario", (
        "dataset", "data_source", "data_dir", "download", "scenario",
        "num_tasks", "shuffle_classes", "val_fraction")),
    ("Model", ("model", "hidden_sizes", "nf", "head", "conv_gradients")),
    ("Method and rehearsal", (
        "method", "buffer_size", "minibatch_size", "replay_first_task",
        "alpha", "beta", "current_task_logit_mask")),
    ("SparCL sparsity (masks, TDM, DGM, DDR)", (
        "sparsity", "sparsity_distribution", "sparse_layers",
        "mask_structure", "mask_group", "sparse_init",
        "mask_update_interval", "mask_extra_growth", "mask_swap_fraction",
        "mask_growth", "tdm", "importance_lambda", "dgm",
        "gradient_sparsity", "dgm_refresh", "ddr", "ddr_epochs",
        "ddr_fraction")),
    ("CLNP / EWC / SI", (
        "l1", "margin", "activity_reading", "threshold_per_layer",
        "prune_search", "finetune_lr", "finetune_epochs", "ewc_lambda",
        "si_c", "si_xi")),
    ("Training", (
        "epochs", "batch_size", "lr", "lr_schedule", "optimizer", "seed",
        "num_seeds", "eval_batch_size", "steps_per_call")),
    ("Outputs and resume", (
        "workdir", "overwrite", "checkpoint_every_steps", "tensorboard",
        "progress", "quiet")),
    ("Devices and hosts", (
        "num_devices", "coordinator_address", "num_processes",
        "process_id")),
)


def make_flag_values(method: Optional[str] = None) -> flags.FlagValues:
  """Defines one absl flag per :class:`RunConfig` field on a new registry.

  Each flag is filed under its ``--help`` heading (:func:`flag_group`),
  as absl files a flag under the module that defines it, and is a key flag
  of that heading, so ``fv.module_help(heading)`` lists the group. A flag
  that not every method reads says which do at the end of its help.

  Args:
    method: a registered method's name to define only the flags that apply
      to it (``--help_method``); None for every flag.

  Returns:
    A fresh ``FlagValues`` (a new one per call, so tests can parse often).

  Raises:
    ValueError: a :class:`RunConfig` field in no group of
      :data:`FLAG_GROUPS` (a programming error: add it there).

  Examples:
    >>> fv = make_flag_values()
    >>> _ = fv(["train.py", "--lr=0.1"]); fv.lr
    0.1
    >>> "buffer_size" in make_flag_values("clnp")
    False
    >>> [f.name for f in fv.get_key_flags_for_module("Model")][:2]
    ['model', 'hidden_sizes']
  """
  fv = flags.FlagValues()
  defaults = RunConfig()
  names = None
  if method is not None:
    names = set(config_lib.applying(RunConfig(method=method)))
  common = set(config_lib.common_names())
  for field in config_lib.config_fields():
    if names is not None and field.name not in names:
      continue
    default = getattr(defaults, field.name)
    helptext = config_lib.field_help(field)
    if field.name not in common:
      helptext += f" [{_readers(field.name)}]"
    group = flag_group(field.name)
    where = dict(flag_values=fv, module_name=group)
    if field.type in ("bool", bool):
      holder = flags.DEFINE_boolean(field.name, default, helptext, **where)
    elif field.type in ("int", int):
      holder = flags.DEFINE_integer(field.name, default, helptext, **where)
    elif field.type in ("float", float):
      holder = flags.DEFINE_float(field.name, default, helptext, **where)
    else:
      holder = flags.DEFINE_string(field.name, default, helptext, **where)
    fv.register_key_flag_for_module(group, fv[holder.name])
  return fv


def flag_group(name: str) -> str:
  """The ``--help`` heading a flag is listed under (:data:`FLAG_GROUPS`).

  Args:
    name: a :class:`RunConfig` field.

  Returns:
    The heading.

  Raises:
    ValueError: the field is in no group.

  Examples:
    >>> flag_group("lr"), flag_group("sparsity")
    ('Training', 'SparCL sparsity (masks, TDM, DGM, DDR)')
  """
  for heading, names in FLAG_GROUPS:
    if name in names:
      return heading
  raise ValueError(f"--{name} is in no --help group: add it to "
                   "sparcl_jax.training.flag_help.FLAG_GROUPS.")


def _readers(name: str) -> str:
  """The methods that read a method's own flag, for its help line.

  Examples:
    >>> _readers("beta")
    'methods: derpp, sparcl_derpp, snip_derpp, rigl_derpp'
  """
  readers = [m for m in methods.names()
             if name in methods.get(m).settings.flag_names()]
  return "methods: " + ", ".join(readers)


_USAGE = """\
usage: python experiments/train.py --flagfile=CONFIG.cfg [--flag=value ...]

  --flagfile=FILE   reads flags from FILE, one --flag=value a line (# starts
                    a comment; a config may name another with --flagfile=);
                    flags given later, on the command line too, win.
  --list_configs    lists the shipped configs, one line each.
  --help_method=NAME  lists only the flags --method=NAME reads.
"""


def help_text(method: Optional[str] = None) -> str:
  """``--help``: the flags under the headings of :data:`FLAG_GROUPS`, in
  that order (absl's ``module_help`` renders each group); with ``method``
  only the flags that method reads.

  Examples:
    >>> lines = help_text().splitlines()
    >>> lines.index("Data and scenario:") < lines.index("Model:")
    True
    >>> any(line.startswith("  --sparsity: ") for line in lines)
    True
    >>> "Model:" in help_text("clnp").splitlines()
    True
  """
  fv = make_flag_values(method)
  which = (f"The flags --method={method} reads" if method else
           "Every flag, by what it configures")
  groups = [fv.module_help(heading) for heading, _ in FLAG_GROUPS]
  return (f"{_USAGE}\n{which} (a flag that only some methods read ends "
          "in\n[methods: ...]):\n" + "\n".join(g for g in groups if g))


def configs_text(folder: Optional[str] = None) -> str:
  """``--list_configs``: each shipped config's name and first comment line.

  Examples:
    >>> lines = configs_text().splitlines()
    >>> lines[0].startswith("The configs in ")
    True
    >>> [l.split()[0] for l in lines[1:] if l.startswith("  quickstart ")]
    ['quickstart']
  """
  folder = folder or flagfiles.shipped_folder()
  listed = flagfiles.configs(folder)
  shown = os.path.relpath(folder) if not os.path.relpath(
      folder).startswith("..") else folder
  width = max((len(name) for name, _ in listed), default=0)
  rows = [f"  {name.ljust(width)}  {text}".rstrip() for name, text in listed]
  return "\n".join(
      [f"The configs in {shown} (run one with "
       f"--flagfile={os.path.join(shown, 'NAME.cfg')} --workdir=DIR):"]
      + rows)
