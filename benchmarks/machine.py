"""What ran the benchmark: device, versions, CPUs, and its peak memory.

Recorded with every result so that numbers from different machines or
library versions are never compared unknowingly.
"""

from __future__ import annotations

import os
import platform
import resource

import jax
import numpy as np
import optax


def memory_report() -> dict:
  """Peak host RSS and, where the backend reports it, device memory.

  Returns:
    ``{'host_peak_rss_mb', 'device_peak_bytes'}`` (the latter None when
    unreported, as on CPU).

  Example:
    >>> memory_report()['host_peak_rss_mb'] > 0
    True
  """
  rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  device_peak = None
  try:
    stats = jax.devices()[0].memory_stats()
    if stats:
      device_peak = stats.get("peak_bytes_in_use")
  except Exception:  # pylint: disable=broad-except
    # Backends without memory statistics raise rather than return None.
    device_peak = None
  return {"host_peak_rss_mb": rss_kb / 1024.0,
          "device_peak_bytes": device_peak}


def environment() -> dict:
  """Device, versions and CPU count of this run.

  Returns:
    A JSON-able dict.

  Example:
    >>> 'jax' in environment()
    True
  """
  import flax  # pylint: disable=import-outside-toplevel
  device = jax.devices()[0]
  return {"device": f"{device.platform}:{device.device_kind}",
          "backend": jax.default_backend(),
          "num_devices": jax.device_count(),
          "cpu_count": os.cpu_count(),
          "affinity_cpus": len(os.sched_getaffinity(0))
                           if hasattr(os, "sched_getaffinity") else None,
          "jax": jax.__version__, "jaxlib": jax.lib.__version__
                                            if hasattr(jax, "lib") else None,
          "flax": flax.__version__, "optax": optax.__version__,
          "numpy": np.__version__, "python": platform.python_version(),
          "machine": platform.machine()}
