"""Sparse training methods over a rehearsal loss: SparCL, SNIP and RigL.

All three keep their masks in :func:`sparcl_jax.sparse.tdm.tdm` around the base
optimizer; they differ in how masks start and change:

* SparCL (Wang et al., NeurIPS 2022): task-aware dynamic masking (drop by
  ``|W| + lambda |g|``, grow at random), with dynamic gradient masking
  and dynamic data removal when their flags are on.
* SNIP (Lee et al., ICLR 2019): a static mask from ``|W * g|`` of one batch at
  initialisation.
* RigL (Evci et al., ICML 2020): drop by magnitude, grow where ``|g|`` is
  largest, on TDM's schedule.

Examples:
  >>> from sparcl_jax import methods
  >>> from sparcl_jax.training.config import RunConfig
  >>> sparcl = methods.get("sparcl_derpp")
  >>> sparcl.is_sparse(RunConfig()), sparcl.is_sparse(RunConfig(tdm=False))
  (True, False)
  >>> methods.get("snip_derpp").is_sparse(RunConfig(tdm=False))
  True
"""

from sparcl_jax.sparse import masks as masks_lib
from sparcl_jax.sparse.dgm import dgm
from sparcl_jax.sparse.grouped_tdm import grouped_tdm
from sparcl_jax.sparse.schedule import most_kept
from sparcl_jax.sparse.sparsity import keep_count, uniform_sparsities
from sparcl_jax.sparse.tdm import tdm
from sparcl_jax.methods import register
from sparcl_jax.methods.base import (base_optimizer, dgm_spec, mask_schedule,
                                     sparse_filter)
from sparcl_jax.methods.der import DarkExperienceReplayPlusPlus
from sparcl_jax.methods.er import ExperienceReplay
from sparcl_jax.methods import settings as settings_lib


class _MaskedWeights:
  """Mixin: the optimizer is TDM around the base optimizer.

  Subclasses choose TDM's schedule and scores through ``static_masks``,
  ``drop_lambda`` and ``growth``.
  """

  static_masks = False
  growth = "random"

  def drop_lambda(self, config) -> float:
    return config.importance_lambda

  def is_sparse(self, config) -> bool:
    del config
    return True

  def make_optimizer(self, config, kept_rows=None):
    if not self.is_sparse(config):
      return super().make_optimizer(config)  # pytype: disable=attribute-error
    if config.grouped:
      return self._grouped_optimizer(config, kept_rows)
    return tdm(
        base_optimizer(config), sparsity=config.sparsity,
        schedule=mask_schedule(config, static=self.static_masks),
        sparse_filter=sparse_filter(config),
        distribution=config.sparsity_distribution,
        importance_lambda=self.drop_lambda(config),
        grow_score=config.mask_growth or self.growth,
        dgm=dgm_spec(config) if self.uses_dgm(config) else None,
        seed=config.seed)

  def _grouped_optimizer(self, config, kept_rows):
    if kept_rows is None:
      raise ValueError("--mask_structure=grouped builds its optimizer from "
                       "the model's 'sparsity' collection: pass kept_rows")
    share = grouped_gradient_sparsity(config)
    masking = None
    if self.uses_dgm(config) and share > 0:
      masking = dgm(share, config.dgm_refresh,
                    sparse_filter=lambda path, leaf: path.endswith("/values"))
    return grouped_tdm(base_optimizer(config), kept_rows=kept_rows,
                       schedule=mask_schedule(config),
                       importance_lambda=self.drop_lambda(config),
                       gradient_masking=masking, seed=config.seed)


def grouped_gradient_sparsity(config) -> float:
  """DGM's gradient sparsity over a grouped layer's kept weights.

  Unstructured DGM keeps ``1 - gradient_sparsity`` of a layer's dense
  gradient, taken from its kept weights first; over the kept weights alone
  (a share ``1 - sparsity`` of the layer) that is ``(1 - gradient_sparsity)
  / (1 - sparsity)`` of them, all of them (DGM off) when that reaches 1.

  Args:
    config: the run configuration.

  Returns:
    The share of the kept weights' gradient DGM zeroes, in ``[0, 1)``.

  Examples:
    >>> from sparcl_jax.training.config import RunConfig
    >>> grouped_gradient_sparsity(RunConfig(sparsity=0.75,
    ...                                     gradient_sparsity=0.8))
    0.2
    >>> grouped_gradient_sparsity(RunConfig(sparsity=0.9))
    0.0
  """
  kept = (1.0 - config.gradient_sparsity) / (1.0 - config.sparsity)
  return round(max(0.0, 1.0 - kept), 10)


