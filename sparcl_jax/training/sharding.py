"""Data-parallel placement: a one-axis device mesh, sharded batches.

A run on ``--num_devices=N`` builds a :class:`jax.sharding.Mesh` over N
devices with a single ``'data'`` axis. Parameters, optimizer state, the
rehearsal buffer and the image pool are replicated on every device; the
train step constrains each batch (its indices and the gathered images) to be
split along ``'data'``, and XLA inserts the gradient all-reduce. With one
device nothing is placed or constrained, so single-device runs compile
exactly the program they did before.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sparcl_jax.errors import ConfigError

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str, num_processes: int,
                           process_id: int) -> bool:
  """Joins a multi-host run through ``jax.distributed.initialize``.

  Must run before anything touches a device. Does nothing without a
  coordinator address, so single-host runs never wait on a network.

  Args:
    coordinator_address: ``host:port`` of process 0, or "".
    num_processes: processes taking part.
    process_id: this process's index.

  Returns:
    True when the distributed runtime was started.

  Examples:
    >>> initialize_distributed("", 1, 0)
    False
  """
  if not coordinator_address:
    return False
  # Runs stop on signals through their own checkpointing; JAX's preemption
  # service would only add its log lines when a process dies.
  jax.config.update("jax_enable_preemption_service", False)
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)
  return True


# Signs, in a runtime error's text, that another process of the run is gone:
# its collectives (Gloo on CPU) lose their connection, or the coordination
# service misses its heartbeats or barriers.
_PEER_SIGNS = ("Gloo", "Connection reset by peer", "Connection refused",
               "heartbeat", "Barrier", "unhealthy", "coordination service")


def lost_peer(err: BaseException) -> Optional[str]:
  """Says in one line that another process of the run has gone, or None.

  A multi-process run cannot go on without every process: the survivors'
  next collective fails (at once when the peer's connection is reset).

  Args:
    err: an exception raised while the run trained.

  Returns:
    The one-line message, or None when ``err`` is something else (or the
    run has one process).

  Examples:
    >>> lost_peer(RuntimeError("Gloo AllGather failed")) is None  # one process
    True
  """
  if jax.process_count() == 1 or not isinstance(err, jax.errors.JaxRuntimeError):
    return None
  text = str(err).strip()
  if not any(sign in text for sign in _PEER_SIGNS):
    return None
  first = text.splitlines()[0] if text else type(err).__name__
  if len(first) > 200:
    first = first[:200] + "..."
  return (f"process {jax.process_index()} of {jax.process_count()} lost "
          f"another process of the run ({first}); start every process again "
          "with the same command to resume from the last checkpoint.")


def is_primary() -> bool:
  """Whether this process writes files (process 0 of a multi-host run).

  Returns:
    True on process 0 (always, on one host).

  Examples:
    >>> is_primary()
    True
  """
  return jax.process_index() == 0


def make_mesh(num_devices: int, batch_size: int) -> Optional[Mesh]:
  """Builds the data-parallel mesh of a run, or None for one device.

  Args:
    num_devices: devices to use; 0 means all of them (``jax.devices()``,
      every host's when distributed).
    batch_size: the stream batch size, which must split evenly.

  Returns:
    A mesh with one ``'data'`` axis, or None when a single device is used.

  Raises:
    ConfigError: more devices are asked for than exist, or the batch does
      not split evenly over them.

  Examples:
    >>> make_mesh(1, 32) is None
    True
  """
  devices = jax.devices()
  count = num_devices or len(devices)
  if count > len(devices):
    raise ConfigError(f"--num_devices={num_devices} but only "
                      f"{len(devices)} {devices[0].platform} device(s) are "
                      "visible; lower it (0 uses them all).")
  if batch_size % count:
    raise ConfigError(f"--batch_size={batch_size} cannot be split evenly "
                      f"over {count} devices; use a multiple of {count}.")
  if count == 1:
    return None
  return Mesh(np.asarray(devices[:count]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding that keeps a full copy of an array on every device.

  Args:
    mesh: the run's mesh.

  Returns:
    ``NamedSharding(mesh, PartitionSpec())``.

  Examples:
    >>> replicated(mesh).spec  # doctest: +SKIP
    PartitionSpec()
  """
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """The sharding that splits an array's leading (batch) axis over devices.

  Args:
    mesh: the run's mesh.

  Returns:
    ``NamedSharding(mesh, PartitionSpec('data'))``.

  Examples:
    >>> batch_sharded(mesh).spec  # doctest: +SKIP
    PartitionSpec('data',)
  """
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def constrain_batch(tree: Any, sharding: Optional[NamedSharding]) -> Any:
  """Inside jit: asks XLA to split every array of ``tree`` along its batch.

  Args:
    tree: arrays whose leading axis is the batch.
    sharding: :func:`batch_sharded` of the mesh, or None (a no-op).

  Returns:
    The same arrays, constrained.

  Examples:
    >>> x = constrain_batch(x, None)  # doctest: +SKIP
  """
  if sharding is None:
    return tree
  return jax.lax.with_sharding_constraint(tree, sharding)


def _put_replicated(leaf: Any, sharding: NamedSharding) -> Any:
  if leaf is None:
    return None
  if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(
      leaf.dtype, jax.dtypes.prng_key):
    impl = jax.random.key_impl(leaf)
    data = _put_replicated(jax.random.key_data(leaf), sharding)
    return jax.random.wrap_key_data(data, impl=impl)
  if jax.process_count() == 1:
    return jax.device_put(leaf, sharding)
  # Across hosts every process holds the same value; each supplies the copies
  # of its own devices.
  host = np.asarray(leaf)
  return jax.make_array_from_callback(host.shape, sharding,
                                      lambda index: host[index])


def replicate(tree: Any, mesh: Optional[Mesh]) -> Any:
  """Places a full copy of every array of ``tree`` on every mesh device.

  Args:
    tree: a pytree of host or device arrays (PRNG keys included).
    mesh: the run's mesh; None returns ``tree`` unchanged.

  Returns:
    The replicated pytree.

  Examples:
    >>> state = replicate(state, make_mesh(4, 32))  # doctest: +SKIP
  """
  if mesh is None:
    return tree
  sharding = replicated(mesh)
  return jax.tree.map(lambda leaf: _put_replicated(leaf, sharding), tree)
