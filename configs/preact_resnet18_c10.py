"""Pre-activation ResNet-18 on CIFAR-10, with the ResNet recipe.

    python -m cifar_jax.main --config=configs/preact_resnet18_c10.py --workdir=/tmp/preact_c10

SGD 0.1, momentum 0.9, weight decay 5e-4, batch 128, cosine over 200 epochs. Published figures
are about 95%; not yet measured with this codebase.
"""
from cifar_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.dataset.name = 'cifar10'
  config.model.name = 'preact_resnet18'
  return config
