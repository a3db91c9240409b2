"""How sparse layers start (``--sparse_init``): kept weights at the kept
fan-in for grouped layers and for masked kernels, checked by exact values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparcl_jax.sparse import grouped
from sparcl_jax.sparse import masks as masks_lib
from sparcl_jax.errors import ConfigError
from sparcl_jax.models.grouped_dense import (GroupedSparseDense,
                                             GroupedSparseLinear)
from sparcl_jax.sparse.tdm import tdm_masks
from sparcl_jax.training import cli
from sparcl_jax.training import config as config_lib
from sparcl_jax.data import pipeline
from sparcl_jax.training import run_state
from sparcl_jax.training import tasks

FAN_IN, GROUPS, GROUP, K = 20, 3, 4, 5
LECUN = jax.nn.initializers.lecun_normal()


def test_kept_values_are_a_dense_init_at_the_kept_fan_in():
  rows = grouped.random_rows(jax.random.key(0), FAN_IN, GROUPS, K)
  key = jax.random.key(1)
  values = grouped.initial_values(key, LECUN, FAN_IN, rows, GROUP)
  # Block g, kept slot i, unit j is entry [i, g * GROUP + j] of a [K, 12]
  # LeCun kernel: its variance is 1 / K, a dense layer reading K inputs.
  kernel = LECUN(key, (K, GROUPS * GROUP))
  for g in range(GROUPS):
    np.testing.assert_array_equal(values[g],
                                  kernel[:, g * GROUP:(g + 1) * GROUP])
  cut = grouped.initial_values(key, LECUN, FAN_IN, rows, GROUP,
                               kept_fan_in=False)
  np.testing.assert_array_equal(
      cut, grouped.from_dense(LECUN(key, (FAN_IN, GROUPS * GROUP)), rows))


def _counting_init(key, shape, dtype=jnp.float32):
  """A kernel initializer that writes 0, 1, 2, ... so its use shows."""
  del key
  return jnp.arange(np.prod(shape), dtype=dtype).reshape(shape)


@pytest.mark.parametrize("kept_fan_in", [True, False])
def test_linen_layer_draws_its_values_by_initial_values(kept_fan_in):
  layer = GroupedSparseDense(GROUPS * GROUP, GROUP, 1 - K / FAN_IN,
                             kernel_init=_counting_init,
                             kept_fan_in_init=kept_fan_in)
  variables = layer.init(jax.random.key(0), jnp.ones((1, FAN_IN)))
  rows = variables["sparsity"]["rows"]
  np.testing.assert_array_equal(
      variables["params"]["values"],
      grouped.initial_values(None, _counting_init, FAN_IN, rows, GROUP,
                             kept_fan_in))


@pytest.mark.parametrize("kept_fan_in", [True, False])
def test_nnx_layer_draws_its_values_by_initial_values(kept_fan_in):
  layer = GroupedSparseLinear(FAN_IN, GROUPS * GROUP, group=GROUP,
                              sparsity=1 - K / FAN_IN, rngs=nnx.Rngs(0),
                              kept_fan_in_init=kept_fan_in)
  rngs = nnx.Rngs(0)
  rows = grouped.random_rows(rngs.params(), FAN_IN, GROUPS, K)
  np.testing.assert_array_equal(layer.rows.value, rows)
  np.testing.assert_array_equal(
      layer.values.value,
      grouped.initial_values(rngs.params(), LECUN, FAN_IN, rows, GROUP,
                             kept_fan_in))


def test_scale_to_kept_fan_in_by_hand():
  # A conv kernel [h, w, in, out] = [1, 2, 2, 3]: fan-in 4 per output
  # channel; channel 0 keeps 1, channel 1 keeps 4, channel 2 keeps none.
  mask = np.zeros((1, 2, 2, 3), bool)
  mask[0, 0, 0, 0] = True
  mask[..., 1] = True
  kernel = jnp.full((1, 2, 2, 3), 0.5)
  params = {"conv": {"kernel": kernel, "bias": jnp.ones(3)}}
  masks = {"conv": {"kernel": jnp.asarray(mask), "bias": None}}
  masked = masks_lib.apply_mask(params, masks)
  scaled = masks_lib.scale_to_kept_fan_in(masked, masks)
  expected = np.zeros((1, 2, 2, 3), np.float32)
  expected[0, 0, 0, 0] = 0.5 * 2.0   # sqrt(4 / 1)
  expected[..., 1] = 0.5             # sqrt(4 / 4)
  np.testing.assert_array_equal(scaled["conv"]["kernel"], expected)
  np.testing.assert_array_equal(scaled["conv"]["bias"], np.ones(3))


def _initial(sparse_init, **changes):
  """A digits run's state before its first step."""
  values = dict(workdir="/tmp/x", dataset="digits", data_source="digits",
                method="sparcl_derpp", hidden_sizes="40,40", sparsity=0.75,
                num_tasks=2, sparse_init=sparse_init)
  values.update(changes)
  config = config_lib.validate(config_lib.from_dict(values))
  scenario = run_state.build_scenario(config)
  model = run_state.make_run_model(config, scenario)
  state, _, kept_rows = run_state.initial_state(
      config, scenario, model, tasks.input_spec(scenario),
      pipeline.to_device(scenario))
  return state, kept_rows


