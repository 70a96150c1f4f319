"""A tiny ResNet on synthetic CIFAR-10 data: checks the whole pipeline in seconds on a CPU.

    python -m cifar_jax.main --config=configs/smoke.py --workdir=/tmp/smoke
"""
from cifar_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.dataset.name = 'cifar10'
  config.dataset.source = 'synthetic'
  config.dataset.synthetic_train_size = 512
  config.dataset.synthetic_test_size = 256
  config.model.name = 'resnet10'
  config.model.width = 8
  config.batch_size = 64
  config.eval_batch_size = 128
  config.num_epochs = 3
  config.schedule.name = 'constant'
  config.optimizer.learning_rate = 0.05
  return config
