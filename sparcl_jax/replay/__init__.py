"""Rehearsal: the reservoir buffer and the replay losses.

* :mod:`~sparcl_jax.replay.buffer`: the reservoir buffer (inputs, labels,
  logits, tasks), pure functions usable inside ``jax.jit``.
* :mod:`~sparcl_jax.replay.losses`: the replay losses of ER, DER, DER++
  and ER-ACE as functions of a model's forward pass: ``er_loss``,
  ``der_loss`` and ``derpp_loss`` on the buffer, for users' own steps
  (exported as ``sc.derpp_loss``...), and the terms on drawn batches they
  and the library's step are built from.
"""
