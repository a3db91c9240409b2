"""Shared test helpers."""

import dataclasses

import pytest

from sparcl_jax.data import scenarios, sources
from sparcl_jax.training import loop, steps


@pytest.fixture(scope="module")
def digits_two_tasks():
  """The first two tasks (4 classes) of Split Digits: runs take seconds."""
  dataset = sources.load_dataset("digits", "embedded", None)
  scenario = scenarios.split_scenario(dataset, 2)
  return dataclasses.replace(scenario, tasks=scenario.tasks[:2],
                             num_outputs=4)


def _run_capturing(config, scenario, monkeypatch, events_override=None):
  """Runs ``loop.run`` and returns ``(results, seen)``.

  ``seen["state"]`` is the train state after the last chunk and
  ``seen["mask_events"]`` what the loop passed to ``make_train_chunk``;
  ``events_override`` may replace the latter.
  """
  original = steps.make_train_chunk
  seen = {}

  def spy(*args, **kwargs):
    seen["mask_events"] = kwargs.get("mask_events")
    if events_override is not None:
      kwargs["mask_events"] = events_override(kwargs.get("mask_events"))
    chunk = original(*args, **kwargs)

    def call(state, *rest):
      state, loss = chunk(state, *rest)
      seen["state"] = state
      return state, loss

    return call

  monkeypatch.setattr(steps, "make_train_chunk", spy)
  results = loop.run(config, scenario=scenario)
  monkeypatch.undo()
  return results, seen


@pytest.fixture
def run_capturing():
  """``run_capturing(config, scenario, monkeypatch, events_override=None)``."""
  return _run_capturing
