"""Errors that carry a one-line message telling the user what to do."""


class SparclError(Exception):
  """Base class for errors a user can fix from the command line."""


class ConfigError(SparclError, ValueError):
  """A flag or hyper-parameter has an impossible value."""


class DataError(SparclError, ValueError):
  """Data is missing, malformed, or does not match what a scenario needs."""
