"""Errors a user can fix from the message alone; entry points print them as one line."""


class UsageError(ValueError):
  """A wrong flag, workdir or command; the message says what to do instead."""


class DataLayoutError(UsageError):
  """A data folder does not have the expected layout; the message says how to fix it."""
