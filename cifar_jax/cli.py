"""What the command-line entry points share."""
import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from cifar_jax import workdir as workdir_lib
from cifar_jax.errors import Preempted, UserError


def run_reporting_user_errors(fn, *args):
  """Calls `fn(*args)`; a UserError ends the program with its message alone, an OSError (a full
  disk, a read-only directory) with the operating system's words and the path: one line, no
  traceback."""
  # Libraries (orbax, jax) log every checkpoint write at INFO: show only their
  # warnings, and this package's own progress messages.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger('cifar_jax').setLevel(logging.INFO)
  try:
    return fn(*args)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    _exit_now(1)
  except OSError as e:  # A full disk, a read-only or missing directory: the OS's own words.
    where = f': {e.filename}' if e.filename else ''
    print(f'error: {e.strerror or e}{where}. Fix that (free space, permissions, the path) and '
          'run the same command again: training resumes from its latest checkpoint.',
          file=sys.stderr)
    _exit_now(1)
  except KeyboardInterrupt:
    print('interrupted: the same command resumes from the latest checkpoint.', file=sys.stderr)
    _exit_now(130)
  except Preempted as e:
    print(f'preempted: {e}', file=sys.stderr)
    sys.exit(0)  # A clean stop: the checkpoint is complete.


def _exit_now(status: int) -> None:
  """Ends the process without Python's clean-up: the loop's own clean-up (checkpoints on disk)
  has run by now, and tearing down the interpreter while XLA's compiler threads still run
  crashed it (a segmentation fault after Ctrl-C during compilation)."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)


_HELP_FLAGS = {'--help', '-help', '-h', '-?', '--helpshort', '--helpfull'}


def flags_parser(define_late_flags=None):
  """A `flags_parser` for `app.run` that reports bad flags in a line, without a traceback.

  Args:
    define_late_flags: optional `fn(argv)` that defines flags depending on
      others (evaluate's --config comes from --workdir) before the full parse.
  """

  def parse(argv):
    if _HELP_FLAGS & set(argv[1:]):
      # absl ends its help with status 1; asking for help is not an error.
      app.usage(shorthelp='--helpfull' not in argv, writeto_stdout=True, exitcode=0)
    try:
      if define_late_flags:
        define_late_flags(argv)
      remaining = flags.FLAGS(argv)
      if 'config' in flags.FLAGS:
        # A config file that failed to load stands in as an object that raises
        # on first use: use it now, so the error is reported here.
        flags.FLAGS.config.keys()
      return remaining
    except flags.Error as e:
      sys.exit(f'error: {e}\nRun with --helpfull to list the flags.')
    except OSError as e:
      sys.exit(f'error: {e}')
    except (AttributeError, KeyError, TypeError, ValueError) as e:
      # ml_collections reports an unknown field as AttributeError/KeyError and a
      # value of the wrong type as TypeError/ValueError, while parsing overrides.
      detail = e
      while isinstance(detail, Exception) and detail.args:  # Unwrap re-raised errors.
        detail = detail.args[0]
      sys.exit(f'error: bad --config override: {str(detail).replace(chr(10), " ")}\n'
               'Every field, with its meaning, is declared in cifar_jax/config.py.')

  return parse


def workdir_config_flag(workdir_flag):
  """A `define_late_flags` for commands on a workdir: --config is the workdir's saved config.

  So `--config.FIELD=VALUE` overrides apply to the config the run was trained with.
  """

  def define(argv):
    flags.FLAGS(argv, known_only=True)
    path = os.path.join(workdir_flag.value or '', 'config.json')
    if not os.path.exists(path):
      sys.exit(f'error: {path} not found: --workdir must name a workdir written by '
               '`python -m cifar_jax.main`.')
    config_flags.DEFINE_config_dict('config', workdir_lib.load_config(workdir_flag.value),
                                    lock_config=True)

  return define