class _SparCL(_MaskedWeights):
  """SparCL's three parts, each behind its flag (--tdm, --dgm, --ddr)."""

  weight_mask_part = "TDM"

  def is_sparse(self, config) -> bool:
    return config.tdm

  def uses_dgm(self, config) -> bool:
    if not config.dgm:
      return False
    if (config.tdm and not config.grouped
        and config.sparsity_distribution == "uniform"):
      # DGM keeps a share of a layer's whole gradient. Where the weight mask
      # keeps fewer entries even at its densest (a task start's growth), the
      # gradient is already zero outside it: DGM would mask nothing, and
      # tdm refuses such a dgm. The run then trains without it. (Under ERK
      # the layers' sparsities differ, and tdm decides from them.) The
      # kept counts are those of tdm's check, for a large layer.
      size = 10**6
      schedule = mask_schedule(config, static=self.static_masks)
      return (keep_count(size, config.gradient_sparsity)
              < most_kept(size, config.sparsity, schedule))
    return True

  def tracks_forgetting(self, config) -> bool:
    return config.ddr

  def inert_flags(self, config) -> tuple[str, ...]:
    """Says when DGM or DDR is on but will do nothing.

    Examples:
      >>> from sparcl_jax.training.config import RunConfig
      >>> for line in SparclDerpp().inert_flags(RunConfig(
      ...     method="sparcl_derpp", sparsity=0.98, epochs=8)):
      ...   print(line)
      --dgm does nothing at --sparsity=0.98: the weight mask zeroes more of each gradient than --gradient_sparsity=0.8 would; the run trains without DGM.
      --ddr_epochs=5,10,15,20: epochs 10, 15, 20 come after a task's last epoch (--epochs=8 counts 0-7); DDR removes no data at them.
    """
    lines = []
    grouped_off = config.grouped and grouped_gradient_sparsity(config) == 0
    if config.dgm and (not self.uses_dgm(config) or grouped_off):
      lines.append(
          f"--dgm does nothing at --sparsity={config.sparsity}: the weight "
          "mask zeroes more of each gradient than --gradient_sparsity="
          f"{config.gradient_sparsity} would; the run trains without DGM.")
    epochs = config.ddr_epoch_list
    late = [e for e in epochs if e >= config.epochs]
    if config.ddr and late:
      at = ("in this run" if len(late) == len(epochs) else
            "at it" if len(late) == 1 else "at them")
      lines.append(
          f"--ddr_epochs={config.ddr_epochs}: epoch{'s' * (len(late) > 1)} "
          f"{', '.join(map(str, late))} come{'s' * (len(late) == 1)} after a "
          f"task's last epoch (--epochs={config.epochs} counts "
          f"0-{config.epochs - 1}); DDR removes no data {at}.")
    return tuple(lines)


@register
class SparclEr(_SparCL, ExperienceReplay):
  """SparCL on ER."""

  name = "sparcl_er"
  order = 20
  settings = settings_lib.SparclErSettings


@register
class SparclDerpp(_SparCL, DarkExperienceReplayPlusPlus):
  """SparCL on DER++ (the paper's main method)."""

  name = "sparcl_derpp"
  order = 21
  settings = settings_lib.SparclDerppSettings


@register
class SnipDerpp(_MaskedWeights, DarkExperienceReplayPlusPlus):
  """DER++ with a static SNIP mask."""

  name = "snip_derpp"
  order = 22
  static_masks = True
  settings = settings_lib.SnipDerppSettings

  def initial_masks(self, config, params, first_batch_grads):
    sparsities = uniform_sparsities(params, sparse_filter(config),
                                    config.sparsity)
    return masks_lib.snip_mask(params, first_batch_grads(), sparsities)


@register
class RiglDerpp(_MaskedWeights, DarkExperienceReplayPlusPlus):
  """DER++ with RigL's drop-by-magnitude, grow-by-gradient masks."""

  name = "rigl_derpp"
  order = 23
  growth = "gradient"
  settings = settings_lib.RiglDerppSettings

  def drop_lambda(self, config) -> float:
    del config
    return 0.0
