"""Rehearsal: the reservoir buffer and the replay losses.

* :mod:`~sparcl_jax.replay.buffer`: the reservoir buffer (inputs, labels,
  logits, tasks), pure functions usable inside ``jax.jit``.
* :mod:`~sparcl_jax.replay.losses`: the replay terms of ER, DER, DER++ and
  ER-ACE as functions of a model's forward pass, for the library's step and
  for users' own.
"""
