"""What the command-line entry points share."""
import sys

from absl import logging

from cifar_jax.errors import UserError


def run_reporting_user_errors(fn, *args):
  """Calls `fn(*args)`; a UserError ends the program with its message alone, no traceback."""
  logging.set_verbosity(logging.INFO)
  try:
    return fn(*args)
  except UserError as e:
    sys.exit(f'error: {e}')
