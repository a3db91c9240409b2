"""Command line of ``experiments/train.py``: absl flags over :class:`RunConfig`.

One flag per config field, so a flagfile line ``--lr=0.03`` and the Python
call ``RunConfig(lr=0.03)`` mean the same. Every user error ends in one line
on stderr and exit status 2; finished results are never overwritten unless
``--overwrite`` is given, and even then only once the new run has finished
(see :mod:`sparcl_jax.training.outputs`). A run locks its work directory;
the data is loaded and checked against the checkpoint (flags and data
fingerprint) before any file there is written.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from typing import Optional, Sequence

from absl import flags

from sparcl_jax import methods
from sparcl_jax.errors import ConfigError, SparclError
from sparcl_jax.methods import settings as settings_lib
from sparcl_jax.training import config as config_lib
from sparcl_jax.training import flag_help
from sparcl_jax.training import flagfiles
from sparcl_jax.training import resume_checks
from sparcl_jax.training.config import RunConfig

EXIT_USAGE = 2
# A run whose loss became NaN/inf: not a usage error, but not a success.
EXIT_DIVERGED = 1
# A multi-process run one of whose processes died.
EXIT_PEER_LOST = 1


def _one_line(message: str) -> str:
  return " ".join(str(message).split())


def parse_config(argv: Sequence[str]) -> RunConfig:
  """Parses command-line arguments (flagfiles included) into a config.

  Flags that do not apply to the chosen method are dropped (see
  :func:`parse_args`, which also names them).

  Args:
    argv: ``sys.argv``-style list; ``argv[0]`` is the program name.

  Returns:
    The validated configuration.

  Raises:
    ConfigError: an unknown flag, a value of the wrong type, a missing
      flagfile, stray positional arguments or an impossible value.

  Examples:
    >>> parse_config(["train.py", "--workdir=/tmp/r"]).method
    'derpp'
  """
  return parse_args(argv)[0]


def parse_args(argv: Sequence[str]) -> tuple[RunConfig, tuple[str, ...]]:
  """The validated config, and the flags given that its method ignores.

  A flag set on the command line or in a flagfile that the method does not
  read is put back at its default, so the run, its checks and its saved
  ``config`` are those of a run without it.

  Args:
    argv: ``sys.argv``-style list; ``argv[0]`` is the program name.

  Returns:
    ``(config, ignored)``: ``ignored`` names the dropped flags, in
    :class:`RunConfig`'s order.

  Raises:
    ConfigError: as :func:`parse_config`.

  Examples:
    >>> config, ignored = parse_args(["train.py", "--workdir=/tmp/r",
    ...                               "--method=clnp", "--buffer_size=500"])
    >>> ignored, config.buffer_size
    (('buffer_size',), 200)
  """
  fv = flag_help.make_flag_values()
  try:
    rest = fv(flagfiles.expand(argv))
  except flags.Error as err:
    raise ConfigError(f"{_one_line(err)}; see --help for the flags.")
  if len(rest) > 1:
    raise ConfigError(f"unexpected argument(s) {' '.join(rest[1:])!r}; flags "
                      "look like --name=value.")
  values = {f.name: fv[f.name].value for f in config_lib.config_fields()}
  # Paths as the user meant them from this folder, so that the saved config
  # repeats the run from any other.
  for name in ("workdir", "data_dir"):
    if values[name]:
      values[name] = os.path.abspath(os.path.expanduser(values[name]))
  config = RunConfig(**values)
  ignored = config_lib.not_applying(
      config, [name for name in values if fv[name].present])
  return config_lib.validate(config_lib.without(config, ignored)), ignored


def ignored_warning(method: str, names: Sequence[str]) -> str:
  """The one warning line naming the flags a method ignores.

  Examples:
    >>> ignored_warning("clnp", ["buffer_size", "alpha"])
    'warning: --buffer_size, --alpha do not apply to --method=clnp; ignored.'
  """
  verb = "does" if len(names) == 1 else "do"
  listed = ", ".join(f"--{name}" for name in names)
  return f"warning: {listed} {verb} not apply to --method={method}; ignored."


def _start_jax(sharding) -> bool:
  """Starts JAX's backend; says in one line why it cannot start.

  Returns:
    Whether this process writes files (process 0).

  Raises:
    ConfigError: no backend of the platforms JAX was told to use (e.g.
      ``JAX_PLATFORMS=cuda`` on a machine without a GPU) can start.
  """
  try:
    return sharding.is_primary()
  except (RuntimeError, AssertionError) as err:
    # A platform whose plugin fails raises RuntimeError; JAX skips 'cuda'
    # without a visible GPU and, left with no backend, fails an assert.
    platforms = os.environ.get("JAX_PLATFORMS", "")
    told = f" (JAX_PLATFORMS={platforms})" if platforms else ""
    message = _one_line(err) or "none of those platforms is on this machine"
    if len(message) > 300:
      message = message[:300] + "..."
    raise ConfigError(
        f"JAX cannot start its backend{told}: {message}; unset JAX_PLATFORMS "
        "or name a platform this machine has (e.g. JAX_PLATFORMS=cpu)."
    ) from None


# OSErrors of the machine rather than of the program: one line, exit 2.
_SYSTEM_ERRNOS = {errno.ENOSPC: "the disk is full",
                  errno.EDQUOT: "the disk quota is exceeded",
                  errno.ENAMETOOLONG: "a path is too long",
                  errno.EROFS: "the file system is read-only",
                  errno.EACCES: "permission denied"}


def _system_error(err: OSError) -> Optional[ConfigError]:
  """A one-line error for an OSError the user can fix, or None."""
  what = _SYSTEM_ERRNOS.get(err.errno)
  if what is None:
    return None
  from sparcl_jax.training import outputs  # pylint: disable=import-outside-toplevel
  where = f" at {outputs.short_path(err.filename)}" if err.filename else ""
  advice = {errno.ENOSPC: "free some space, then run the same command again "
                          "(finished files are kept)",
            errno.EDQUOT: "free some space, then run the same command again "
                          "(finished files are kept)",
            errno.ENAMETOOLONG: "choose a shorter --workdir",
            errno.EROFS: "choose a writable --workdir",
            errno.EACCES: "check the permissions of that path"}[err.errno]
  return ConfigError(f"{what}{where}; {advice}.")


def _fan_out(sinks):
  def log(record):
    for sink in sinks:
      sink(record)
  return log


def _is_a(err: SparclError, module_name: str, name: str) -> bool:
  # Flag errors happen before the training modules (and JAX) are imported.
  module = sys.modules.get(f"sparcl_jax.training.{module_name}")
  return module is not None and isinstance(err, getattr(module, name))


def _failure(err: SparclError) -> str:
  """The one stderr line of a run that stopped early."""
  if _is_a(err, "checkpoint", "RunInterrupted"):
    return _one_line(err)
  return f"error: {_one_line(err)}"


def _exit_status(err: SparclError) -> int:
  """2 for user errors, 1 for a diverged run, 128+N for signal N."""
  if _is_a(err, "checkpoint", "RunInterrupted"):
    return 128 + int(err.signum)
  if _is_a(err, "divergence", "NonFiniteLossError"):
    return EXIT_DIVERGED
  return EXIT_USAGE


def _lost_peer(err: BaseException) -> Optional[str]:
  """The one-line message when another process of the run has died."""
  module = sys.modules.get("sparcl_jax.training.sharding")
  return None if module is None else module.lost_peer(err)


def _print_out(text: str) -> None:
  """Prints to stdout; a reader that closed the pipe early (``| head``)
  costs no traceback."""
  try:
    print(text, flush=True)
  except BrokenPipeError:
    sys.stdout = open(os.devnull, "w", encoding="utf-8")  # pylint: disable=consider-using-with


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs one experiment from the command line.

  Args:
    argv: arguments (default ``sys.argv``).

  Returns:
    The process exit status: 0 on success, 2 on a user error.

  Examples:
    >>> main(["train.py", "--flagfile=experiments/configs/quickstart.cfg",
    ...       "--workdir=/tmp/quick"])  # doctest: +SKIP
    0
  """
  argv = list(sys.argv if argv is None else argv)
  prog = os.path.basename(argv[0]) if argv else "train.py"
  if any(a in ("-h", "--help", "--helpfull", "--helpshort", "-?")
         for a in argv[1:]):
    _print_out(flag_help.help_text())
    return 0
  if "--list_configs" in argv[1:]:
    try:
      text = flag_help.configs_text()
    except SparclError as err:
      print(f"{prog}: {_failure(err)}", file=sys.stderr)
      return _exit_status(err)
    _print_out(text)
    return 0
  for arg in argv[1:]:
    if arg.startswith("--help_method="):
      name = arg[len("--help_method="):]
      if name not in methods.names():
        print(f"{prog}: error: --help_method={name!r} is not known; choose "
              f"one of: {', '.join(methods.names())}.", file=sys.stderr)
        return EXIT_USAGE
      _print_out(flag_help.help_text(name))
      return 0
  writers = []
  workdir = None
  finished = peer_lost = False
  try:
    config, ignored = parse_args(argv)
    # Imported late: --help and flag errors need none of the training code.
    from sparcl_jax.training import checkpoint, loop, outputs, run_state, sharding  # pylint: disable=import-outside-toplevel
    sharding.initialize_distributed(config.coordinator_address,
                                    config.num_processes, config.process_id)
    primary = _start_jax(sharding)
    # Locked for the run's life; an --overwrite of finished results runs in
    # workdir.run (a hidden staging directory) until it has its own results.
    workdir = outputs.prepare_workdir(config.workdir, config.overwrite,
                                      lock=primary)
    config = config_lib.replace(config, workdir=workdir.path)
    rundir = workdir.run
    ckpt = checkpoint.Checkpointer(rundir, config.checkpoint_every_steps)
    writers.append(ckpt)
    # The data first: a missing or broken --data_dir changes no file.
    start_time = time.perf_counter()
    scenario = run_state.build_scenario(config)
    ckpt.data = resume_checks.data_fingerprint(scenario, config.data_dir)
    if ckpt.exists():
      # Checked before anything in the work directory is rewritten.
      meta = ckpt.read_meta()
      resume_checks.check_config(meta["config"], config_lib.to_dict(config),
                              ckpt.directory)
      resume_checks.check_data(meta.get("data"), ckpt.data, ckpt.directory)
    log = lambda record: None
    if primary:
      outputs.write_config(rundir, config_lib.to_dict(config))
      # Opened at the first record, once the run has restored (or not) its
      # checkpoint: a resumed log keeps the records up to that checkpoint.
      log = _Lazy(lambda: outputs.MetricsLog(
          rundir, ckpt.restored_meta and ckpt.restored_meta["logged"]))
      writers.append(log)
      if config.tensorboard:
        from sparcl_jax.training import tensorboard  # pylint: disable=import-outside-toplevel
        writers.append(_Lazy(lambda: tensorboard.TensorBoardLog(
            rundir, ckpt.restored_meta and ckpt.restored_meta["steps_done"])))
    log_fn = _fan_out([log] + writers[2:])
    if primary and not config.quiet:
      from sparcl_jax.training import progress  # pylint: disable=import-outside-toplevel
      log_fn = _fan_out([log_fn, progress.ProgressLines(
          scenario.num_tasks, config.epochs, first_seed=config.seed)])
    if ignored:
      # Here, once the run's set-up has passed its checks: a refused run
      # stays one line on stderr.
      print(f"{prog}: {ignored_warning(config.method, ignored)}",
            file=sys.stderr)
    for line in config.method_object.inert_flags(config):
      print(f"{prog}: warning: {line}", file=sys.stderr)
    with checkpoint.stop_on_signals(ckpt):
      results = loop.run(config, scenario=scenario, log_fn=log_fn,
                         checkpoints=ckpt, start_time=start_time)
    if primary:
      log.open()  # a run resumed at its very end logs nothing: trim anyway
    for writer in writers:
      writer.close()
    if primary:
      _write_outputs(outputs, rundir, config, results)
      workdir.commit()
    finished = True
  except SparclError as err:
    print(f"{prog}: {_failure(err)}", file=sys.stderr)
    return _exit_status(err)
  except OSError as err:
    problem = _system_error(err)
    if problem is None:
      raise
    print(f"{prog}: {_failure(problem)}", file=sys.stderr)
    return _exit_status(problem)
  except Exception as err:  # pylint: disable=broad-except
    lost = _lost_peer(err)
    if lost is None:
      raise
    print(f"{prog}: error: {lost}", file=sys.stderr)
    peer_lost = True
  finally:
    for writer in writers:
      writer.close()
    if workdir is not None:
      if not finished:
        workdir.abandon()
      workdir.release()
  if peer_lost:
    # JAX's exit handler would wait at a shutdown barrier for the lost
    # process until the heartbeat timeout, then abort with a C++ trace.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_PEER_LOST)  # pylint: disable=protected-access
  if not primary:
    return 0
  results_path = os.path.join(workdir.path, outputs.RESULTS)
  try:
    print(outputs.summary_table(results))
    if "stopped_early" in results:
      print(f"stopped early: {results['stopped_early']}")
    print(f"results: {results_path}", flush=True)
  except OSError as err:
    # The run is finished and saved: a closed pipe or a full disk behind
    # stdout must not turn it into a failure.
    sys.stdout = open(os.devnull, "w", encoding="utf-8")  # pylint: disable=consider-using-with
    print(f"{prog}: the summary could not be printed ({err}); the results "
          f"are in {results_path}", file=sys.stderr)
  return 0


