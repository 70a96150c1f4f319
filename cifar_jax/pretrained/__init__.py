"""Pretrained weights from the files researchers have, loaded into a fresh model's variables.

    params, batch_stats, notes = pretrained.load(path, model, params, batch_stats)

Supported (`config.model.init_from`):
  - ViT models: `.npz` checkpoints of the original ViT and AugReg releases (ImageNet-21k or
    ImageNet-1k; B/16, B/32, L/16). The position embedding is resampled when the model's input
    size gives another patch grid than the checkpoint's.
  - ResNets: torchvision state dicts (ResNet-18/34/50, also timm's `resnet*.tv_in1k`) as
    `.safetensors` or, with PyTorch installed, `.pth`; Keras' ResNet50 weights into the
    `resnet50_keras` model.
  - VGGs: torchvision's and timm's `vgg*_bn` state dicts (`vgg*` without BatchNorm) as
    `.safetensors` or `.pth`; Keras' VGG16/VGG19 weights into a model with `batch_norm=False`.
    The file's classifier (three Dense layers for ImageNet) is left out.
  - EfficientNet-B0 and EfficientNetV2-B0: Keras applications' weights, and timm's state dicts
    (`tf_efficientnet_b0`, `efficientnet_b0`, `tf_efficientnetv2_b0`) as `.safetensors` or
    `.pth`. The model's `padding` and `bn_epsilon` must be those the weights were trained with
    (see `pretrained.efficientnet`); Keras' input normalisation layer is left out.

Keras files are read in each layout Keras writes: the legacy `.h5` (the keras.applications
downloads, Keras 2's `save_weights`), Keras 3's `.weights.h5` and its `.keras` archives. Keras'
VGG and ResNet50 expect BGR images: their first kernel's input channels are reversed on loading,
so every model takes RGB (normalise with `config.model.normalization='caffe'`).

Every variable of the model must come from the file with its exact shape, with two exceptions
that make fine-tuning possible: the classifier `head` starts afresh (zero, as in the ViT
fine-tuning recipe) when the file's has another number of classes or is another stack of layers,
and a ResNet's `stem_conv` starts afresh when the model's 3x3 CIFAR stem replaces the file's 7x7
ImageNet one. Anything else missing, misshapen or left over in the file is an error naming the
variable.
"""
import logging

import flax
import numpy as np

from cifar_jax import models
from cifar_jax.errors import UserError
from cifar_jax.pretrained import efficientnet, formats, resnet, vgg, vit

log = logging.getLogger(__name__)

# Variables that may start afresh when the file's differ in shape (see the module docstring).
_REPLACEABLE = ('head', 'stem_conv')


def load(path: str, model, params, batch_stats) -> tuple[dict, dict, list[str]]:
  """The model's variables with the file's weights in place of the fresh ones.

  Args:
    path: The weights file; its extension names its format.
    model: The flax module the variables belong to (a ViT, ResNet, VGG, EfficientNet or
      EfficientNetV2).
    params, batch_stats: The model's freshly initialised variables (host arrays); they give the
      names and shapes to fill, and the values of whatever starts afresh.

  Returns:
    params, batch_stats (numpy), and notes: one line per variable that started afresh or part
    of the file that was left out on purpose.

  Raises:
    UserError: for a missing or unreadable file, a format the model does not take, or a file
      whose variables do not match the model's.
  """
  format_name, arrays = formats.read(path)
  name_of, value_of, ignorable = _layout(model, format_name, path, arrays)
  template = flax.traverse_util.flatten_dict({'params': params, 'batch_stats': batch_stats})
  loaded, notes, used = {}, [], set()
  for var_path, fresh in template.items():
    shown = '/'.join(var_path[1:])
    name = name_of(var_path)
    if name is None and var_path[1] == 'head':  # The file's classifier does not fit the model's.
      loaded[var_path] = fresh
      notes.append(f'{shown}: starts afresh in place of the file\'s classifier')
      continue
    if name not in arrays:
      if var_path[1] == 'head':
        loaded[var_path] = fresh
        notes.append(f'{shown}: not in the file, starts afresh')
        continue
      raise UserError(f'{path} has no {name!r} for the model\'s {shown} {fresh.shape}: is it a '
                      f'checkpoint of another architecture than {type(model).__name__}?')
    used.add(name)
    try:
      value = value_of(var_path, arrays[name], fresh.shape)
    except ValueError as e:
      raise UserError(f'{path}: {name}: {e}') from None
    if value.shape != fresh.shape:
      if var_path[1] in _REPLACEABLE:
        loaded[var_path] = fresh
        notes.append(f'{shown}: starts afresh with shape {fresh.shape}; the file\'s {name} has '
                     f'shape {value.shape}')
        continue
      raise UserError(f'{path}: {name} has shape {value.shape} but the model\'s {shown} needs '
                      f'{fresh.shape}: check config.model (name, width, input_size) against '
                      'the checkpoint.')
    loaded[var_path] = np.asarray(value, fresh.dtype)
  leftover = sorted(n for n in arrays if n not in used and not ignorable(n, template))
  if leftover:
    raise UserError(f'{path} has {len(leftover)} weights the model has no place for, e.g. '
                    f'{", ".join(leftover[:3])}: is it a checkpoint of another architecture or '
                    f'width than {type(model).__name__} as configured?')
  # BatchNorm counters last, so the note shows what matters (e.g. a classifier) first.
  skipped = sorted((n for n in arrays if n not in used),
                   key=lambda n: (resnet.is_batch_norm_counter(n), n))
  if skipped:
    notes.append(f'left out of the file: {", ".join(skipped[:4])}'
                 f'{" ..." if len(skipped) > 4 else ""}')
  tree = flax.traverse_util.unflatten_dict(loaded)
  return tree['params'], tree.get('batch_stats', {}), notes


