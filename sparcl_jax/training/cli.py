"""Command line of ``experiments/train.py``: absl flags over :class:`RunConfig`.

One flag per config field, so a flagfile line ``--lr=0.03`` and the Python
call ``RunConfig(lr=0.03)`` mean the same. Every user error ends in one line
on stderr and exit status 2; finished results are never overwritten unless
``--overwrite`` is given.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Optional, Sequence

from absl import flags

from sparcl_jax.errors import ConfigError, SparclError
from sparcl_jax.training import config as config_lib
from sparcl_jax.training.config import RunConfig

EXIT_USAGE = 2


def make_flag_values() -> flags.FlagValues:
  """Defines one absl flag per :class:`RunConfig` field on a new registry.

  Returns:
    A fresh ``FlagValues`` (a new one per call, so tests can parse often).

  Example:
    >>> fv = make_flag_values()
    >>> _ = fv(["train.py", "--lr=0.1"]); fv.lr
    0.1
  """
  fv = flags.FlagValues()
  defaults = RunConfig()
  for field in config_lib.config_fields():
    default = getattr(defaults, field.name)
    helptext = config_lib.field_help(field)
    if field.type in ("bool", bool):
      flags.DEFINE_boolean(field.name, default, helptext, flag_values=fv)
    elif field.type in ("int", int):
      flags.DEFINE_integer(field.name, default, helptext, flag_values=fv)
    elif field.type in ("float", float):
      flags.DEFINE_float(field.name, default, helptext, flag_values=fv)
    else:
      flags.DEFINE_string(field.name, default, helptext, flag_values=fv)
  return fv


def _one_line(message: str) -> str:
  return " ".join(str(message).split())


def parse_config(argv: Sequence[str]) -> RunConfig:
  """Parses command-line arguments (flagfiles included) into a config.

  Args:
    argv: ``sys.argv``-style list; ``argv[0]`` is the program name.

  Returns:
    The validated configuration.

  Raises:
    ConfigError: an unknown flag, a value of the wrong type, a missing
      flagfile, stray positional arguments or an impossible value.

  Example:
    >>> parse_config(["train.py", "--workdir=/tmp/r"]).method
    'derpp'
  """
  fv = make_flag_values()
  try:
    rest = fv(list(argv))
  except flags.Error as err:
    raise ConfigError(f"{_one_line(err)}; see --help for the flags.")
  if len(rest) > 1:
    raise ConfigError(f"unexpected argument(s) {' '.join(rest[1:])!r}; flags "
                      "look like --name=value.")
  values = {f.name: fv[f.name].value for f in config_lib.config_fields()}
  return config_lib.validate(RunConfig(**values))


def _help_text() -> str:
  fv = make_flag_values()
  return ("usage: python experiments/train.py --flagfile=CONFIG.cfg "
          "[--flag=value ...]\n\n" + fv.get_help())


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs one experiment from the command line.

  Args:
    argv: arguments (default ``sys.argv``).

  Returns:
    The process exit status: 0 on success, 2 on a user error.

  Example:
    >>> main(["train.py", "--flagfile=experiments/configs/quickstart.cfg",
    ...       "--workdir=/tmp/quick"])  # doctest: +SKIP
    0
  """
  argv = list(sys.argv if argv is None else argv)
  prog = os.path.basename(argv[0]) if argv else "train.py"
  if any(a in ("-h", "--help", "--helpfull", "-?") for a in argv[1:]):
    print(_help_text())
    return 0
  try:
    config = parse_config(argv)
    # Imported late: --help and flag errors need none of the training code.
    from sparcl_jax.training import loop, outputs  # pylint: disable=import-outside-toplevel
    workdir = outputs.prepare_workdir(config.workdir, config.overwrite)
    config = config_lib.replace(config, workdir=workdir)
    outputs.write_config(workdir, config_lib.to_dict(config))
    log = outputs.MetricsLog(workdir)
    results = loop.run(config, log_fn=log)
  except SparclError as err:
    print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
    return EXIT_USAGE
  outputs.write_results(workdir, results)
  title = f"{config.method} on {results['scenario']['name']}"
  outputs.plot_acc_matrix(workdir, results["acc_matrix"]["class_il"],
                          results["acc_matrix"]["task_il"], title)
  if "masks" in results.get("sparsity", {}):
    outputs.plot_sparsity(workdir, results["sparsity"]["masks"]["layers"],
                          title)
  if "data_kept_per_epoch" in results:
    outputs.plot_data_kept(workdir, results["data_kept_per_epoch"], title)
  print(outputs.summary_table(results))
  if "stopped_early" in results:
    print(f"stopped early: {results['stopped_early']}")
  print(f"results: {os.path.join(workdir, outputs.RESULTS)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
