"""VGG-16 with BatchNorm on CIFAR-10: `vgg16_c10.py` plus torchvision-style colour jitter.

    python -m cifar_jax.main --config=configs/vgg16_c10_jitter.py --workdir=/tmp/vgg16_c10_jitter

The PyTorch VGG-16 project this codebase replaces trained with torchvision's
`ColorJitter(brightness, contrast, saturation, hue)`; its settings are not recorded here, so this
takes a common choice, ColorJitter(0.2, 0.2, 0.2, 0.1): brightness, contrast and saturation
factors uniform in [0.8, 1.2] and hue shifts within +-0.1 of the colour wheel, per image, in a
random order, after crop and flip (`cifar_jax/augment/color_jitter.py`). Otherwise the recipe of
`vgg16_c10.py`. Not yet measured with this codebase: compare with `vgg16_c10.py` over several
seeds.
"""
import os

from cifar_jax import config as config_lib


def get_config():
  config = config_lib.from_file(os.path.join(os.path.dirname(__file__), 'vgg16_c10.py'))
  config.augment.color_jitter.update(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1)
  return config
