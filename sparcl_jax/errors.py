"""Errors that carry a one-line message telling the user what to do."""


class SparclError(Exception):
  """Base class for errors a user can fix from the command line.

  Examples:
    >>> try:
    ...   sc.buffer_init(0, (2,), 3)
    ... except sc.SparclError as error:
    ...   print(error)
    buffer_size must be >= 1, got 0.
  """


class ConfigError(SparclError, ValueError):
  """A flag or hyper-parameter has an impossible value.

  Examples:
    >>> sc.DDRSchedule(removal_fraction=2.0)
    Traceback (most recent call last):
    ...
    sparcl_jax.errors.ConfigError: removal_fraction must be in [0, 1], got 2.0.
  """


class DataError(SparclError, ValueError):
  """Data is missing, malformed, or does not match what a scenario needs.

  Examples:
    >>> from sparcl_jax.data import datasets
    >>> try:
    ...   datasets.get("mnist2")
    ... except sc.DataError as error:
    ...   print(str(error).split(";")[0])
    unknown dataset 'mnist2'
  """
