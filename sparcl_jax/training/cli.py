"""Command line of ``experiments/train.py``: absl flags over :class:`RunConfig`.

One flag per config field, so a flagfile line ``--lr=0.03`` and the Python
call ``RunConfig(lr=0.03)`` mean the same. Every user error ends in one line
on stderr and exit status 2; finished results are never overwritten unless
``--overwrite`` is given.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Optional, Sequence

from absl import flags

from sparcl_jax.errors import ConfigError, SparclError
from sparcl_jax.training import config as config_lib
from sparcl_jax.training.config import RunConfig

EXIT_USAGE = 2
# A run whose loss became NaN/inf: not a usage error, but not a success.
EXIT_DIVERGED = 1


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


def _fan_out(sinks):
  def log(record):
    for sink in sinks:
      sink(record)
  return log


def _is_a(err: SparclError, name: str) -> bool:
  # Flag errors happen before the checkpoint module (and JAX) is imported.
  module = sys.modules.get("sparcl_jax.training.checkpoint")
  return module is not None and isinstance(err, getattr(module, name))


def _failure(err: SparclError) -> str:
  """The one stderr line of a run that stopped early."""
  if _is_a(err, "RunInterrupted"):
    return _one_line(err)
  return f"error: {_one_line(err)}"


def _exit_status(err: SparclError) -> int:
  """2 for user errors, 1 for a diverged run, 128+N for signal N."""
  if _is_a(err, "RunInterrupted"):
    return 128 + int(err.signum)
  if _is_a(err, "NonFiniteLossError"):
    return EXIT_DIVERGED
  return EXIT_USAGE


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
  writers = []
  try:
    config = parse_config(argv)
    # Imported late: --help and flag errors need none of the training code.
    from sparcl_jax.training import checkpoint, loop, outputs, sharding  # pylint: disable=import-outside-toplevel
    sharding.initialize_distributed(config.coordinator_address,
                                    config.num_processes, config.process_id)
    primary = sharding.is_primary()
    workdir = outputs.prepare_workdir(config.workdir, config.overwrite)
    config = config_lib.replace(config, workdir=workdir)
    ckpt = checkpoint.Checkpointer(workdir, config.checkpoint_every_steps)
    writers.append(ckpt)
    if ckpt.exists() and os.path.exists(os.path.join(workdir,
                                                     outputs.RESULTS)):
      # --overwrite of a finished run: its checkpoints are finished too.
      if primary:
        shutil.rmtree(ckpt.directory)
    meta = None
    if ckpt.exists():
      # Checked before anything in the work directory is rewritten.
      meta = ckpt.read_meta()
      checkpoint.check_config(meta["config"], config_lib.to_dict(config),
                              ckpt.directory)
    log = lambda record: None
    if primary:
      outputs.write_config(workdir, config_lib.to_dict(config))
      log = outputs.MetricsLog(workdir, meta and meta["logged"])
      if config.tensorboard:
        from sparcl_jax.training import tensorboard  # pylint: disable=import-outside-toplevel
        writers.append(tensorboard.TensorBoardLog(
            workdir, meta and meta["steps_done"]))
    log_fn = _fan_out([log] + writers[1:])
    with checkpoint.stop_on_signals(ckpt):
      results = loop.run(config, log_fn=log_fn, checkpoints=ckpt)
  except SparclError as err:
    print(f"{prog}: {_failure(err)}", file=sys.stderr)
    return _exit_status(err)
  finally:
    for writer in writers:
      writer.close()
  if not primary:
    return 0
  outputs.write_results(workdir, results)
  title = f"{config.method} on {results['scenario']['name']}"
  outputs.plot_acc_matrix(workdir, results["acc_matrix"]["class_il"],
                          results["acc_matrix"]["task_il"], title)
  if "masks" in results.get("sparsity", {}):
    outputs.plot_sparsity(workdir, results["sparsity"]["masks"]["layers"],
                          title)
  if "data_kept_per_epoch" in results:
    outputs.plot_data_kept(workdir, results["data_kept_per_epoch"], title)
  if "capacity_plot_data" in results:
    from sparcl_jax.training import capacity_plot  # pylint: disable=import-outside-toplevel
    capacity_plot.plot_capacity(workdir, results)
  print(outputs.summary_table(results))
  if "stopped_early" in results:
    print(f"stopped early: {results['stopped_early']}")
  print(f"results: {os.path.join(workdir, outputs.RESULTS)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