class _Lazy:
  """A log sink created at its first record (and closed if it was)."""

  def __init__(self, factory):
    self._factory = factory
    self._sink = None

  def open(self):
    if self._sink is None:
      self._sink = self._factory()
    return self._sink

  def __call__(self, record) -> None:
    self.open()(record)

  def close(self) -> None:
    sink, self._sink = self._sink, None
    if sink is not None and hasattr(sink, "close"):
      sink.close()


def _write_outputs(outputs, rundir: str, config: RunConfig,
                   results: dict) -> None:
  """results.json and the plots."""
  from sparcl_jax.training import plots  # pylint: disable=import-outside-toplevel
  outputs.write_results(rundir, results)
  title = f"{config.method} on {results['scenario']['name']}"
  plots.plot_acc_matrix(rundir, results["acc_matrix"]["class_il"],
                        results["acc_matrix"]["task_il"], title)
  if "masks" in results.get("sparsity", {}):
    plots.plot_sparsity(rundir, results["sparsity"]["masks"]["layers"],
                        title)
  if "data_kept_per_epoch" in results:
    plots.plot_data_kept(rundir, results["data_kept_per_epoch"], title)
  if "capacity_plot_data" in results:
    from sparcl_jax.training import capacity_plot  # pylint: disable=import-outside-toplevel
    capacity_plot.plot_capacity(rundir, results)


if __name__ == "__main__":
  sys.exit(main())
