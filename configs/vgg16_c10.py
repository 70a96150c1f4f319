"""VGG-16 with BatchNorm (CIFAR variant) on CIFAR-10, with the ResNet recipe.

    python -m cifar_jax.main --config=configs/vgg16_c10.py --workdir=/tmp/vgg16_c10

SGD 0.1, momentum 0.9, weight decay 5e-4, batch 128, cosine over 200 epochs. Published figures
for VGG-16-BN on CIFAR-10 are about 93-94%; not yet measured with this codebase.
"""
from cifar_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.dataset.name = 'cifar10'
  config.model.name = 'vgg16'
  return config
