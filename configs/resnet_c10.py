"""ResNet-18 on CIFAR-10: SGD 0.1, momentum 0.9, weight decay 5e-4, batch 128, 200 epochs.

    python -m cifar_jax.main --config=configs/resnet_c10.py --workdir=/tmp/resnet_c10

The recipe of `resnet_c100.py` (both are `base_config()`'s defaults). Published
figures for it are about 95% test accuracy; see the README's results section
for what this codebase has measured.
"""
from cifar_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.dataset.name = 'cifar10'
  config.model.name = 'resnet18'
  config.num_epochs = 200
  return config
