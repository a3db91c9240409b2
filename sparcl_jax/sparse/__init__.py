"""SparCL's sparsity machinery, one module per concept.

The names users compose are re-exported by ``sparcl_jax`` (``sc.tdm``,
``sc.dgm``, ``sc.apply_mask``...; see its ``__all__``); the rest stays
here. The modules, from the bottom up:

* ``sparsity``: which leaves are sparse and how sparse (filters, uniform and
  ERK sparsities, exact kept counts).
* ``selection``: exact top-k selection (``rank_mask``, ``topk_mask``).
* ``masks``: building, applying and summarizing weight masks.
* ``drop_grow``: the drop-and-grow mask update.
* ``rules``: TDM's drop and grow score rules, one file per rule.
* ``schedule``: when TDM updates the masks (``MaskSchedule``).
* ``dgm``: dynamic gradient masking, and ``DGMSpec``, how TDM is told to run
  it.
* ``tdm``: task-aware dynamic masking around an inner optimizer.
* ``grouped`` and ``grouped_tdm``: structured (kept-rows) sparsity and its
  TDM.
* ``grouped_conv``: the same structure for convolutions (kept input channels
  with all their taps).
* ``masking_check``: checks that a whole optimizer keeps masked weights zero.

Nothing is imported here, so importing one module runs only what it needs.
"""
