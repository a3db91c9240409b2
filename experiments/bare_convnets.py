"""Moved: the reference conv nets are :mod:`sparcl_jax.benchmarks.convnets`.

Kept so that the README's pointer here and ``import bare_convnets`` from this
folder keep working; import ``sparcl_jax.benchmarks.convnets`` instead.
"""

from sparcl_jax.benchmarks.convnets import (apply_resnet18, apply_zenke_cnn,
                                            init_resnet18, init_zenke_cnn)

__all__ = ["apply_resnet18", "apply_zenke_cnn", "init_resnet18",
           "init_zenke_cnn"]