def _layout(model, format_name: str, path: str, arrays: dict):
  """(name_of, value_of, ignorable) for reading `format_name` (`arrays`) into `model`."""
  if isinstance(model, models.vit.VisionTransformer):
    if format_name != 'ViT .npz':
      raise UserError(f'{path}: ViT models load .npz checkpoints of the ViT releases, not '
                      f'{format_name} files.')
    # Pre-training's tanh "pre_logits" layer is dropped when the model has none, as in the
    # ViT fine-tuning recipe.
    return (vit.npz_name, vit.npz_value,
            lambda name, template: name.startswith('pre_logits/')
            and ('params', 'pre_logits', 'kernel') not in template)
  if isinstance(model, models.resnet.ResNet):
    if format_name in ('safetensors', 'PyTorch'):
      return (resnet.torchvision_name, _shape_free(resnet.torchvision_value),
              lambda name, _: resnet.is_batch_norm_counter(name))
    if format_name in formats.KERAS:
      return resnet.keras_name, _shape_free(resnet.keras_value), lambda name, _: False
    raise UserError(f'{path}: ResNets load torchvision (.safetensors, .pth) or Keras (.h5, '
                    f'.keras) weights, not {format_name} files.')
  if isinstance(model, models.vgg.VGG):
    if format_name in ('safetensors', 'PyTorch'):
      return (vgg.torchvision_name_function(model.block_sizes, model.batch_norm),
              _shape_free(vgg.torchvision_value), lambda name, _: vgg.is_torchvision_extra(name))
    if format_name in formats.KERAS:
      if model.batch_norm:
        raise UserError(f'{path}: Keras\' VGG16 and VGG19 have no BatchNorm; load them into a '
                        'VGG with --config.model.batch_norm=False.')
      return (vgg.keras_name, _shape_free(vgg.keras_value),
              lambda name, _: vgg.is_keras_classifier(name))
    raise UserError(f'{path}: VGGs load torchvision or timm (.safetensors, .pth) or Keras (.h5, '
                    f'.keras) weights, not {format_name} files.')
  if isinstance(model, models.efficientnet.EfficientNet):  # EfficientNetV2 is one too.
    return _efficientnet_layout(model, format_name, path, arrays)
  raise UserError(f'pretrained weights load into ViT, ResNet, VGG and EfficientNet models, not '
                  f'{type(model).__name__}.')


def _efficientnet_layout(model, format_name: str, path: str, arrays: dict):
  """Keras' files (TensorFlow's padding and epsilon, always) or timm's (either)."""
  family = type(model).__name__
  if format_name in formats.KERAS:
    if (model.padding, model.bn_epsilon) != ('same', 1e-3):
      raise UserError(f'{path}: Keras\' {family} weights were trained with TensorFlow\'s padding '
                      'and BatchNorm epsilon 1e-3: set config.model.padding=\'same\' and '
                      f'config.model.bn_epsilon=0.001 (not {model.padding!r} and '
                      f'{model.bn_epsilon}).')
    return (lambda var_path: efficientnet.keras_name(model, var_path, arrays),
            _shape_free(efficientnet.keras_value),
            lambda name, _: efficientnet.is_keras_normalization(name))
  if format_name in ('safetensors', 'PyTorch'):
    # The file does not say whether it is a tf_ port or timm's own: padding and epsilon are the
    # config's (see `pretrained.efficientnet`).
    return (lambda var_path: efficientnet.timm_name(model, var_path),
            _shape_free(resnet.torchvision_value),
            lambda name, _: resnet.is_batch_norm_counter(name))
  raise UserError(f'{path}: {family} loads Keras (.h5, .keras) or timm (.safetensors, .pth) '
                  f'weights, not {format_name} files.')


def _shape_free(value_of):
  """A value function that needs no target shape, in the signature `load` calls."""
  return lambda var_path, array, shape: value_of(var_path, array)
