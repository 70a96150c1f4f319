"""The simple VGG-like CNN (two blocks of 3x3 convolutions, 32 then 64 filters) on CIFAR-10.

    python -m cifar_jax.main --config=configs/simple_cnn_c10.py --workdir=/tmp/simple_cnn_c10

The Keras recipe it reproduces: SGD 0.001 with momentum 0.9, batch 64, 50 epochs, no weight
decay, dropout growing with depth. That recipe is reported at 76% test accuracy after 50 epochs;
not yet measured with this codebase.
Its row in the README's "Claims of the projects cifar_jax replaces" says what is measured.
"""
from cifar_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.dataset.name = 'cifar10'
  config.model.name = 'simple_cnn'
  config.model.width = 32  # Filters of the first block.
  config.batch_size = 64
  config.num_epochs = 50
  config.schedule.name = 'constant'
  config.optimizer.learning_rate = 0.001
  config.optimizer.weight_decay = 0.0
  return config
