"""Names and layouts of ResNet weights in the torchvision and Keras files, for `ResNet`.

Each `*_name` function maps one of the model's variables, as a path such as
('params', 'stage2_block0', 'proj_conv', 'kernel'), to the file's name for it; each `*_value`
function turns the file's array into the model's layout.
"""
import re

import flax
import numpy as np

# The model's stage/block modules, e.g. 'stage2_block0'.
BLOCK = re.compile(r'stage(\d+)_block(\d+)')

# BatchNorm variables: ours, torchvision's, Keras'.
TORCH_BN = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}
KERAS_BN = {'scale': 'gamma', 'bias': 'beta', 'mean': 'moving_mean', 'var': 'moving_variance'}


def torchvision_name(path: tuple[str, ...]) -> str:
  """E.g. stage2_block0/proj_bn/mean -> 'layer2.0.downsample.1.running_mean'."""
  *modules, variable = path[1:]
  if modules == ['head']:
    return f'fc.{variable.replace("kernel", "weight")}'
  if modules in (['stem_conv'], ['stem_bn']):
    layer = 'conv1' if modules == ['stem_conv'] else 'bn1'
  else:
    block, layer = modules
    stage, index = BLOCK.fullmatch(block).groups()
    layer = {'proj_conv': 'downsample.0', 'proj_bn': 'downsample.1'}.get(layer, layer)
    layer = f'layer{stage}.{index}.{layer}'
  is_bn = 'bn' in modules[-1]  # bn1..bn3, proj_bn, stem_bn.
  return f'{layer}.{TORCH_BN[variable] if is_bn else variable.replace("kernel", "weight")}'


def torchvision_value(path: tuple[str, ...], array: np.ndarray) -> np.ndarray:
  """PyTorch's [out, in, h, w] convolution and [out, in] linear weights, transposed to flax's."""
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if array.ndim == 2:
    return array.T
  return array


def keras_name(path: tuple[str, ...]) -> str:
  """E.g. stage2_block0/proj_bn/mean -> 'conv3_block1_0_bn/moving_mean'."""
  *modules, variable = path[1:]
  if modules == ['head']:
    return f'predictions/{variable}'
  if modules in (['stem_conv'], ['stem_bn']):
    layer = 'conv1_conv' if modules == ['stem_conv'] else 'conv1_bn'
  else:
    block, layer = modules
    stage, index = BLOCK.fullmatch(block).groups()
    # Keras numbers stages from conv2 (after the conv1 stem) and blocks from 1; the shortcut
    # projection is layer 0 of the block.
    kind = 'bn' if 'bn' in layer else 'conv'  # conv1..conv3, proj_conv; bn1..bn3, proj_bn.
    number = '0' if layer.startswith('proj') else layer[-1]
    layer = f'conv{int(stage) + 1}_block{int(index) + 1}_{number}_{kind}'
  return f'{layer}/{KERAS_BN[variable] if layer.endswith("bn") else variable}'


def keras_value(path: tuple[str, ...], array: np.ndarray) -> np.ndarray:
  """Keras' kernels are already [h, w, in, out]; its stem expects BGR images, ours RGB."""
  if path[1:] == ('stem_conv', 'kernel'):
    return array[:, :, ::-1]
  return array


def is_batch_norm_counter(name: str) -> bool:
  """torchvision's `num_batches_tracked`, which flax's BatchNorm has no use for."""
  return name.endswith('num_batches_tracked')


def to_torchvision(params, batch_stats) -> dict[str, np.ndarray]:
  """A ResNet's variables as a torchvision state dict (numpy): the inverse of loading one.

  E.g. to save with `safetensors.numpy.save_file` for PyTorch, or to start another run from.
  """
  flat = flax.traverse_util.flatten_dict({'params': params, 'batch_stats': batch_stats})
  state = {}
  for path, value in flat.items():
    array = np.asarray(value, np.float32)
    if array.ndim == 4:
      array = array.transpose(3, 2, 0, 1)
    elif array.ndim == 2:
      array = array.T
    # Contiguous, since safetensors writes an array's memory as it lies.
    state[torchvision_name(path)] = np.ascontiguousarray(array)
  return state
