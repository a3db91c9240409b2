"""Whether a checkpoint belongs to this run: the same flags, the same data.

A run resumes a checkpoint only when every flag that changes what is
computed is the same (:func:`check_config`; :data:`RESUME_FREE_FLAGS` may
differ) and the data hashes the same (:func:`data_fingerprint`,
:func:`check_data`): ``--data_dir`` may move, the data may not change.
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional, Sequence

import numpy as np

from sparcl_jax.errors import ConfigError
from sparcl_jax.training import config as config_lib

# Flags that may differ between a run and its resumption: they change where
# files go or what is shown, not what is computed.
RESUME_FREE_FLAGS = ("workdir", "overwrite", "progress", "quiet", "tensorboard",
                     "checkpoint_every_steps", "coordinator_address",
                     "num_processes", "process_id", "data_dir", "download")


class CheckpointError(ConfigError):
  """A checkpoint cannot be read or does not belong to this run."""


def fresh_hint(directory: str) -> str:
  """The advice every refusal to resume ends with."""
  return f"to start fresh, use another --workdir or delete {directory}"


def check_config(saved: dict[str, Any], current: dict[str, Any],
                 directory: str,
                 free: Sequence[str] = RESUME_FREE_FLAGS,
                 defaults: Optional[dict[str, Any]] = None) -> None:
  """Refuses to resume a checkpoint with flags other than the current ones.

  Args:
    saved: the flags stored in the checkpoint.
    current: this run's flags (those that apply to its method,
      ``config.to_dict``).
    directory: the checkpoint directory (for the message).
    free: flags allowed to differ.
    defaults: values of flags that did not exist when the checkpoint was
      saved (a checkpoint of an older version resumes when the current run
      leaves them at these values); None: :class:`RunConfig`'s defaults.

  Raises:
    CheckpointError: naming the differing flags and how to start fresh.

  Examples:
    >>> check_config({"lr": 0.1}, {"lr": 0.1}, "/tmp/r/checkpoints")
  """
  if defaults is None:
    defaults = {f.name: f.default for f in config_lib.config_fields()}
  saved = {**{n: defaults[n] for n in current if n in defaults}, **saved}
  # The flags that apply to this run (its method among them): a checkpoint
  # of an older version also holds other methods' flags, which change
  # nothing here.
  names = sorted(set(current) - set(free))
  differ = [n for n in names if saved.get(n) != current.get(n)]
  if differ:
    shown = ", ".join(f"--{n}={saved.get(n)!r} there, {current.get(n)!r} here"
                      for n in differ[:3])
    more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
    raise CheckpointError(
        f"{directory} belongs to a run with other flags ({shown}{more}); "
        f"resume with the same flags, or {fresh_hint(directory)}.")


def data_fingerprint(scenario: Any, data_dir: str = "") -> dict[str, Any]:
  """A short fingerprint of the data a run trains and evaluates on.

  A hash over the scenario's image and label arrays (their shapes, dtypes
  and bytes: a fraction of a second for MNIST), with the example counts and
  ``data_dir`` to name them in messages.

  Args:
    scenario: a :class:`~sparcl_jax.data.types.Scenario`.
    data_dir: where the data was read from ("" for built-in data).

  Returns:
    ``{"hash": hex, "examples": "N train + M test", "data_dir": ...}``.

  Examples:
    >>> data_fingerprint(scenario)["examples"]  # doctest: +SKIP
    '60000 train + 10000 test'
  """
  digest = hashlib.sha256()
  for array in (scenario.train_images, scenario.train_labels,
                scenario.test_images, scenario.test_labels):
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
  return {"hash": digest.hexdigest()[:16],
          "examples": f"{len(scenario.train_labels)} train + "
                      f"{len(scenario.test_labels)} test",
          "data_dir": data_dir or ""}


def check_data(saved: Optional[dict[str, Any]],
               current: Optional[dict[str, Any]], directory: str) -> None:
  """Refuses to resume a checkpoint on data other than its own.

  Args:
    saved: the fingerprint stored in the checkpoint (None: saved before
      fingerprints existed, not checked).
    current: this run's fingerprint (None: not checked).
    directory: the checkpoint directory (for the message).

  Raises:
    CheckpointError: the fingerprints differ; the message names both.

  Examples:
    >>> check_data({"hash": "ab"}, {"hash": "ab"}, "/tmp/r/checkpoints")
  """
  if not saved or not current or saved.get("hash") == current.get("hash"):
    return

  def show(fp):
    where = f"--data_dir={fp.get('data_dir')}: " if fp.get("data_dir") else ""
    return f"{where}{fp.get('examples')} examples, hash {fp.get('hash')}"

  raise CheckpointError(
      f"{directory} was trained on other data ({show(saved)} there; "
      f"{show(current)} here); resume with the data it was trained on, or "
      f"{fresh_hint(directory)}.")
