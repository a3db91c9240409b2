"""Checkpoints that let a run resume, and the faults that stop a run.

A checkpoint is one orbax step under ``WORKDIR/checkpoints/<n>`` holding two
items: ``state``, every array the training loop carries (any pytree: model,
optimizer state with masks, rehearsal buffer, DDR statistics, PRNG keys,
CLNP partitions...), and ``meta``, a JSON dict (the position in the run, the
accuracy matrices so far, counters, the run's flags). Nothing here knows the
loop's layout, so any runner can use it:

1. ``ckpt = Checkpointer(workdir, every_steps)``; when ``ckpt.exists()``,
   ``tree, meta = ckpt.restore(fresh_tree)`` and
   ``resume_checks.check_config(meta["config"], current_flags,
   ckpt.directory)``;
2. after a chunk of steps, ``ckpt.due(steps_before, steps_after)`` or
   ``ckpt.stop_requested`` say when to ``ckpt.save(tree, meta)``; always
   save after each task;
3. ``raise ckpt.interrupted(where)`` once saved when a stop was requested,
   and ``divergence.check_finite`` before every save.

Every checkpoint also holds a fingerprint of the data it was trained on
(``resume_checks.data_fingerprint``, set as ``ckpt.data``);
``resume_checks.check_data`` refuses
to resume one on other data. When the newest checkpoint cannot be read,
:meth:`Checkpointer.restore` falls back to the newest intact one, says so in
one line, and moves the corrupt one aside (``checkpoints/<n>.corrupt``).

How each leaf is stored (a host copy, gathered across processes) and placed
back like the fresh tree's leaf: :mod:`sparcl_jax.training.checkpoint_leaves`.
:func:`stop_on_signals` turns SIGINT/SIGTERM into ``stop_requested``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import sys
from typing import Any, Iterator, Optional, Sequence

import jax

from sparcl_jax.errors import SparclError
from sparcl_jax.training import orbax_noise
from sparcl_jax.training.checkpoint_leaves import (describe_leaves,
                                                   empty_host_like,
                                                   first_difference,
                                                   flatten_with_paths,
                                                   place_like, to_host)
from sparcl_jax.training.resume_checks import CheckpointError, fresh_hint

CHECKPOINTS = "checkpoints"
FORMAT = 1

class RunInterrupted(SparclError):
  """The run stopped on a signal after saving a checkpoint.

  Attributes:
    signum: the signal's number.
  """

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


class Checkpointer:
  """Saves and restores a run's state in ``WORKDIR/checkpoints``.

  Args:
    workdir: the run's work directory.
    every_steps: also save every this many train steps (0: only where the
      caller saves unconditionally, e.g. at task ends).
    max_to_keep: complete checkpoints kept; older ones are deleted after a
      newer one is committed, so the last good one survives a failed save.

  Examples:
    >>> import tempfile
    >>> ckpt = Checkpointer(tempfile.mkdtemp(), every_steps=100)
    >>> path = ckpt.save({"w": jnp.ones(2)}, {"task": 0})
    >>> ckpt.latest_step(), ckpt.read_meta()
    (1, {'task': 0})
    >>> tree, meta = ckpt.restore({"w": jnp.zeros(2)})
    >>> tree["w"]
    Array([1., 1.], dtype=float32)
    >>> ckpt.close()
  """

  def __init__(self, workdir: str, every_steps: int = 0,
               max_to_keep: int = 2):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
    self.every_steps = int(every_steps)
    self.max_to_keep = max_to_keep
    self.stop_signal: Optional[int] = None
    self.last_saved: Optional[str] = None
    # The fingerprint of the run's data (data_fingerprint), saved with every
    # checkpoint when set.
    self.data: Optional[dict[str, Any]] = None
    # The metadata restore() returned (None before a restore).
    self.restored_meta: Optional[dict[str, Any]] = None
    # Steps found corrupt: {step: why}; skipped by the reads.
    self._corrupt: dict[int, str] = {}
    self._manager = None

  @property
  def stop_requested(self) -> bool:
    """Whether a signal asked the run to save and stop."""
    return self.stop_signal is not None

  def request_stop(self, signum: int) -> None:
    """Asks the run to save at its next chunk boundary and stop."""
    self.stop_signal = signum

  def _orbax(self):
    # Imported here: only runs that checkpoint pay for orbax's start-up.
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    return ocp

  def _get_manager(self):
    if self._manager is None:
      ocp = self._orbax()
      options = ocp.CheckpointManagerOptions(
          max_to_keep=self.max_to_keep, create=True,
          enable_async_checkpointing=False)
      try:
        self._manager = ocp.CheckpointManager(self.directory,
                                              options=options)
      except Exception as err:  # pylint: disable=broad-except
        raise CheckpointError(
            f"the checkpoint directory {self.directory} cannot be opened "
            f"({type(err).__name__}: {err}); {fresh_hint(self.directory)}.")
    return self._manager

  def _entries(self) -> list[str]:
    if not os.path.isdir(self.directory):
      return []
    # Orbax writes into '<n>.orbax-checkpoint-tmp-*' and renames when done;
    # such leftovers of a killed save are not checkpoints.
    return [name for name in os.listdir(self.directory)
            if "tmp" not in name and not name.startswith(".")]

  def exists(self) -> bool:
    """Whether the directory holds anything that claims to be a checkpoint.

    Returns:
      True when ``checkpoints/`` has entries other than unfinished saves.

    Examples:
      >>> Checkpointer("/nonexistent").exists()
      False
    """
    return bool(self._entries())

  def latest_step(self) -> Optional[int]:
    """Number of the newest complete checkpoint, or None."""
    if not self.exists():
      return None
    return self._get_manager().latest_step()

  def save(self, tree: Any, meta: dict[str, Any]) -> str:
    """Writes one checkpoint and waits until it is committed.

    Args:
      tree: pytree of arrays (PRNG keys and None leaves allowed).
      meta: JSON-able dict saved beside it.

    Returns:
      The new checkpoint's directory.

    Examples:
      >>> path = ckpt.save(state, {"task": 1})  # doctest: +SKIP
    """
    ocp = self._orbax()
    manager = self._get_manager()
    paths, leaves, _ = flatten_with_paths(tree)
    arrays = {f"leaf_{i:05d}": to_host(leaf)
              for i, leaf in enumerate(leaves)}
    full_meta = {"format": FORMAT, "leaves": describe_leaves(paths, leaves),
                 "meta": meta}
    step = (manager.latest_step() or 0) + 1
    full = None
    # A failing save logs from orbax's threads and leaves asyncio futures
    # that log when collected: held, and dropped when the disk is full (the
    # one-line error says it all), shown otherwise.
    orbax_noise.filter_closed_loop_noise()
    with orbax_noise.held_logs() as held:
      try:
        manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(arrays),
            meta=ocp.args.JsonSave(full_meta)), force=True)
        manager.wait_until_finished()
      except Exception as err:  # pylint: disable=broad-except
        full = _disk_full(err)
        if full is None:
          held.release()
          raise
      if full is not None:
        orbax_noise.silence_closed_loop_noise()
        self._drop_unfinished()
        orbax_noise.collect_abandoned_reads()
      else:
        held.release()
    if full is not None:
      kept = "no checkpoint was saved yet; free some space and run again"
      if self.last_saved:
        kept = (f"the last good checkpoint {self.last_saved} is kept; free "
                "some space and run the same command again to resume from it")
      raise CheckpointError(
          f"the disk is full: checkpoint {step} could not be saved in "
          f"{self.directory} ({full}); {kept}.")
    self.last_saved = os.path.join(self.directory, str(step))
    return self.last_saved

  def _drop_unfinished(self) -> None:
    """After a failed save: orbax's half-written step goes (it holds space)."""
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      self._manager = None
    if os.path.isdir(self.directory):
      for name in os.listdir(self.directory):
        if "orbax-checkpoint-tmp" in name:
          shutil.rmtree(os.path.join(self.directory, name),
                        ignore_errors=True)

  def restore(self, like: Any) -> tuple[Any, dict[str, Any]]:
    """Reads the newest intact checkpoint into the structure of ``like``.

    A newest checkpoint that cannot be read is moved aside (to
    ``<n>.corrupt``) and the next older one is tried, with one line on
    stderr saying so.

    Args:
      like: a pytree with the same structure, shapes and dtypes as the
        saved one (e.g. the freshly initialised state); its arrays'
        shardings are the restored arrays' shardings. Or a function of the
        checkpoint's ``meta`` giving that pytree.

    Returns:
      ``(tree, meta)``.

    Raises:
      CheckpointError: there is no complete checkpoint, it cannot be read,
        or it was saved from a different structure; the message names the
        checkpoint and how to start fresh.

    Examples:
      >>> state, meta = ckpt.restore(fresh_state)  # doctest: +SKIP
    """
    ocp = self._orbax()
    first_error = None
    while True:
      manager = self._get_manager()
      step, saved = self._read_meta()
      where = os.path.join(self.directory, str(step))
      described = saved["leaves"]
      target = like(saved["meta"]) if callable(like) else like
      paths, leaves, treedef = flatten_with_paths(target)
      expected = describe_leaves(paths, leaves)
      if saved.get("format") != FORMAT or described != expected:
        raise CheckpointError(
            f"checkpoint {where} does not fit this run "
            f"({first_difference(described, expected)}); it was written by "
            f"another configuration or version; "
            f"{fresh_hint(self.directory)}.")
      abstract = {f"leaf_{i:05d}": empty_host_like(leaf)
                  for i, leaf in enumerate(leaves)}
      try:
        arrays = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))["state"]
        restored = [place_like(arrays[f"leaf_{i:05d}"], leaf)
                    for i, leaf in enumerate(leaves)]
        break
      except Exception as err:  # pylint: disable=broad-except
        orbax_noise.silence_closed_loop_noise()
        orbax_noise.collect_abandoned_reads()
        error = self._mark_corrupt(step, "its arrays cannot be read", err)
        first_error = first_error or error
        if not self._intact_steps():
          raise first_error  # pylint: disable=raise-missing-from
    self._set_corrupt_aside(where)
    self.last_saved = where
    self.restored_meta = saved["meta"]
    return jax.tree_util.tree_unflatten(treedef, restored), saved["meta"]

  def _mark_corrupt(self, step: int, what: str,
                    err: BaseException) -> CheckpointError:
    """Records a checkpoint found corrupt; the error naming it."""
    self._corrupt[step] = f"{what} ({type(err).__name__}: {_short(err)})"
    return CheckpointError(
        f"checkpoint {os.path.join(self.directory, str(step))} is corrupt: "
        f"{self._corrupt[step]}; {fresh_hint(self.directory)}.")

  def _intact_steps(self) -> list[int]:
    """Steps not (yet) found corrupt, newest first."""
    return sorted((s for s in self._get_manager().all_steps()
                   if s not in self._corrupt), reverse=True)

  def _set_corrupt_aside(self, where: str) -> None:
    """Moves the corrupt checkpoints newer than the restored one aside, and
    says so in one line."""
    if not self._corrupt:
      return
    self.close()
    moved = []
    for step in sorted(self._corrupt, reverse=True):
      source = os.path.join(self.directory, str(step))
      target, n = source + ".corrupt", 1
      while os.path.exists(target):
        n += 1
        target = f"{source}.corrupt{n}"
      os.rename(source, target)
      moved.append(f"checkpoint {source} is corrupt ({self._corrupt[step]}), "
                   f"moved to {target}")
    self._corrupt = {}
    print(f"{'; '.join(moved)}; resuming from the newest intact checkpoint, "
          f"{where}.", file=sys.stderr, flush=True)

  def _read_meta(self) -> tuple[int, dict[str, Any]]:
    """The newest checkpoint whose metadata reads (older ones on failure)."""
    ocp = self._orbax()
    manager = self._get_manager()
    if manager.latest_step() is None:
      raise CheckpointError(
          f"{self.directory} holds no complete checkpoint (found: "
          f"{', '.join(sorted(self._entries()))}); "
          f"{fresh_hint(self.directory)}.")
    first_error = None
    for step in self._intact_steps():
      try:
        saved = manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"]
        if not isinstance(saved.get("leaves"), list) or "meta" not in saved:
          raise ValueError("the metadata lacks 'leaves' or 'meta'")
        return step, saved
      except Exception as err:  # pylint: disable=broad-except
        error = self._mark_corrupt(step, "its metadata cannot be read", err)
        first_error = first_error or error
    raise first_error or CheckpointError(
        f"{self.directory} holds no intact checkpoint; "
        f"{fresh_hint(self.directory)}.")

  def read_meta(self) -> dict[str, Any]:
    """The JSON metadata of the newest checkpoint, without its arrays.

    Returns:
      The ``meta`` dict given to :meth:`save`.

    Raises:
      CheckpointError: there is no complete checkpoint or it is corrupt.

    Examples:
      >>> ckpt.read_meta()["task"]  # doctest: +SKIP
      2
    """
    return self._read_meta()[1]["meta"]

  def due(self, steps_before: int, steps_after: int) -> bool:
    """Whether a periodic save falls in the steps just run.

    Args:
      steps_before: train steps of the run before the chunk.
      steps_after: train steps after it.

    Returns:
      True when a multiple of ``every_steps`` lies in
      ``(steps_before, steps_after]``.

    Examples:
      >>> Checkpointer("/tmp/r", every_steps=10).due(8, 12)
      True
    """
    if self.every_steps <= 0:
      return False
    return steps_after // self.every_steps > steps_before // self.every_steps

  def interrupted(self, where: str) -> RunInterrupted:
    """The exception that ends a run stopped by a signal, after its save.

    Args:
      where: the position saved, e.g. "task 2, epoch 1, step 40".

    Returns:
      A :class:`RunInterrupted` whose message says how to resume.

    Examples:
      >>> raise ckpt.interrupted("task 2, epoch 1")  # doctest: +SKIP
    """
    signum = self.stop_signal or signal.SIGINT
    name = signal.Signals(signum).name
    return RunInterrupted(
        f"stopped by {name}: saved a checkpoint at {where} in "
        f"{self.last_saved}; run the same command again to resume.", signum)

  def close(self) -> None:
    """Releases orbax's resources (safe to call twice)."""
    if self._manager is not None:
      self._manager.close()
      self._manager = None