def test_unstructured_run_starts_each_unit_at_its_kept_fan_in():
  dense_start, _ = _initial("dense")
  kept_start, _ = _initial("kept_fan_in")
  masks = tdm_masks(kept_start.opt_state)
  assert masks["hidden_0"]["kernel"] is not None
  for layer in ("hidden_0", "hidden_1"):
    mask = np.asarray(masks[layer]["kernel"])
    before = np.asarray(dense_start.params[layer]["kernel"])
    after = np.asarray(kept_start.params[layer]["kernel"])
    # The same seed gives the same mask; each column grows by
    # sqrt(fan_in / kept).
    np.testing.assert_array_equal(
        mask, np.asarray(tdm_masks(dense_start.opt_state)[layer]["kernel"]))
    scale = np.sqrt(mask.shape[0] / mask.sum(0))
    np.testing.assert_allclose(after, before * scale, rtol=1e-6)
    assert np.all(after[~mask] == 0)
  # Dense leaves start as they did.
  for a, b in zip(jax.tree.leaves(dense_start.params["head"]),
                  jax.tree.leaves(kept_start.params["head"])):
    np.testing.assert_array_equal(a, b)


def test_grouped_run_passes_the_choice_to_its_layers():
  # 1/40: the least share that moves a row of the 40-unit layer.
  kwargs = dict(mask_structure="grouped", mask_group=10,
                mask_extra_growth=0.025, mask_swap_fraction=0.025)
  kept, rows = _initial("kept_fan_in", **kwargs)
  cut, cut_rows = _initial("dense", **kwargs)
  for layer in ("hidden_0", "hidden_1"):
    np.testing.assert_array_equal(rows[layer]["rows"], cut_rows[layer]["rows"])
    k = rows[layer]["rows"].shape[1]
    fan_in = rows[layer]["kept"].shape[1]
    # The same draw at the same seed, at variance 1 / k instead of
    # 1 / fan_in, before truncation: the values differ but their spreads
    # stand about sqrt(fan_in / k) apart.
    ratio = float(jnp.std(kept.params[layer]["values"]) /
                  jnp.std(cut.params[layer]["values"]))
    assert ratio == pytest.approx(np.sqrt(fan_in / k), rel=0.1)


def test_sparse_init_needs_sparse_layers():
  # SparCL without TDM reads the flag and has no sparse layer to start.
  with pytest.raises(ConfigError, match="trains no sparse layers"):
    config_lib.validate(config_lib.from_dict(dict(
        workdir="/tmp/x", method="sparcl_derpp", tdm=False,
        sparse_init="kept_fan_in")))
  # A dense method does not read it: the command line drops it.
  config, ignored = cli.parse_args(["train.py", "--workdir=/tmp/x",
                                    "--method=derpp",
                                    "--sparse_init=kept_fan_in"])
  assert ignored == ("sparse_init",) and config.sparse_init == "dense"
  with pytest.raises(ConfigError, match="sparse_init"):
    config_lib.validate(config_lib.from_dict(dict(
        workdir="/tmp/x", method="sparcl_derpp", sparse_init="wide")))
