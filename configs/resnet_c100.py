"""ResNet-18 on CIFAR-100: SGD 0.1, momentum 0.9, weight decay 5e-4, batch 128, 200 epochs.

    python -m cifar_jax.main --config=configs/resnet_c100.py --workdir=/tmp/resnet_c100

Published figures for this recipe are 76-78% test accuracy; see the README's
results section for what this codebase has measured.
"""
from cifar_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.dataset.name = 'cifar100'
  config.model.name = 'resnet18'
  config.batch_size = 128
  config.num_epochs = 200
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 5e-4
  config.schedule.name = 'cosine'
  return config
