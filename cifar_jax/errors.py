"""The exceptions the command-line entry points turn into one line: mistakes a user can fix,
and a clean stop on preemption."""


class UserError(Exception):
  """Bad input (config, data, paths) that the user can fix.

  The command-line entry points print the message alone, without a traceback,
  so the message must say what is wrong and how to fix it.
  """


class Preempted(Exception):  # noqa: N818 (an outcome, not an error)
  """Training stopped on SIGTERM after saving a checkpoint; the same command resumes it."""


def check_choice(field: str, value, choices) -> None:
  """Raises a UserError naming `field` unless `value` is one of `choices`."""
  if value not in choices:
    raise UserError(f'{field}={value!r} is not one of {", ".join(map(str, choices))}.')
