"""Fine-tuning from a loaded checkpoint against training from scratch, as JSON lines.

    python benchmarks/finetune_check.py --config=configs/resnet_c10.py --workdir=/tmp/ft \
        --config.dataset.data_dir=/tmp/cifar [--pretrain_steps=400 --finetune_steps=200] \
        [--config.FIELD=VALUE ...]

An end-to-end check of the transfer-learning path on real data, with no download:
  1. trains the config's ResNet for --pretrain_steps (in WORKDIR/pretrain);
  2. writes its weights as a torchvision state dict without the classifier (`fc`), like the
     `_notop` files, to WORKDIR/backbone.safetensors;
  3. fine-tunes from that file through `config.model.init_from` (the head starts at zero) and,
     for comparison, from a fresh initialisation, each for --finetune_steps with the same data
     order and learning rate (WORKDIR/finetuned, WORKDIR/scratch).
Prints one line per run of step 3: the train loss of each evaluation interval and the final
test accuracy.
"""
import json
import os

import jax
import safetensors.numpy
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from cifar_jax import workdir as workdir_lib
from cifar_jax.pretrained import resnet as resnet_layout
from cifar_jax.training import loop

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (a ResNet).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for the three runs and the weights file.')
_PRETRAIN_STEPS = flags.DEFINE_integer('pretrain_steps', 400, 'Train steps of step 1.')
_FINETUNE_STEPS = flags.DEFINE_integer('finetune_steps', 200, 'Train steps of each run of step 3.')
_EVALS = flags.DEFINE_integer('evals', 4, 'Evaluations in each run of step 3.')
flags.mark_flags_as_required(['config', 'workdir'])


def run(config, workdir: str, max_steps: int, init_from: str = ''):
  """Trains a copy of `config` for `max_steps` in `workdir`; returns the final state and records."""
  config = config.copy_and_resolve_references()
  config.max_steps = max_steps
  config.model.init_from = init_from
  state = loop.train_and_evaluate(config, workdir)
  return state, workdir_lib.read_metrics(workdir)


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)
  config, workdir = _CONFIG.value, _WORKDIR.value
  # Evaluate a few times in each run of step 3; the interval is in epochs of the 50,000
  # training images CIFAR-10 and CIFAR-100 both have.
  steps_per_epoch = (50_000 - config.dataset.validation_size) // config.batch_size
  with config.unlocked():
    config.eval_every_epochs = _FINETUNE_STEPS.value / _EVALS.value / steps_per_epoch

  state, records = run(config, os.path.join(workdir, 'pretrain'), _PRETRAIN_STEPS.value)
  weights = resnet_layout.to_torchvision(*jax.device_get((state.params, state.batch_stats)))
  weights = {name: array for name, array in weights.items() if not name.startswith('fc.')}
  path = os.path.join(workdir, 'backbone.safetensors')
  safetensors.numpy.save_file(weights, path)
  print(json.dumps({'run': 'pretrain', 'steps': records[-1]['step'],
                    'test_accuracy': records[-1]['test_accuracy'], 'weights': path}))

  for name, init_from in (('finetuned', path), ('scratch', '')):
    _, records = run(config, os.path.join(workdir, name), _FINETUNE_STEPS.value, init_from)
    print(json.dumps({
        'run': name, 'init_from': init_from or None,
        'train_loss': {r['step']: round(r['train_loss'], 4) for r in records},
        'test_accuracy': records[-1]['test_accuracy'],
    }))


if __name__ == '__main__':
  app.run(main)
