"""What a run leaves in its work directory, and how it is written safely.

Layout: ``config`` (the resolved flags, itself a flagfile), ``results.json``,
``metrics.jsonl`` (one JSON object per epoch and per evaluation),
``checkpoints/``, ``tensorboard/`` and the plots (``acc_matrix.png``...,
drawn by :mod:`sparcl_jax.training.plots`). Files are written to a temporary
name and renamed, so an interrupted write never leaves half a results file;
they get the modes of the user's umask (0644 under the usual 022), as
plainly created files do. A work directory whose path leaves no room below
the system's path limit for the run's own files is refused up front.

Safety of a work directory (:func:`prepare_workdir`):

* **One run at a time.** A run holds an exclusive ``flock`` on
  ``WORKDIR/.lock`` (which names its pid and host) for its whole life; a
  second run on the same directory is refused in one line naming the
  holder. The kernel releases the lock when its holder dies, however it
  dies, so a killed run never blocks the next one.
* **``--overwrite`` loses nothing before it has a replacement.** When the
  directory holds finished results, the new run works in the hidden
  ``WORKDIR/.overwrite/`` (config, log, checkpoints, results, plots) and
  leaves every file of the finished run byte-identical. Only once it has
  written its own ``results.json`` does :meth:`Workdir.commit` swap its files
  in: the old run's files go to ``WORKDIR/.replaced/``, the new ones are
  renamed into place (``results.json`` last), then both hidden directories
  are removed. The names to move are written to ``.overwrite/.manifest``
  first, so a swap cut short (a kill, a power cut) is completed by the next
  command on that directory. A new run that fails before it saved a
  checkpoint leaves no trace; one stopped after saving one (a signal, a
  kill) resumes from ``.overwrite/`` when run again, with or without
  ``--overwrite``.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
from typing import Any, Optional

import numpy as np

from sparcl_jax.errors import ConfigError

RESULTS = "results.json"
CONFIG = "config"
METRICS_LOG = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LOCK = ".lock"
STAGING = ".overwrite"
REPLACED = ".replaced"
MANIFEST = ".manifest"
# Every name a run may write in its work directory: what an --overwrite run
# replaces (names it does not write itself are removed).
# The plots are drawn by the plots and capacity_plot modules.
RUN_OUTPUTS = (RESULTS, CONFIG, METRICS_LOG, CHECKPOINTS, "acc_matrix.png",
               "sparsity.png", "data_kept.png", "capacity.png", "tensorboard")


class WorkdirLock:
  """An exclusive ``flock`` on ``WORKDIR/.lock``, held until :meth:`release`.

  The file names the holder (``pid N on HOST``). The kernel drops the lock
  when the holding process exits or is killed, so a stale file never blocks.

  Args:
    workdir: the (existing) work directory.

  Raises:
    ConfigError: another live process holds the lock.

  Examples:
    >>> lock = WorkdirLock("/tmp")  # doctest: +SKIP
    >>> lock.release()  # doctest: +SKIP
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK)
    self._fd: Optional[int] = os.open(self.path, os.O_RDWR | os.O_CREAT,
                                      0o644)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
      holder = ""
      if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        try:
          with open(self.path) as f:
            holder = " ".join(f.read().split())
        except OSError:
          pass
      os.close(self._fd)
      self._fd = None
      if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        # A file system without locks (some network mounts): run unlocked.
        return
      raise ConfigError(
          f"--workdir={workdir} is in use by another run "
          f"({holder or 'holder unknown'}); wait for it to finish, stop it, "
          "or choose another --workdir.") from None
    os.ftruncate(self._fd, 0)
    os.write(self._fd, f"pid {os.getpid()} on {socket.gethostname()}\n"
             .encode())

  def release(self) -> None:
    """Drops the lock (safe to call twice)."""
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None


@dataclasses.dataclass
class Workdir:
  """A locked work directory and where this run writes in it.

  Attributes:
    path: the work directory (``--workdir``, absolute).
    run: where this run writes its files: ``path`` itself, or
      ``path/.overwrite`` while an ``--overwrite`` run replaces finished
      results (see the module docstring).
    lock: the directory's lock (None in processes that do not write).
    created: whether this run created the directory.
  """

  path: str
  run: str
  lock: Optional[WorkdirLock] = None
  created: bool = False

  @property
  def staged(self) -> bool:
    """Whether this run writes beside finished results, to swap in later."""
    return self.run != self.path

  def commit(self) -> None:
    """Swaps a staged run's files in (a no-op for an unstaged run)."""
    if self.lock is not None and self.staged:
      _swap_in(self.path)

  def abandon(self) -> None:
    """After a failed run: drops a staged run that saved no checkpoint, and
    a directory this run created that still holds nothing but its lock (a
    run refused for its data leaves no trace)."""
    if self.lock is not None and self.staged and not _has_checkpoints(
        self.run):
      shutil.rmtree(self.run, ignore_errors=True)
    if self.lock is not None and self.created and _holds_only_the_lock(
        self.path):
      shutil.rmtree(self.path, ignore_errors=True)

  def release(self) -> None:
    if self.lock is not None:
      self.lock.release()


