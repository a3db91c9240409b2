"""Tests for sparcl_jax.training.plots."""

from __future__ import annotations

import os

from PIL import Image

from sparcl_jax.training import capacity_plot
from sparcl_jax.training import outputs
from sparcl_jax.training import plots


def test_every_plot_is_a_png_that_overwrite_replaces(tmp_path):
  workdir = str(tmp_path)
  written = [
      plots.plot_acc_matrix(workdir, [[90.0, 0.0], [80.0, 95.0]],
                            [[99.0, 0.0], [97.0, 98.0]], "demo"),
      plots.plot_sparsity(workdir, {"hidden_0/kernel": {"sparsity": 0.75},
                                    "hidden_1/kernel": {"sparsity": 0.9}},
                          "demo"),
      plots.plot_data_kept(workdir, [[100, 90], [100, 80]], "demo"),
  ]
  assert [os.path.basename(p) for p in written] == [
      plots.ACC_MATRIX_PLOT, plots.SPARSITY_PLOT, plots.DATA_KEPT_PLOT]
  for path in written:
    assert os.path.dirname(path) == workdir
    with Image.open(path) as image:
      assert image.format == "PNG" and min(image.size) > 100
  # --overwrite replaces only the names a run may write: every plot's.
  for name in (plots.ACC_MATRIX_PLOT, plots.SPARSITY_PLOT,
               plots.DATA_KEPT_PLOT, capacity_plot.CAPACITY_PLOT):
    assert name in outputs.RUN_OUTPUTS
