"""Names and layouts of VGG weights in the Keras and torchvision files, for `cifar_jax`'s `VGG`.

Keras applications' VGG16/VGG19 have no BatchNorm; their layers are named as the model's modules
(`block1_conv1` ... `block5_conv4`) and their first convolution expects BGR images. torchvision's
`vgg*_bn` and `vgg*` (and timm's, e.g. `vgg19_bn.tv_in1k`) number their layers in one
`features` sequence: each convolution, its BatchNorm (in `_bn`) and ReLU take one index each, and
each block ends with a max-pool. The model replaces the files' classifiers (Keras' fc1, fc2 and
predictions, torchvision's `classifier.*`, timm's `pre_logits.*` and `head.*`: ImageNet's 7x7x512
-> 4096 -> 4096 -> 1000 layers) by one Dense layer on the pooled features, which starts afresh.
"""
import re

import numpy as np

from cifar_jax.pretrained import resnet

# The model's modules: block{b}_conv{l} and block{b}_bn{l}, both numbered from 1.
_LAYER = re.compile(r'block(\d+)_(conv|bn)(\d+)')

# The file's classifier, which the model has no place for.
_KERAS_CLASSIFIER = ('fc1/', 'fc2/', 'predictions/')
_TORCH_CLASSIFIER = ('classifier.', 'pre_logits.', 'head.')


def keras_name(path: tuple[str, ...]) -> str | None:
  """E.g. block3_conv2/kernel -> 'block3_conv2/kernel'; the head has none (None)."""
  *modules, variable = path[1:]
  if modules == ['head']:
    return None
  return f'{modules[0]}/{variable}'


def keras_value(path: tuple[str, ...], array: np.ndarray) -> np.ndarray:
  """Keras' kernels are already [h, w, in, out]; its first convolution expects BGR, ours RGB."""
  if path[1:] == ('block1_conv1', 'kernel'):
    return array[:, :, ::-1]
  return array


def is_keras_classifier(name: str) -> bool:
  return name.startswith(_KERAS_CLASSIFIER)


def torchvision_name_function(block_sizes, batch_norm: bool):
  """The function from a variable's path to its `features.N` name, for this stack of blocks.

  E.g. for VGG-19 with BatchNorm: block2_bn1/mean -> 'features.8.running_mean'.
  """
  index, position = {}, 0
  for block, size in enumerate(block_sizes):
    for layer in range(size):
      index[block + 1, 'conv', layer + 1] = position
      index[block + 1, 'bn', layer + 1] = position + 1
      position += 3 if batch_norm else 2  # Convolution, [BatchNorm,] ReLU.
    position += 1  # The block's max-pool.

  def torchvision_name(path: tuple[str, ...]) -> str | None:
    *modules, variable = path[1:]
    if modules == ['head']:
      return None
    block, kind, layer = _LAYER.fullmatch(modules[0]).groups()
    name = resnet.TORCH_BN[variable] if kind == 'bn' else variable.replace('kernel', 'weight')
    return f'features.{index[int(block), kind, int(layer)]}.{name}'

  return torchvision_name


def torchvision_value(path: tuple[str, ...], array: np.ndarray) -> np.ndarray:
  """PyTorch's [out, in, h, w] kernels as flax's [h, w, in, out]."""
  return resnet.torchvision_value(path, array)


def is_torchvision_extra(name: str) -> bool:
  """The classifier and BatchNorm's `num_batches_tracked` counters."""
  return name.startswith(_TORCH_CLASSIFIER) or resnet.is_batch_norm_counter(name)
