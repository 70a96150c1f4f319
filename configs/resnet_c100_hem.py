"""ResNet-18 on CIFAR-100 with hard example mining: the recipe of `resnet_c100.py` plus `topk` HEM.

    python -m cifar_jax.main --config=configs/resnet_c100_hem.py --workdir=/tmp/resnet_c100_hem

The hardest 25% of each global batch weighs twice the rest (weights normalised to mean 1). The
Keras project this follows reported 50% -> 55% test accuracy from its hard-example callback; the
ResNet-18 recipe without mining is published at 76-78%. Compare with `resnet_c100.py` over
several seeds; not yet measured with this codebase.
Its row in the README's "Claims of the projects cifar_jax replaces" says what is measured.
"""
from cifar_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.dataset.name = 'cifar100'
  config.model.name = 'resnet18'
  config.hem.mode = 'topk'
  config.hem.fraction = 0.25
  config.hem.boost = 2.0
  return config
