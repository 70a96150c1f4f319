"""The exceptions the command-line entry points turn into one line: mistakes a user can fix,
and a clean stop on preemption."""
import functools
import operator


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


# Rules of `check_ranges`: what a value must be, and its test (False for NaN).
AT_LEAST_0 = ('>= 0', lambda v: v >= 0)
POSITIVE = ('positive', lambda v: v > 0)
FRACTION = ('in [0, 1)', lambda v: 0 <= v < 1)
OPEN_FRACTION = ('in (0, 1)', lambda v: 0 < v < 1)


def check_ranges(config, rules: dict) -> None:
  """Raises a UserError naming the first field of `config` that breaks its rule.

  `rules` maps a dotted field path ('optimizer.momentum') to a rule such as `FRACTION`.
  """
  for path, (rule, ok) in rules.items():
    value = functools.reduce(operator.getitem, path.split('.'), config)
    if not ok(value):
      raise UserError(f'config.{path} must be {rule}, got {value!r}.')
