"""CLNP: continual learning via neural pruning, as partition masks.

Everything lives in :mod:`sparcl_jax.clnp.partition` for now; this package
re-exports it so ``sparcl_jax.clnp.X`` keeps working.
"""

from sparcl_jax.clnp.partition import (DEFAULT_QUANTILES, ClnpPartitionState,
                                       LayerSpec, NoFreeUnitsError, Partition,
                                       SearchResult, UsedUnits, apply_cut,
                                       capacity_report, chain_layer_specs,
                                       clnp_partition, cnn_layer_specs,
                                       commit_task, compute_partition,
                                       graceful_forgetting_search, init_used,
                                       l1_penalty, mlp_layer_specs,
                                       prune_by_threshold, set_partition,
                                       single_head_gate, unit_activity)