def _holds_only_the_lock(path: str) -> bool:
  """Whether ``path`` holds its lock file and at most an empty checkpoint
  directory: nothing a run wrote."""
  names = set(os.listdir(path)) - {LOCK}
  checkpoints = os.path.join(path, CHECKPOINTS)
  return names <= {CHECKPOINTS} and (not names or not os.listdir(checkpoints))


def _has_checkpoints(run: str) -> bool:
  directory = os.path.join(run, CHECKPOINTS)
  return os.path.isdir(directory) and any(
      "tmp" not in name and not name.startswith(".")
      for name in os.listdir(directory))


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path)
  elif os.path.lexists(path):
    os.remove(path)


def _swap_in(path: str) -> None:
  """Replaces the run in ``path`` by the finished one in ``path/.overwrite``.

  Idempotent: a swap cut short is completed by calling it again.
  """
  staging = os.path.join(path, STAGING)
  replaced = os.path.join(path, REPLACED)
  manifest = os.path.join(staging, MANIFEST)
  if not os.path.exists(manifest):
    names = sorted(n for n in os.listdir(staging) if not n.startswith("."))
    write_atomic(manifest, json.dumps(names))
  with open(manifest) as f:
    names = json.load(f)
  os.makedirs(replaced, exist_ok=True)
  for name in RUN_OUTPUTS:
    if name not in names and os.path.lexists(os.path.join(path, name)):
      _remove(os.path.join(replaced, name))
      os.rename(os.path.join(path, name), os.path.join(replaced, name))
  for name in sorted(names, key=lambda n: n == RESULTS):  # results last
    new = os.path.join(staging, name)
    if not os.path.lexists(new):
      continue  # moved in by the swap that was cut short
    old = os.path.join(path, name)
    if os.path.isdir(old) and not os.path.islink(old):
      _remove(os.path.join(replaced, name))
      os.rename(old, os.path.join(replaced, name))
    os.replace(new, old)
  shutil.rmtree(staging)
  shutil.rmtree(replaced, ignore_errors=True)


# Bytes kept, below the system's path limit, for the longest path a run
# writes under its work directory (an orbax checkpoint's temporary array
# files under .overwrite/checkpoints/, a TensorBoard event file named after
# the host).
LONGEST_INSIDE = 256


def short_path(path, limit: int = 120) -> str:
  """``path`` shortened in the middle to fit a one-line message."""
  path = os.fsdecode(path)
  if len(path) <= limit:
    return path
  half = (limit - 3) // 2
  return f"{path[:half]}...{path[-half:]} ({len(path)} characters)"


def _check_path_length(path: str) -> None:
  """Refuses a work directory whose files would exceed the path limits."""
  existing = path  # the nearest existing ancestor, whose limits apply
  while (not os.path.isdir(existing) and
         os.path.dirname(existing) != existing):
    existing = os.path.dirname(existing)
  try:
    path_max = os.pathconf(existing, "PC_PATH_MAX")
    name_max = os.pathconf(existing, "PC_NAME_MAX")
  except (OSError, ValueError):
    path_max, name_max = 4096, 255
  size = len(os.fsencode(path))
  if size + LONGEST_INSIDE > path_max:
    raise ConfigError(
        f"--workdir={short_path(path)} is too long: {size} bytes, and the "
        f"run's files under it need {LONGEST_INSIDE} more within this "
        f"system's limit of {path_max}; choose a shorter --workdir.")
  longest = max((len(os.fsencode(part)) for part in path.split(os.sep)),
                default=0)
  if longest > name_max:
    raise ConfigError(
        f"--workdir={short_path(path)} has a name of {longest} bytes, "
        f"longer than this system's limit of {name_max}; choose a shorter "
        "--workdir.")


def prepare_workdir(path: str, overwrite: bool, lock: bool = True
                    ) -> Workdir:
  """Creates and locks the work directory, and says where the run writes.

  Args:
    path: the directory.
    overwrite: whether finished results already there may be replaced.
    lock: whether this process writes: it creates and locks the directory.
      The other processes of a multi-process run only read it.

  Returns:
    The :class:`Workdir`; release it when the run ends.

  Raises:
    ConfigError: the directory cannot be created or written, another run
      holds it, or it holds finished results and ``overwrite`` is False
      (and no unfinished ``--overwrite`` run waits there to resume).

  Examples:
    >>> workdir = prepare_workdir("/tmp/sparcl_run", overwrite=False)  # doctest: +SKIP
    >>> workdir.run  # doctest: +SKIP
    '/tmp/sparcl_run'
  """
  path = os.path.abspath(path)
  _check_path_length(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"--workdir={path} is a file, not a directory; choose "
                      "another --workdir.")
  created = not os.path.exists(path)
  if lock:  # the other processes of a multi-process run write nothing
    try:
      os.makedirs(path, exist_ok=True)
      with tempfile.NamedTemporaryFile(dir=path):
        pass
    except OSError as err:
      raise ConfigError(f"cannot write to --workdir={short_path(path)} "
                        f"({err.strerror}); choose a writable directory.")
  held = WorkdirLock(path) if lock else None
  try:
    staging = os.path.join(path, STAGING)
    if lock and os.path.exists(os.path.join(staging, RESULTS)):
      _swap_in(path)  # an --overwrite run finished, its swap was cut short
    run = path
    if os.path.exists(os.path.join(path, RESULTS)):
      if not (overwrite or _has_checkpoints(staging)):
        raise ConfigError(
            f"--workdir={path} already holds finished results ({RESULTS}); "
            "choose another --workdir or pass --overwrite to replace them.")
      run = staging
      if lock:
        os.makedirs(run, exist_ok=True)
  except BaseException:
    if held is not None:
      held.release()
    raise
  return Workdir(path, run, held, created)


