"""sparcl_jax: sparse, efficient continual learning in JAX (SparCL and CLNP)."""

from sparcl_jax.errors import ConfigError, DataError, SparclError

__version__ = "0.1.0"
