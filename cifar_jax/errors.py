"""The one exception type for mistakes a user can fix."""


class UserError(Exception):
  """Bad input (config, data, paths) that the user can fix.

  The command-line entry points print the message alone, without a traceback,
  so the message must say what is wrong and how to fix it.
  """
