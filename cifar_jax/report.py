"""Writes the plots and Markdown summary of a trained run into WORKDIR/report/.

    python -m cifar_jax.report --workdir=DIR [--checkpoint=best|latest|STEP] [--out=DIR2]
        [--config.FIELD=...]

`--out` writes the report elsewhere and leaves the workdir untouched (it may be read-only).

What the report holds is described in `cifar_jax.results.report`; training and
`cifar_jax.evaluate` write it too.
"""
from absl import app, flags

from cifar_jax import cli
from cifar_jax.results import report


def define_flags():
  """Defines this command's flags: when it runs, so that its functions import anywhere (a
  notebook may use several commands' functions, whose flags share names)."""
  global _WORKDIR, _CHECKPOINT, _OUT
  _WORKDIR = flags.DEFINE_string('workdir', None, 'A workdir written by cifar_jax.main.')
  _CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.")
  _OUT = flags.DEFINE_string('out', '', 'Folder for the report; default WORKDIR/report.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  path, _ = cli.run_reporting_user_errors(report.create, _WORKDIR.value, _CHECKPOINT.value,
                                          flags.FLAGS.config, _OUT.value)
  print(path)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.flags_parser(cli.workdir_config_flag(_WORKDIR)))
