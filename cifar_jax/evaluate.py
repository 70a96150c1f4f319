"""Evaluates a workdir's checkpoint on the test split and prints one JSON line.

    python -m cifar_jax.evaluate --workdir=DIR [--checkpoint=best|latest|STEP]
        [--config.dataset.data_dir=...]

The config is the one saved in the workdir; `--config.FIELD=VALUE` overrides
any field of it (e.g. to point at another copy of the test split).
"""
import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from cifar_jax import cli, metrics, optim, sharding, train
from cifar_jax import config as config_lib
from cifar_jax.checkpoint import Checkpoints
from cifar_jax.errors import UserError

_WORKDIR = flags.DEFINE_string('workdir', None, 'A workdir written by cifar_jax.main.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.")
flags.mark_flag_as_required('workdir')


def choose_step(checkpoints: Checkpoints, which: str) -> int:
  """The step of checkpoint `which` ('best' | 'latest' | a step number)."""
  steps = checkpoints.all_steps()
  if not steps:
    raise UserError(f'no checkpoints in {checkpoints.directory}: train first with '
                    '`python -m cifar_jax.main --config=... --workdir=...`.')
  if which == 'best':
    return checkpoints.best_step()
  if which == 'latest':
    return checkpoints.latest_step()
  if which.isdigit() and int(which) in steps:
    return int(which)
  raise UserError(f'--checkpoint={which} is not best, latest or one of the saved steps {steps}.')


def evaluate(config, workdir: str, which: str = 'best') -> dict:
  """Test-split metrics of checkpoint `which` of `workdir`, with per-class accuracy by name."""
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise UserError(f'{workdir} holds no checkpoints directory: is it a workdir written by '
                    '`python -m cifar_jax.main`?')
  config_lib.validate(config)
  mesh = sharding.create_mesh()
  train.check_divisibility(config, mesh.size)
  dataset, host_splits = train.load_host_splits(config)
  model = train.create_model(config, dataset.num_classes)
  optimizer = optim.create_optimizer(config, optim.create_schedule(config, steps_per_epoch=1))
  abstract = train.abstract_train_state(config, model, optimizer, optim.create_plateau(config),
                                        mesh)
  checkpoints = Checkpoints(workdir, read_only=True)
  try:
    step = choose_step(checkpoints, which)
    state = checkpoints.restore(abstract, step)
  finally:
    checkpoints.close()
  eval_fn = train.compile_eval_fn(config, model, mesh, dataset.num_classes)
  test = train.place_eval_split(*host_splits['test'], config.eval_batch_size, mesh)
  result = metrics.summarize_eval(eval_fn(state, *test))
  per_class = dict(zip(dataset.class_names, result.pop('per_class_accuracy'), strict=False))
  return {'checkpoint_step': step, **{f'test_{k}': v for k, v in result.items()
                                      if k != 'num_examples'},
          'num_examples': result['num_examples'], 'per_class_accuracy': per_class}


def _define_config_flag(argv):
  """Defines --config as the workdir's saved config.

  So `--config.FIELD=VALUE` overrides apply to the config the run was trained with.
  """
  flags.FLAGS(argv, known_only=True)
  path = os.path.join(_WORKDIR.value or '', 'config.json')
  config = metrics.load_config(_WORKDIR.value) if os.path.exists(path) else None
  if config is None:
    sys.exit(f'error: {path} not found: --workdir must name a workdir written by '
             '`python -m cifar_jax.main`.')
  config_flags.DEFINE_config_dict('config', config, lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  result = cli.run_reporting_user_errors(
      evaluate, flags.FLAGS.config, _WORKDIR.value, _CHECKPOINT.value)
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser(_define_config_flag))
