"""Evaluates a workdir's checkpoint on the test split: one JSON line, and the report's plots.

    python -m cifar_jax.evaluate --workdir=DIR [--checkpoint=best|latest|STEP]
        [--config.dataset.data_dir=...]

The config is the one saved in the workdir; `--config.FIELD=VALUE` overrides
any field of it (e.g. to point at another copy of the test split). The plots
and summary of `cifar_jax.report` are written to DIR/report as well (skipped, with a warning,
when the workdir cannot be written: the JSON line is printed all the same).
"""
import json

from absl import app, flags

from cifar_jax import cli
from cifar_jax.results import report


def define_flags():
  """Defines this command's flags: when it runs, so that its functions import anywhere (a
  notebook may use several commands' functions, whose flags share names)."""
  global _WORKDIR, _CHECKPOINT
  _WORKDIR = flags.DEFINE_string('workdir', None, 'A workdir written by cifar_jax.main.')
  _CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.")


def evaluate(config, workdir: str, which: str = 'best') -> dict:
  """Test-split metrics of checkpoint `which` of `workdir`, with per-class accuracy by name."""
  report_path, analysis = report.create(workdir, which, config, skip_unwritable=True)
  names = analysis['class_names']
  return {
      'checkpoint_step': analysis['checkpoint_step'],
      'test_loss': analysis['loss'], 'test_accuracy': analysis['accuracy'],
      'test_top5_accuracy': analysis['top5_accuracy'], 'num_examples': len(analysis['labels']),
      'per_class_accuracy': dict(zip(names, analysis['per_class_accuracy'].tolist(),
                                     strict=True)),
      'report': report_path,
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  result = cli.run_reporting_user_errors(
      evaluate, flags.FLAGS.config, _WORKDIR.value, _CHECKPOINT.value)
  print(json.dumps(result))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.flags_parser(cli.workdir_config_flag(_WORKDIR)))
