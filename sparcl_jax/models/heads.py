"""Pieces shared by every model: the output head and activation naming.

A shared head owns its ``kernel`` and ``bias`` directly, so its parameters sit
at ``params['head']``. A multi-head owns one Dense per task, at
``params['head']['head_<t>']``. Either way a path filter that looks for
``head`` finds every output parameter.
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparcl_jax.errors import ConfigError

HEAD_KINDS = ("shared", "multi")

# Flax forbids a sown variable and a submodule sharing a name, so a layer's
# post-ReLU activation is sown as '<layer name>' + ACT_SUFFIX.
ACT_SUFFIX = "_act"


def validate_head(kind: str, num_outputs: int,
                  head_sizes: Optional[Sequence[int]]) -> None:
  """Checks that a head configuration is possible.

  Args:
    kind: ``'shared'`` or ``'multi'``.
    num_outputs: total number of logits the head must produce.
    head_sizes: classes per task; required for ``'multi'``, where they must
      be positive and sum to ``num_outputs``.

  Returns:
    None. Raises ``ConfigError`` with a one-line message otherwise.

  Examples:
    >>> validate_head('multi', 4, (2, 2))
  """
  if kind not in HEAD_KINDS:
    raise ConfigError(
        f"Unknown head {kind!r}; valid heads: {', '.join(HEAD_KINDS)}.")
  if num_outputs < 1:
    raise ConfigError(f"num_outputs must be >= 1, got {num_outputs}.")
  if kind == "multi":
    if not head_sizes:
      raise ConfigError("head='multi' needs head_sizes (classes per task).")
    sizes = [int(s) for s in head_sizes]
    if min(sizes) < 1 or sum(sizes) != num_outputs:
      raise ConfigError(
          f"head_sizes {tuple(sizes)} must be positive and sum to "
          f"num_outputs={num_outputs}.")


class OutputHead(nn.Module):
  """Maps features [B, D] to logits [B, num_outputs].

  Attributes:
    kind: ``'shared'`` (one Dense over all classes) or ``'multi'`` (one Dense
      per task, named ``head_0 .. head_{T-1}``, outputs concatenated in task
      order; task t must own the t-th contiguous block of global class ids).
    num_outputs: total number of logits.
    head_sizes: classes per task, needed for ``'multi'``.

  Examples:
    >>> head = OutputHead('multi', 4, (2, 2))
    >>> v = head.init(jax.random.key(0), jnp.ones((1, 3)))
    >>> sorted(v['params'])
    ['head_0', 'head_1']
  """

  kind: str = "shared"
  num_outputs: int = 10
  head_sizes: Optional[Sequence[int]] = None

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    """Computes the logits.

    Args:
      features: float array [B, D].

    Returns:
      Logits [B, num_outputs].

    Examples:
      >>> OutputHead('shared', 3).apply(v, jnp.ones((2, 5)))  # doctest: +SKIP
    """
    validate_head(self.kind, self.num_outputs, self.head_sizes)
    if self.kind == "shared":
      # Own the parameters directly so they live at params['head'] rather
      # than params['head']['Dense_0'].
      kernel = self.param("kernel", nn.initializers.lecun_normal(),
                          (features.shape[-1], self.num_outputs))
      bias = self.param("bias", nn.initializers.zeros_init(),
                        (self.num_outputs,))
      return features @ kernel + bias
    outs = [nn.Dense(int(size), name=f"head_{t}")(features)
            for t, size in enumerate(self.head_sizes)]
    return jnp.concatenate(outs, axis=-1)
