"""Trains a classifier: `python -m cifar_jax.main --config=configs/resnet_c100.py --workdir=DIR`.

Any config field can be overridden as `--config.FIELD=VALUE`. Restarting with
the same workdir resumes from its latest checkpoint. At the end, the plots and
summary of `cifar_jax.report` are written to WORKDIR/report (`--noreport` skips them).
"""
from absl import app, flags
from ml_collections import config_flags

from cifar_jax import cli, report, train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (a get_config() module).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and logs.')
_REPORT = flags.DEFINE_bool('report', True, 'Write WORKDIR/report after training.')
flags.mark_flags_as_required(['config', 'workdir'])


def train_and_report(config, workdir: str, write_report: bool) -> None:
  train.train_and_evaluate(config, workdir)
  if write_report:
    print(report.create(workdir, 'best', config)[0])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  cli.run_reporting_user_errors(train_and_report, _CONFIG.value, _WORKDIR.value, _REPORT.value)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser())
