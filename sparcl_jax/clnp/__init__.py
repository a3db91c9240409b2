"""CLNP: continual learning via neural pruning, as partition masks.

Golkar, Kagan and Cho (2019) train each task with an L1 penalty, prune the
units whose activity is low, freeze the units a task keeps ("used") and train
the next task on the remaining ("free") units only. This package holds the
pieces as pure functions over parameter pytrees, knowing nothing of the model
beyond an explicit list of :class:`LayerSpec` entries, one module per job:

* :mod:`~sparcl_jax.clnp.specs`: :class:`LayerSpec` and the specs of a chain
  of layers or of the project's MLP and CNN;
* :mod:`~sparcl_jax.clnp.partition`: :func:`compute_partition` turns the
  per-layer ``used`` unit vectors into a :class:`Partition` of per-element
  ``trainable`` and ``zero`` masks (the module explains the partition);
* :mod:`~sparcl_jax.clnp.transform`: :func:`clnp_partition`, an optax wrapper
  that applies those masks to the gradient going into any optimizer and to
  the update coming out of it, so frozen entries stay bit-identical and
  interference entries exactly zero;
* :mod:`~sparcl_jax.clnp.activity`: :func:`l1_penalty` and
  :func:`unit_activity`, for training and measuring a task's units;
* :mod:`~sparcl_jax.clnp.search`: :func:`prune_by_threshold` and
  :func:`graceful_forgetting_search`, which choose the units a task keeps;
* :mod:`~sparcl_jax.clnp.commit`: :func:`apply_cut` and :func:`commit_task`;
* :mod:`~sparcl_jax.clnp.diagnostics`: :func:`capacity_report`.
"""

from sparcl_jax.clnp.activity import activity_sums, l1_penalty, unit_activity
from sparcl_jax.clnp.commit import apply_cut, commit_task
from sparcl_jax.clnp.diagnostics import capacity_plot_data, capacity_report
from sparcl_jax.clnp.partition import (NoFreeUnitsError, Partition,
                                       compute_partition, init_used,
                                       single_head_gate)
from sparcl_jax.clnp.search import (DEFAULT_QUANTILES, SearchResult,
                                    graceful_forgetting_search,
                                    prune_by_threshold)
from sparcl_jax.clnp.specs import (LayerSpec, UsedUnits, chain_layer_specs,
                                   cnn_layer_specs, mlp_layer_specs)
from sparcl_jax.clnp.transform import (ClnpPartitionState, clnp_partition,
                                       set_partition)
