"""Model registry: names to module constructors, and construction from config values.

Adding a model family means writing its module file and adding its entries to `MODELS` and
`TINY`. An entry is a flax module class or a `functools.partial` of one; the fields it leaves
unbound (apart from `num_classes` and `bn_axis_name`) are the family's config fields. The fields
every family shares are documented in `layers`. Each family checks its own fields' values when it
is created (its `__post_init__`), so `check_config` needs no list of them.
"""

import dataclasses
import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.extend.core
import jax.numpy as jnp

from cifar_jax.config import MODEL_SETTINGS
from cifar_jax.errors import UserError
from cifar_jax.models import (
    airbench,
    efficientnet,
    efficientnet_v2,
    layers,
    preact_resnet,
    resnet,
    simple_cnn,
    vgg,
    vit,
    wide_resnet,
    xception,
)

MODELS: dict[str, Callable[..., nn.Module]] = {
    'airbench': airbench.Airbench,
    'resnet10': resnet.ResNet10,
    'resnet18': resnet.ResNet18,
    'resnet34': resnet.ResNet34,
    'resnet50': resnet.ResNet50,
    'resnet50_keras': resnet.ResNet50Keras,
    'simple_cnn': simple_cnn.SimpleCNN,
    'vgg11': vgg.VGG11,
    'vgg13': vgg.VGG13,
    'vgg16': vgg.VGG16,
    'vgg19': vgg.VGG19,
    'preact_resnet18': preact_resnet.PreActResNet18,
    'wide_resnet': wide_resnet.WideResNet,
    'wrn16_8': wide_resnet.WRN16_8,
    'wrn28_10': wide_resnet.WRN28_10,
    'vit_tiny_p4': vit.ViTTinyP4,
    'vit_small_p4': vit.ViTSmallP4,
    'vit_b16': vit.ViTB16,
    'vit_b32': vit.ViTB32,
    'vit_l16': vit.ViTL16,
    'efficientnet_b0': efficientnet.EfficientNetB0,
    'efficientnetv2_b0': efficientnet_v2.EfficientNetV2B0,
    'xception': xception.Xception,
}

# A tiny variant of each registered model, for tests: the same module class at a few channels
# and blocks, so it compiles in seconds on CPU. It accepts the model's config fields too, as
# keyword arguments (dtype as a jnp type); models that differ only in size share one.
TINY: dict[str, Callable[..., nn.Module]] = {
    'airbench': airbench.TinyAirbench,
    'resnet10': resnet.TinyResNet,
    'resnet18': resnet.TinyResNet,
    'resnet34': resnet.TinyResNet,
    'resnet50': resnet.TinyResNet50,
    'resnet50_keras': resnet.TinyResNet50Keras,
    'simple_cnn': simple_cnn.TinySimpleCNN,
    'vgg11': vgg.TinyVGG,
    'vgg13': vgg.TinyVGG,
    'vgg16': vgg.TinyVGG,
    'vgg19': vgg.TinyVGG,
    'preact_resnet18': preact_resnet.TinyPreActResNet,
    'wide_resnet': wide_resnet.TinyWideResNet,
    'wrn16_8': wide_resnet.TinyWideResNet,
    'wrn28_10': wide_resnet.TinyWideResNet,
    'vit_tiny_p4': vit.TinyViT,
    'vit_small_p4': vit.TinyViT,
    'vit_b16': vit.TinyViT,
    'vit_b32': vit.TinyViT,
    'vit_l16': vit.TinyViT,
    'efficientnet_b0': efficientnet.TinyEfficientNet,
    'efficientnetv2_b0': efficientnet_v2.TinyEfficientNetV2,
    'xception': xception.TinyXception,
}

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}

# Set by create_model's own arguments or by flax itself, so never config fields.
_NON_CONFIG_FIELDS = frozenset({'num_classes', 'bn_axis_name', 'parent', 'name'})


def config_fields(name: str) -> list[str]:
  """Returns the config fields model `name` accepts as keyword arguments of `create_model`.

  Raises:
    UserError: if `name` is not in `MODELS`.
  """
  constructor = _lookup(name)
  bound = set()
  while isinstance(constructor, functools.partial):
    bound |= constructor.keywords.keys()
    constructor = constructor.func
  return [f.name for f in dataclasses.fields(constructor)
          if f.init and f.name not in bound and f.name not in _NON_CONFIG_FIELDS]


def create_model(name: str, *, num_classes: int, bn_axis_name: str | None = None,
                 **kwargs) -> nn.Module:
  """Builds a registered model.

  Args:
    name: Key of `MODELS`, e.g. 'resnet18'.
    num_classes: Number of output logits.
    bn_axis_name: Mesh axis over which BatchNorm averages batch statistics (see the model).
    **kwargs: The family's config fields, e.g. `width` and `dtype` for ResNets. `dtype` is a
      string, 'float32', 'bfloat16' or 'float16' (trained with dynamic loss scaling: see
      `training/loss_scale.py`).

  Returns:
    The unbound flax module.

  Raises:
    UserError: for an unknown model name, config field or dtype.
  """
  _check_fields(name, kwargs)
  if 'dtype' in kwargs:
    kwargs['dtype'] = _DTYPES[kwargs['dtype']]
  return MODELS[name](num_classes=num_classes, bn_axis_name=bn_axis_name, **kwargs)


