"""Names and layouts of EfficientNet-B0 and EfficientNetV2-B0 weights in Keras' and timm's files.

Keras applications (`efficientnetb0[_notop].h5`, `efficientnetv2-b0[_notop].h5`) name layers
'block{stage}{letter}_{layer}' ('block2a_expand_conv', 'block4c_se_reduce'; letters count the
blocks of a stage) and store depthwise kernels as [k, k, C, 1]. timm's state dicts
(`efficientnet_b0`, `tf_efficientnet_b0`, `tf_efficientnetv2_b0`) name them
'blocks.{stage - 1}.{block}.{layer}' with PyTorch's [out, in, k, k] kernels, and the layer names
depend on the kind of block:

  block of the model              timm block              its layers
  MBConv without expansion        DepthwiseSeparableConv  conv_dw bn1 se conv_pw bn2
  MBConv                          InvertedResidual        conv_pw bn1 conv_dw bn2 se conv_pwl bn3
  Fused-MBConv without expansion  ConvBnAct               conv bn1
  Fused-MBConv                    EdgeResidual            conv_exp bn1 se conv_pwl bn2

Each `*_name` function maps one of the model's variables, as a path such as
('params', 'stage2_block0', 'se', 'reduce', 'kernel'), to the file's name for it; each
`*_value` function turns the file's array into the model's layout.
"""
import re

import numpy as np

from cifar_jax.models import efficientnet_v2
from cifar_jax.pretrained import resnet

# Layers outside the blocks: ours -> Keras', timm's.
_KERAS_TOP = {'stem_conv': 'stem_conv', 'stem_bn': 'stem_bn', 'head_conv': 'top_conv',
              'head_bn': 'top_bn', 'head': 'predictions'}
_TIMM_TOP = {'stem_conv': 'conv_stem', 'stem_bn': 'bn1', 'head_conv': 'conv_head',
             'head_bn': 'bn2', 'head': 'classifier'}

# A block's layers ('se/reduce' for nested modules): ours -> Keras' suffix. EfficientNetV2's
# depthwise convolution is 'dwconv2' in Keras.
_KERAS_BLOCK = {'expand_conv': 'expand_conv', 'expand_bn': 'expand_bn',
                'depthwise_conv': 'dwconv', 'depthwise_bn': 'bn', 'se/reduce': 'se_reduce',
                'se/expand': 'se_expand', 'project_conv': 'project_conv',
                'project_bn': 'project_bn'}

# A block's layers -> timm's, by the kind of timm block (see the module docstring).
_SE = {'se/reduce': 'se.conv_reduce', 'se/expand': 'se.conv_expand'}
_TIMM_BLOCK = {
    'ds': {'depthwise_conv': 'conv_dw', 'depthwise_bn': 'bn1', 'project_conv': 'conv_pw',
           'project_bn': 'bn2', **_SE},
    'ir': {'expand_conv': 'conv_pw', 'expand_bn': 'bn1', 'depthwise_conv': 'conv_dw',
           'depthwise_bn': 'bn2', 'project_conv': 'conv_pwl', 'project_bn': 'bn3', **_SE},
    'cn': {'project_conv': 'conv', 'project_bn': 'bn1'},
    'er': {'expand_conv': 'conv_exp', 'expand_bn': 'bn1', 'project_conv': 'conv_pwl',
           'project_bn': 'bn2'},
}

# Keras' input normalisation layer (numbered when a session builds several models): its mean,
# variance and count, which `load` leaves out (see `is_keras_normalization`).
_KERAS_NORMALIZATION = re.compile(r'normalization(_\d+)?/(mean|variance|count)')


def _modules(path: tuple[str, ...]) -> tuple[str, str, str]:
  """(block module or '', layer within it or the top-level layer, variable) of a variable path."""
  *modules, variable = path[1:]
  if len(modules) == 1:
    return '', modules[0], variable
  return modules[0], '/'.join(modules[1:]), variable


def keras_name(model, path: tuple[str, ...], file_names) -> str:
  """E.g. stage2_block0/depthwise_bn/var -> 'block2a_bn/moving_variance'.

  `file_names` are the file's: a depthwise kernel is 'depthwise_kernel' in the files TF-Keras
  wrote (the released weights) and 'kernel' in those Keras 3 writes.
  """
  block, layer, variable = _modules(path)
  if not block:
    layer = _KERAS_TOP[layer]
  else:
    stage, index = resnet.BLOCK.fullmatch(block).groups()
    suffix = _KERAS_BLOCK[layer]
    if suffix == 'dwconv' and isinstance(model, efficientnet_v2.EfficientNetV2):
      suffix = 'dwconv2'
    layer = f'block{stage}{chr(ord("a") + int(index))}_{suffix}'
  if layer.endswith('bn'):
    return f'{layer}/{resnet.KERAS_BN[variable]}'
  if 'dwconv' in layer and f'{layer}/kernel' not in file_names:
    return f'{layer}/depthwise_kernel'
  return f'{layer}/{variable}'


def keras_value(path: tuple[str, ...], array: np.ndarray) -> np.ndarray:
  """Keras' depthwise kernels [k, k, C, 1] as flax's [k, k, 1, C]; the rest is flax's layout."""
  if path[-2] == 'depthwise_conv':
    return array.transpose(0, 1, 3, 2)
  return array


def is_keras_normalization(name: str) -> bool:
  """The variables of the `Normalization` layer at the input of Keras' EfficientNet.

  Keras' EfficientNet takes [0, 255] images and normalises them itself: with ImageNet weights it
  computes (x / 255 - mean) / std with ImageNet's mean and standard deviation (this layer, then
  a `Rescaling` that Keras adds to correct the variance the released files hold: TensorFlow
  issue 49930, cited in keras.applications' efficientnet.py). Here the input pipeline
  normalises instead (`config.model.normalization='imagenet'` is the same map), so these
  weights are left out.
  """
  return bool(_KERAS_NORMALIZATION.fullmatch(name))


def timm_name(model, path: tuple[str, ...]) -> str:
  """E.g. stage2_block0/depthwise_bn/var -> 'blocks.1.0.bn2.running_var'."""
  block, layer, variable = _modules(path)
  if not block:
    layer = _TIMM_TOP[layer]
  else:
    stage, index = map(int, resnet.BLOCK.fullmatch(block).groups())
    layer = f'blocks.{stage - 1}.{index}.{_TIMM_BLOCK[_timm_kind(model.stages[stage - 1])][layer]}'
  if layer.split('.')[-1].startswith('bn'):
    return f'{layer}.{resnet.TORCH_BN[variable]}'
  return f'{layer}.{variable.replace("kernel", "weight")}'


def _timm_kind(stage) -> str:
  """timm's block for a stage of either family (see the module docstring)."""
  if stage.fused:
    return 'cn' if stage.expand_ratio == 1 else 'er'
  return 'ds' if stage.expand_ratio == 1 else 'ir'
