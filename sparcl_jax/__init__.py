"""sparcl_jax: sparse, efficient continual learning in JAX (SparCL and CLNP).

The public API is flat: ``import sparcl_jax as sc`` then ``sc.tdm``,
``sc.dgm``, ``sc.ddr_update``, ``sc.clnp_partition``, ``sc.reservoir_add``...
Modules stay importable for the rest (``sparcl_jax.sparse``,
``sparcl_jax.training``, ``sparcl_jax.data``, ``sparcl_jax.models``).
"""

from sparcl_jax.clnp import (ClnpPartitionState, LayerSpec, NoFreeUnitsError,
                             Partition, SearchResult, activity_sums,
                             apply_cut,
                             capacity_report, chain_layer_specs,
                             clnp_partition, cnn_layer_specs, commit_task,
                             compute_partition, graceful_forgetting_search,
                             init_used, l1_penalty, mlp_layer_specs,
                             prune_by_threshold, set_partition,
                             single_head_gate, unit_activity)
from sparcl_jax.ddr import (DDRSchedule, DDRState, ddr_init, ddr_order,
                            ddr_remove, ddr_reset, ddr_scores, ddr_update)
from sparcl_jax.sparse.dgm import DGMSpec, DGMState, dgm, dgm_masks
from sparcl_jax.sparse.drop_grow import drop_and_grow, drop_and_grow_by_scores
from sparcl_jax.errors import ConfigError, DataError, SparclError
from sparcl_jax.flops import (dense_train_flops, forward_macs, layer_macs,
                              train_flops)
from sparcl_jax.sparse.rules import (ScoreInputs, drop_score_names,
                                     grow_score_names, register_drop_score,
                                     register_grow_score)
from sparcl_jax.sparse.grouped import (drop_and_grow_rows, grouped_matmul,
                                       initial_values, kept_membership,
                                       magnitude_rows, random_rows, row_mask)
from sparcl_jax.sparse.grouped_conv import grouped_conv
from sparcl_jax.sparse.grouped_tdm import (GroupedTDMState, dense_view,
                                           grouped_layers, grouped_tdm,
                                           sparsity_variables, tdm_rows)
from sparcl_jax.sparse.masks import (apply_mask, bit_select, magnitude_mask,
                                     scale_to_kept_fan_in, snip_mask,
                                     summarize_sparsity)
from sparcl_jax.sparse.sparsity import (default_sparse_filter, erk_sparsities,
                                        filter_from_regex, keep_count,
                                        require_selection, uniform_sparsities)
from sparcl_jax.metrics import (average_accuracy, average_forgetting,
                                backward_transfer, forward_transfer, summarize)
from sparcl_jax.models.conv import conv_with_canonical_gradients
from sparcl_jax.models.grouped_dense import (GroupedSparseDense,
                                             GroupedSparseLinear, KeptRows)
from sparcl_jax.models.grouped_conv import (GroupedSparseConv,
                                            GroupedSparseConvNNX)
from sparcl_jax.regularizers import (EwcState, SiState, ewc_consolidate,
                                     ewc_init, ewc_penalty, fisher_diagonal,
                                     merge_fisher_slot,
                                     si_accumulate, si_consolidate, si_init,
                                     si_penalty, squared_gradient_sum)
from sparcl_jax.replay.buffer import (Buffer, buffer_init, buffer_len,
                                     buffer_ready, buffer_sample,
                                     reservoir_add)
from sparcl_jax.replay.losses import (der_loss, der_term, derpp_loss,
                                     derpp_term, er_loss, er_term)
from sparcl_jax.sparse.masking_check import check_masking
from sparcl_jax.sparse.schedule import MaskSchedule
from sparcl_jax.sparse.tdm import TDMState, tdm, tdm_masks

__version__ = "0.1.0"