def _check_fields(name: str, fields) -> None:
  """Raises a UserError for a field model `name` does not have, or an unknown dtype."""
  accepted = config_fields(name)
  for field in fields:
    if field not in accepted:
      raise UserError(f'model {name!r} has no config field {field!r}; '
                      f'its fields are: {", ".join(accepted)}')
  dtype = fields.get('dtype', 'float32')
  if not isinstance(dtype, str) or dtype not in _DTYPES:
    raise UserError(f'config.model.dtype={dtype!r} is not one of {", ".join(_DTYPES)}.')


def check_config(model_config) -> None:
  """Raises a UserError for a `config.model` this registry cannot build: an unknown model, field
  or dtype, or a value its family refuses (see each family's `__post_init__`)."""
  if model_config.init_from is None:
    raise UserError('this config fine-tunes pretrained weights: name the file with '
                    '--config.model.init_from=PATH (the README says where to download them).')
  if model_config.input_size < 1:
    raise UserError(f'config.model.input_size must be positive, got {model_config.input_size}.')
  # Created to run the family's own checks; the number of classes is not known yet.
  create_model(model_config.name, num_classes=1, **_family_fields(model_config))


def from_config(model_config, num_classes: int, *, bn_axis_name: str | None = None) -> nn.Module:
  """The model `config.model` describes: its family's fields are all but `MODEL_SETTINGS`.

  Raises:
    UserError: for an unknown model, field or value, or a missing pretrained file.
  """
  check_config(model_config)
  return create_model(model_config.name, num_classes=num_classes, bn_axis_name=bn_axis_name,
                      **_family_fields(model_config))


def _family_fields(model_config) -> dict:
  return {k: v for k, v in model_config.items() if k not in MODEL_SETTINGS}


def count_params(params) -> int:
  """Returns the number of scalars in a parameter tree (arrays or `jax.ShapeDtypeStruct`s)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def largest_activation_bytes(model: nn.Module, input_size: int) -> int:
  """Bytes per example of the largest array `model` computes in evaluation on `input_size`-pixel
  square images, at batch sizes where a CPU's convolutions take their image patches a few
  images at a time (`layers.patch_conv`), as they do at any batch that could fill a memory.

  A lower bound on the memory each example of a batch needs. XLA:CPU's peak per example (its
  compiled programs' temporary memory at batches 64 and 128, 32x32 images, float32) was 3.5-17
  times it in evaluation and 7.8-56 times it in a train step (airbench94, the simple CNN,
  ResNet-18, VGG-16, WRN-28-10). Read from the programs traced at two batch sizes, not compiled.

  Raises:
    UserError: if the model cannot be applied to images of that size (e.g. pooled to nothing).
  """
  def images(batch: int):
    return jax.ShapeDtypeStruct((batch, input_size, input_size, 3), jnp.float32)

  def array_bytes(variables, batch: int) -> list[int]:
    apply = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))
    return list(_output_bytes(apply(variables, images(batch)).jaxpr))

  # Batches of 2 and 3 times `many` examples: large enough that every convolution loops over
  # chunks of images at both, and no chunk of the second is larger than the first's.
  many = layers.PATCH_ROWS
  try:
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                               images(2))
    two, three = array_bytes(variables, 2 * many), array_bytes(variables, 3 * many)
  except (TypeError, ValueError, ZeroDivisionError) as e:
    detail = str(e).splitlines()[0] if str(e) else ''
    raise UserError(f'config.model.input_size={input_size}: the model cannot be applied to '
                    f'{input_size}x{input_size} images ({type(e).__name__}: {detail}); use larger '
                    'inputs.') from None
  # The same program at both sizes, array by array: the growth is `many` examples' share
  # (weights do not grow). Should a model trace differently, its size is unknown: 0.
  if len(two) != len(three):
    return 0
  return max((b - a for a, b in zip(two, three, strict=True)), default=0) // many


def _output_bytes(jaxpr):
  """The size in bytes of every array `jaxpr` and the programs nested in it compute, in order."""
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      if hasattr(var.aval, 'shape'):
        yield math.prod(var.aval.shape) * var.aval.dtype.itemsize
    for inner in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _output_bytes(inner)


def _lookup(name: str) -> Callable[..., nn.Module]:
  if name not in MODELS:
    raise UserError(f'unknown model {name!r}; choose one of: {", ".join(MODELS)}')
  return MODELS[name]
