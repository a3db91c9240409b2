"""conv_with_canonical_gradients: same numbers as lax, fast layout in loops."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import sparcl_jax as sc
from sparcl_jax.data import pipeline, scenarios
from sparcl_jax.data.types import Dataset
from sparcl_jax.models.cnn import ZenkeCNN
from sparcl_jax.models.resnet import ResNet18
from sparcl_jax.methods import rehearsal_hooks
from sparcl_jax.training import optimizers, steps, tasks
from sparcl_jax.training.config import RunConfig, validate

# (spatial size, kernel size, stride, padding, kernel dilation) per case;
# the number of spatial dimensions is len(spatial size).
CASES = [
    ((8, 8), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    ((8, 8), (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),  # ResNet's downsample
    ((9, 9), (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),  # stride leaves rows
    ((8, 8), (1, 1), (2, 2), "VALID", (1, 1)),  # ResNet's shortcut
    ((7, 6), (3, 3), (1, 1), "SAME", (1, 1)),
    ((7, 7), (3, 2), (1, 1), "VALID", (1, 1)),
    ((10, 10), (3, 3), (2, 2), "SAME", (1, 1)),
    ((11, 11), (3, 3), (1, 1), "SAME", (2, 2)),
    ((9, 9), (2, 2), (3, 3), ((0, 1), (2, 0)), (1, 1)),
    ((12,), (3,), (2,), "SAME", (1,)),
    ((5, 6, 7), (3, 3, 3), (1, 2, 1), "SAME", (1, 1, 1)),
]


def _numbers(ndim):
  spatial = "DHW"[5 - ndim:]
  return ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")


def _value_and_grads(conv, x, w, g, strides, padding, dilation):
  def f(x, w):
    return conv(x, w, strides, padding, rhs_dilation=dilation,
                dimension_numbers=_numbers(x.ndim))

  y, vjp = jax.vjp(f, x, w)
  return (y,) + vjp(g)


@pytest.mark.parametrize("size,kernel,strides,padding,dilation", CASES)
def test_values_and_gradients_are_those_of_lax(size, kernel, strides, padding,
                                               dilation):
  x = jax.random.normal(jax.random.key(0), (2,) + size + (3,))
  w = jax.random.normal(jax.random.key(1), kernel + (3, 5))
  y = lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                               dimension_numbers=_numbers(x.ndim))
  g = jax.random.normal(jax.random.key(2), y.shape)
  want = _value_and_grads(lax.conv_general_dilated, x, w, g, strides, padding,
                          dilation)
  got = _value_and_grads(sc.conv_with_canonical_gradients, x, w, g, strides,
                         padding, dilation)
  for name, a, b in zip(("value", "input gradient", "kernel gradient"), got,
                        want):
    assert a.shape == b.shape, name
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


@pytest.mark.parametrize("changes", [
    dict(feature_group_count=3),
    dict(lhs_dilation=(2, 2)),
    dict(dimension_numbers=("NCHW", "OIHW", "NCHW")),
])
def test_other_convolutions_pass_through_to_lax(changes):
  dims = changes.pop("dimension_numbers", ("NHWC", "HWIO", "NHWC"))
  channels_first = dims[0] == "NCHW"
  x = jax.random.normal(jax.random.key(0),
                        (2, 3, 6, 6) if channels_first else (2, 6, 6, 3))
  in_per_group = 3 // changes.get("feature_group_count", 1)
  w = jax.random.normal(jax.random.key(1),
                        (6, 3, 3, 3) if channels_first else
                        (3, 3, in_per_group, 6))

  def run(conv):
    def f(x, w):
      return conv(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dims,
                  **changes).sum()
    return jax.value_and_grad(f, argnums=(0, 1))(x, w)

  want, got = run(lax.conv_general_dilated), run(
      sc.conv_with_canonical_gradients)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_nnx_conv_takes_it_and_gives_the_same_gradients():
  from flax import nnx  # pylint: disable=import-outside-toplevel
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))

  def kernel_gradient(**kwargs):
    conv = nnx.Conv(3, 4, (3, 3), strides=2, rngs=nnx.Rngs(0), **kwargs)
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(conv)
    return np.asarray(grads.kernel.value)

  np.testing.assert_array_equal(
      kernel_gradient(conv_general_dilated=sc.conv_with_canonical_gradients),
      kernel_gradient())


_CANONICAL = re.compile(r"dim_labels=(b0f_0io->b0f|b01f_01io->b01f|"
                        r"b012f_012io->b012f)\b")


def _non_canonical_convolutions(conv) -> list[str]:
  """Convolutions XLA:CPU left non-canonical in a train step in a loop."""
  w = jax.random.normal(jax.random.key(0), (3, 3, 4, 4))
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))

  def loss(w, x):
    h = conv(x, w, (2, 2), ((1, 1), (1, 1)),
             dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(h ** 2)

  def step(w):
    return w - 0.1 * jax.grad(loss, argnums=(0, 1))(w, x)[0]

  in_loop = jax.jit(lambda w: lax.fori_loop(0, 2, lambda i, w: step(w), w))
  hlo = in_loop.lower(w).compile().as_text()
  convolutions = [line for line in hlo.splitlines() if " convolution(" in line]
  assert convolutions, "the compiled loop has no convolution at all"
  return [line for line in convolutions if not _CANONICAL.search(line)]


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="checks XLA:CPU's compiled program")
def test_gradients_in_a_loop_compile_to_canonical_convolutions():
  # JAX's own gradients stay non-canonical inside a loop body (which XLA:CPU
  # runs as a naive loop nest, jax-ml/jax#12868); ours never do.
  assert _non_canonical_convolutions(lax.conv_general_dilated)
  assert _non_canonical_convolutions(sc.conv_with_canonical_gradients) == []


def _image_scenario(side: int):
  rng = np.random.default_rng(0)
  shape = (side, side, 3)
  train_y = np.repeat(np.arange(4), 8).astype(np.int32)
  test_y = np.repeat(np.arange(4), 2).astype(np.int32)
  dataset = Dataset("random", rng.integers(0, 256, (32,) + shape, np.uint8),
                    train_y, rng.integers(0, 256, (8,) + shape, np.uint8),
                    test_y, 4)
  return scenarios.split_scenario(dataset, 2, augment=True)


@pytest.mark.parametrize("model_name", ["resnet18", "zenke_cnn"])
@pytest.mark.parametrize("method", ["sgd", "derpp"])
def test_train_chunk_gives_the_parameters_of_jax_gradients(model_name,
                                                           method):
  # Three fused steps of the library's chunk (scan, 0-or-1-trip loops, the
  # replay cond) with the default convolution and with lax's: the same
  # parameters to rounding.
  scenario = _image_scenario(16)
  config = validate(RunConfig(
      workdir="/unused", dataset="digits", data_source="digits",
      model=model_name, nf=4, method=method, batch_size=4, minibatch_size=4,
      buffer_size=8, lr=0.05, replay_first_task=True, steps_per_call=3,
      progress=False))
  spec = tasks.input_spec(scenario)
  tx = optimizers.make_optimizer(config)
  params_after = []
  for conv in (sc.conv_with_canonical_gradients, lax.conv_general_dilated):
    if model_name == "resnet18":
      model = ResNet18(nf=4, num_outputs=4, conv_general_dilated=conv)
    else:
      model = ZenkeCNN(num_outputs=4, conv_general_dilated=conv)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    params = variables["params"]
    hooks = rehearsal_hooks.make_hooks(config)
    buffer = None
    if hooks.spec.replay:
      buffer = sc.buffer_init(8, spec.image_shape, 4)
    state = steps.TrainState(params, variables.get("batch_stats", {}),
                             tx.init(params),
                             rehearsal_hooks.ReplayState(buffer, None),
                             jax.random.key(1))
    chunk = steps.make_train_chunk(model, tx, hooks, spec, 4, 3)
    index = jnp.asarray(scenario.tasks[0].train_indices, jnp.int32)
    data = (pipeline.to_device(scenario), index, jnp.zeros_like(index))
    task_mask = jnp.array([1, 1, 0, 0], bool)
    facts = steps.StepFacts(jnp.int32(0), jnp.int32(0), jnp.int32(0),
                            jnp.int32(3), task_mask, task_mask)
    state, loss = chunk(state, data, jnp.arange(16, dtype=jnp.int32), facts)
    assert np.isfinite(float(loss))
    params_after.append(state.params)
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), params,
                       params_after[0])
  assert max(jax.tree.leaves(moved)) > 1e-3  # the steps did train
  for a, b in zip(jax.tree.leaves(params_after[0]),
                  jax.tree.leaves(params_after[1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-5)