def _disk_full(err: BaseException) -> Optional[str]:
  """"No space left on device" (or the quota's reason) when ``err``, or an
  error it was raised from, is a full disk; None otherwise.

  Orbax and tensorstore may wrap the OSError, or keep only its text.
  """
  reasons = {errno.ENOSPC: os.strerror(errno.ENOSPC),
             errno.EDQUOT: os.strerror(errno.EDQUOT)}
  seen = set()
  while err is not None and id(err) not in seen:
    seen.add(id(err))
    if isinstance(err, OSError) and err.errno in reasons:
      return reasons[err.errno]
    for reason in reasons.values():
      if reason in str(err):
        return reason
    err = err.__cause__ or err.__context__
  return None


def _short(err: BaseException, limit: int = 200) -> str:
  text = " ".join(str(err).split())
  return text if len(text) <= limit else text[:limit] + "..."


@contextlib.contextmanager
def stop_on_signals(checkpointer: Checkpointer,
                    signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)
                    ) -> Iterator[Checkpointer]:
  """Within the block, SIGINT/SIGTERM ask the run to save and stop.

  A second signal while the first is being handled raises
  ``KeyboardInterrupt`` at once (the impatient Ctrl-C). Outside the main
  thread, where handlers cannot be set, the block runs unchanged.

  Args:
    checkpointer: receives :meth:`Checkpointer.request_stop`.
    signals: the signals to catch.

  Yields:
    The checkpointer.

  Examples:
    >>> with stop_on_signals(ckpt):  # doctest: +SKIP
    ...   results = loop.run(config, checkpoints=ckpt)
  """

  def handle(signum, frame):
    del frame
    if checkpointer.stop_requested:
      raise KeyboardInterrupt
    checkpointer.request_stop(signum)
    print(f"{signal.Signals(signum).name} received: saving a checkpoint at "
          "the next chunk boundary, then stopping.", file=sys.stderr,
          flush=True)

  previous = {}
  try:
    for sig in signals:
      previous[sig] = signal.signal(sig, handle)
  except ValueError:
    pass
  try:
    yield checkpointer
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
