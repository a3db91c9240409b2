"""Names every docstring example may use without importing them.

``python -m pytest`` runs the examples of ``sparcl_jax`` as doctests
(setup.cfg); they are written as a user of the library would type them after
``import jax, jax.numpy as jnp, numpy as np, optax`` and
``import sparcl_jax as sc``.

Every test and example also runs with ``SPARCL_JAX_DATA_DIR`` set to a fresh
temporary folder and ``SPARCL_JAX_DATA_MIRROR`` set to a closed 127.0.0.1
port, so none writes into ~/.cache or reaches the internet: a download that
a test does not serve itself fails at once ("connection refused").
"""

import socket

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparcl_jax as sc


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
  doctest_namespace.update(jax=jax, jnp=jnp, np=np, optax=optax, sc=sc)


@pytest.fixture(scope="session")
def closed_port() -> int:
  """A 127.0.0.1 port nothing listens on (bound once, then closed)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _no_download_escapes(monkeypatch, tmp_path_factory, closed_port):
  monkeypatch.setenv("SPARCL_JAX_DATA_DIR",
                     str(tmp_path_factory.mktemp("data_cache")))
  monkeypatch.setenv("SPARCL_JAX_DATA_MIRROR",
                     f"http://127.0.0.1:{closed_port}")