def _umask() -> int:
  """The process's umask.

  Read from /proc where Linux shows it, since setting and restoring it
  (the only portable way) briefly changes it for every thread.
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def write_atomic(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` through a temporary file and a rename.

  The file gets the mode a plain ``open(path, "w")`` would give it (0666
  less the umask), not the temporary file's private 0600.
  """
  directory = os.path.dirname(path) or "."
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
  try:
    with os.fdopen(fd, "w") as f:
      os.fchmod(f.fileno(), 0o666 & ~_umask())
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_config(workdir: str, values: dict[str, Any]) -> None:
  """Writes the resolved flags as a flagfile that reproduces the run."""
  lines = []
  for name, value in values.items():
    if isinstance(value, bool):
      lines.append(f"--{name}" if value else f"--no{name}")
    else:
      lines.append(f"--{name}={value}")
  write_atomic(os.path.join(workdir, CONFIG), "\n".join(lines) + "\n")


def write_results(workdir: str, results: dict[str, Any]) -> None:
  write_atomic(os.path.join(workdir, RESULTS),
               json.dumps(results, indent=2, sort_keys=True) + "\n")


class MetricsLog:
  """Appends one JSON object per line to ``metrics.jsonl``.

  Args:
    workdir: the run's directory.
    keep_records: None starts a new log; a number resumes one, keeping that
      many records (those logged up to the checkpoint being resumed) and
      dropping later ones, which the resumed run logs again.
  """

  def __init__(self, workdir: str, keep_records: Optional[int] = None):
    self.path = os.path.join(workdir, METRICS_LOG)
    kept = []
    if keep_records is not None and os.path.exists(self.path):
      with open(self.path) as f:
        kept = f.readlines()[:keep_records]
    # A new run starts a new log; a half-finished earlier log is not results.
    write_atomic(self.path, "".join(kept))

  def __call__(self, record: dict[str, Any]) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")


def summary_table(results: dict[str, Any]) -> str:
  """A plain-text table of a run's accuracies and summary metrics.

  Args:
    results: a run's results (as in ``results.json``); with several seeds,
      a line of mean +- std over them follows the means.

  Returns:
    The table's text.

  Examples:
    >>> r = {"acc_matrix": {"class_il": [[90.0]], "task_il": [[99.0]]},
    ...      "final": {"class_il": 90.0, "task_il": 99.0,
    ...                "forgetting_class_il": 0.0, "forgetting_task_il": 0.0,
    ...                "bwt_class_il": 0.0, "bwt_task_il": 0.0},
    ...      "final_std": {"class_il": 1.5, "task_il": 0.25},
    ...      "seeds": [0, 1], "wall_time_s": 3.0}
    >>> print(summary_table(r).splitlines()[3])
    over 2 seeds (mean +- std): class-IL 90.00 +- 1.50  task-IL 99.00 +- 0.25
  """
  class_il = np.asarray(results["acc_matrix"]["class_il"])
  task_il = np.asarray(results["acc_matrix"]["task_il"])
  n = class_il.shape[0]
  lines = ["task  class-IL  task-IL   (accuracy after the last task, %)"]
  for j in range(n):
    lines.append(f"{j + 1:>4}  {class_il[-1, j]:8.2f}  {task_il[-1, j]:7.2f}")
  final = results["final"]
  lines.append(f"mean  {final['class_il']:8.2f}  {final['task_il']:7.2f}")
  if "final_std" in results:
    std = results["final_std"]
    lines.append(f"over {len(results['seeds'])} seeds (mean +- std): class-IL "
                 f"{final['class_il']:.2f} +- {std['class_il']:.2f}  task-IL "
                 f"{final['task_il']:.2f} +- {std['task_il']:.2f}")
  lines.append(f"forgetting  class-IL {final['forgetting_class_il']:.2f}  "
               f"task-IL {final['forgetting_task_il']:.2f};  BWT class-IL "
               f"{final['bwt_class_il']:.2f}  task-IL "
               f"{final['bwt_task_il']:.2f}")
  lines.append(f"wall time {results['wall_time_s']:.1f} s")
  return "\n".join(lines)
