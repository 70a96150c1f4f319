"""VGG-19 with BatchNorm (CIFAR variant) on CIFAR-100, with the ResNet recipe.

    python -m cifar_jax.main --config=configs/vgg19_c100.py --workdir=/tmp/vgg19_c100

SGD 0.1, momentum 0.9, weight decay 5e-4, batch 128, cosine over 200 epochs. Published figures
for VGG-19-BN on CIFAR-100 are about 72-73%; not yet measured with this codebase.
"""
from cifar_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.dataset.name = 'cifar100'
  config.model.name = 'vgg19'
  return config
