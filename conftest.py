"""Names every docstring example may use without importing them.

``python -m pytest`` runs the examples of ``sparcl_jax`` as doctests
(setup.cfg); they are written as a user of the library would type them after
``import jax, jax.numpy as jnp, numpy as np, optax`` and
``import sparcl_jax as sc``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparcl_jax as sc


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
  doctest_namespace.update(jax=jax, jnp=jnp, np=np, optax=optax, sc=sc)
