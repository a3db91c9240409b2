"""sparcl_jax: sparse, efficient continual learning in JAX (SparCL and CLNP).

``import sparcl_jax as sc`` gives what a user composes into their own model,
optimizer and train step: SparCL's optax transforms (``sc.tdm``, ``sc.dgm``,
``sc.grouped_tdm``) and sparse layers, the rehearsal buffer and the replay
losses (``sc.derpp_loss``...), dynamic data removal (``sc.ddr_update``...),
CLNP (``sc.clnp_partition``, ``sc.commit_task``...), FLOPs counts, metrics
and errors. ``__all__`` lists them, one group per concept.

The pieces they are built from stay importable from their modules: e.g.
``sparcl_jax.sparse.masks`` (``magnitude_mask``, ``bit_select``),
``sparcl_jax.sparse.grouped`` (``row_mask``, ``grouped_matmul``),
``sparcl_jax.replay.losses`` (the ``*_term`` functions on drawn batches),
``sparcl_jax.regularizers`` (EWC and SI), ``sparcl_jax.clnp``,
``sparcl_jax.ddr``, and the runner's ``sparcl_jax.training``,
``sparcl_jax.data``, ``sparcl_jax.models`` and ``sparcl_jax.methods``.
"""

from sparcl_jax.clnp import (ClnpPartitionState, LayerSpec, NoFreeUnitsError,
                             Partition, SearchResult, apply_cut,
                             capacity_report,
                             chain_layer_specs, clnp_partition,
                             cnn_layer_specs, commit_task, compute_partition,
                             graceful_forgetting_search, init_used,
                             l1_penalty, mlp_layer_specs, prune_by_threshold,
                             set_partition, unit_activity)
from sparcl_jax.ddr import (DDRSchedule, DDRState, ddr_init, ddr_order,
                            ddr_remove, ddr_update)
from sparcl_jax.sparse.dgm import DGMSpec, DGMState, dgm, dgm_masks
from sparcl_jax.errors import ConfigError, DataError, SparclError
from sparcl_jax.flops import (dense_train_flops, forward_macs, layer_macs,
                              train_flops)
from sparcl_jax.sparse.rules import (ScoreInputs, register_drop_score,
                                     register_grow_score)
from sparcl_jax.sparse.grouped_tdm import (GroupedTDMState, dense_view,
                                           grouped_tdm, tdm_rows)
from sparcl_jax.sparse.masks import (apply_mask, scale_to_kept_fan_in,
                                     summarize_sparsity)
from sparcl_jax.sparse.sparsity import (default_sparse_filter, erk_sparsities,
                                        filter_from_regex, keep_count,
                                        uniform_sparsities)
from sparcl_jax.metrics import (average_accuracy, average_forgetting,
                                backward_transfer, forward_transfer, summarize)
from sparcl_jax.models.conv import conv_with_canonical_gradients
from sparcl_jax.models.grouped_dense import (GroupedSparseDense,
                                             GroupedSparseLinear, KeptRows)
from sparcl_jax.models.grouped_conv import (GroupedSparseConv,
                                            GroupedSparseConvNNX)
from sparcl_jax.replay.buffer import (Buffer, buffer_init, buffer_len,
                                     buffer_ready, buffer_sample,
                                     reservoir_add)
from sparcl_jax.replay.losses import der_loss, derpp_loss, er_loss
from sparcl_jax.sparse.masking_check import check_masking
from sparcl_jax.sparse.schedule import MaskSchedule
from sparcl_jax.sparse.tdm import TDMState, tdm, tdm_masks

__version__ = "0.1.0"

# The public API, one group per concept. Each group starts with a comment
# line "# <Title>: <what it is for>"; the API reference has one page per
# group, in this order.
__all__ = [
    # Sparse training: SparCL's optax transforms, their states and masks.
    "tdm",
    "TDMState",
    "tdm_masks",
    "MaskSchedule",
    "dgm",
    "DGMSpec",
    "DGMState",
    "dgm_masks",
    "apply_mask",
    "check_masking",
    # Sparsity choices: which layers are sparse, how sparse, and reports.
    "filter_from_regex",
    "default_sparse_filter",
    "uniform_sparsities",
    "erk_sparsities",
    "keep_count",
    "scale_to_kept_fan_in",
    "summarize_sparsity",
    # Mask update rules: registering drop and grow scores for tdm.
    "ScoreInputs",
    "register_drop_score",
    "register_grow_score",
    # Structured sparsity: TDM of kept rows, for the grouped sparse layers.
    "grouped_tdm",
    "GroupedTDMState",
    "tdm_rows",
    "dense_view",
    # Sparse layers: Linen and NNX layers that compute with kept weights.
    "GroupedSparseDense",
    "GroupedSparseLinear",
    "GroupedSparseConv",
    "GroupedSparseConvNNX",
    "KeptRows",
    "conv_with_canonical_gradients",
    # Rehearsal buffer: a jittable reservoir buffer.
    "Buffer",
    "buffer_init",
    "reservoir_add",
    "buffer_sample",
    "buffer_len",
    "buffer_ready",
    # Replay losses: ER, DER and DER++ on the buffer, for your own step.
    "er_loss",
    "der_loss",
    "derpp_loss",
    # Dynamic data removal (DDR): dropping examples a task has learned.
    "DDRSchedule",
    "DDRState",
    "ddr_init",
    "ddr_update",
    "ddr_remove",
    "ddr_order",
    # CLNP: continual learning via neural pruning, as partition masks.
    "clnp_partition",
    "ClnpPartitionState",
    "set_partition",
    "compute_partition",
    "Partition",
    "init_used",
    "LayerSpec",
    "chain_layer_specs",
    "mlp_layer_specs",
    "cnn_layer_specs",
    "l1_penalty",
    "unit_activity",
    "prune_by_threshold",
    "graceful_forgetting_search",
    "SearchResult",
    "apply_cut",
    "commit_task",
    "capacity_report",
    "NoFreeUnitsError",
    # FLOPs: forward MACs of a model and SparCL's training FLOPs.
    "layer_macs",
    "forward_macs",
    "train_flops",
    "dense_train_flops",
    # Metrics: continual-learning metrics of an accuracy matrix.
    "average_accuracy",
    "average_forgetting",
    "backward_transfer",
    "forward_transfer",
    "summarize",
    # Errors: what the library raises for a user's mistakes.
    "SparclError",
    "ConfigError",
    "DataError",
]


def __dir__():
  """``dir(sparcl_jax)``: the public names and the module's dunders."""
  return sorted(set(__all__) | {name for name in globals()
                                if name.startswith("__")})
