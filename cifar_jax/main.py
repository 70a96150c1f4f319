"""Trains a classifier: `python -m cifar_jax.main --config=configs/resnet_c100.py --workdir=DIR`.

Any config field can be overridden as `--config.FIELD=VALUE`. Restarting with
the same workdir resumes from its latest checkpoint.
"""
from absl import app, flags
from ml_collections import config_flags

from cifar_jax import cli, train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (a get_config() module).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and logs.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  cli.run_reporting_user_errors(train.train_and_evaluate, _CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser())
