"""ResNets (He et al., 2016) in NHWC layout, with a CIFAR or an ImageNet stem.

The CIFAR stem is a single 3x3 stride-1 convolution with no max-pool, so a 32x32 image keeps full
resolution in the first stage (ResNet-18 then has 11,173,962 parameters with 10 classes). The
ImageNet stem is torchvision's 7x7 stride-2 convolution and 3x3 stride-2 max-pool. The blocks
follow torchvision's layout and names (see `cifar_jax.pretrained.resnet`), so its ImageNet
weights load one-to-one; `ResNet50Keras` is the variant of the Keras applications' ResNet50.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cifar_jax.errors import check_choice
from cifar_jax.models import layers

STEMS = ('cifar', 'imagenet')


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with an identity or projection shortcut (ResNet-18/34).

  Attributes:
    features: Output channels of the block.
    strides: Stride of the first convolution (and of the projection shortcut).
    conv: Convolution constructor (bias, initialiser and dtypes bound).
    norm: BatchNorm constructor (train/eval mode, momentum, axis name and dtypes bound).
  """
  features: int
  strides: int
  conv: layers.ModuleDef
  norm: layers.ModuleDef

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.features, (3, 3), (self.strides, self.strides), padding=layers.PAD_3X3,
                  name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.features, (3, 3), padding=layers.PAD_3X3, name='conv2')(y)
    y = self.norm(name='bn2')(y)
    if residual.shape != y.shape:
      residual = self.conv(self.features, (1, 1), (self.strides, self.strides), padding='VALID',
                           name='proj_conv')(residual)
      residual = self.norm(name='proj_bn')(residual)
    return nn.relu(y + residual)


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3, 1x1 expand (by 4) with an identity or projection shortcut (ResNet-50).

  The stride sits on the 3x3 convolution, as in torchvision ("ResNet v1.5").

  Attributes:
    features: Channels of the inner 3x3 convolution; the block outputs 4 * features.
    strides: Stride of the 3x3 convolution (and of the projection shortcut).
    conv: Convolution constructor (bias, initialiser and dtypes bound).
    norm: BatchNorm constructor (train/eval mode, momentum, axis name and dtypes bound).
    stride_in_1x1: Put the stride on the first 1x1 convolution instead, as the original
      ResNet and Keras' ResNet50 do.
  """
  features: int
  strides: int
  conv: layers.ModuleDef
  norm: layers.ModuleDef
  stride_in_1x1: bool = False

  expansion = 4

  @nn.compact
  def __call__(self, x):
    residual = x
    out_features = self.features * self.expansion
    strides_1x1, strides_3x3 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
    y = self.conv(self.features, (1, 1), (strides_1x1, strides_1x1), padding='VALID',
                  name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.features, (3, 3), (strides_3x3, strides_3x3), padding=layers.PAD_3X3,
                  name='conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.conv(out_features, (1, 1), padding='VALID', name='conv3')(y)
    y = self.norm(name='bn3')(y)
    if residual.shape != y.shape:
      residual = self.conv(out_features, (1, 1), (self.strides, self.strides), padding='VALID',
                           name='proj_conv')(residual)
      residual = self.norm(name='proj_bn')(residual)
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """ResNet: stem, four stages (widths w, 2w, 4w, 8w), global average pool, Dense.

  Attributes:
    stage_sizes: Number of blocks in each of the four stages.
    block_cls: Residual block class (`BasicBlock` or `BottleneckBlock`).
    num_classes: Number of output logits.
    width: Channels of the stem and of the first stage.
    stem: 'cifar' (3x3 stride-1 convolution) or 'imagenet' (7x7 stride-2 convolution, then a
      3x3 stride-2 max-pool), for inputs of 224x224 or so.
    frozen_batch_stats: Normalise with the running averages and keep them fixed in training
      too, as when fine-tuning with the pretrained statistics.
    dtype, bn_axis_name, bn_momentum: The shared fields (see `layers`).
    bn_epsilon: BatchNorm's variance epsilon (PyTorch's 1e-5; Keras' ResNet50 uses 1.001e-5).
    conv_bias: Whether convolutions have biases (Keras' ResNet50 has them).
  """
  stage_sizes: Sequence[int]
  block_cls: Callable[..., nn.Module]
  num_classes: int
  width: int = 64
  stem: str = 'cifar'
  frozen_batch_stats: bool = False
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  conv_bias: bool = False

  def __post_init__(self):
    # Checked here so a bad config fails when the model is created, not deep inside tracing.
    layers.check_fields(self, sizes=('stage_sizes', 'width'), rates=('bn_momentum',),
                        positive=('bn_epsilon',))
    check_choice('config.model.stem', self.stem, STEMS)
    super().__post_init__()

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Class logits of normalised images, as every family computes them (see `layers`)."""
    conv = layers.conv(self, use_bias=self.conv_bias)
    norm = layers.batch_norm(self, train=train and not self.frozen_batch_stats,
                             epsilon=self.bn_epsilon)

    x = x.astype(self.dtype)
    if self.stem == 'cifar':
      x = conv(self.width, (3, 3), padding=layers.PAD_3X3, name='stem_conv')(x)
      x = nn.relu(norm(name='stem_bn')(x))
    else:  # 'imagenet'
      x = conv(self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name='stem_conv')(x)
      x = nn.relu(norm(name='stem_bn')(x))
      # Max-pooling pads with -inf, as PyTorch does.
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        # Every stage but the first halves the resolution in its first block.
        strides = 2 if stage > 0 and block == 0 else 1
        x = self.block_cls(features=self.width * 2**stage, strides=strides, conv=conv,
                           norm=norm, name=f'stage{stage + 1}_block{block}')(x)
    return layers.zero_head(self, jnp.mean(x, axis=(1, 2)))


# ResNet-10 (one block a stage): small and quick to compile, for tests and smoke runs.
ResNet10 = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock)
ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)
# Keras applications' ResNet50 (the original ResNet v1): strides on the first 1x1 convolution of
# each bottleneck, convolution biases, and its BatchNorm epsilon, so its `.h5` weights load exactly.
ResNet50Keras = functools.partial(
    ResNet, stage_sizes=(3, 4, 6, 3),
    block_cls=functools.partial(BottleneckBlock, stride_in_1x1=True), conv_bias=True,
    bn_epsilon=1.001e-5)

# Tiny variants for tests: one block a stage and 4 channels, each block as its full-size variants
# have it, so they compile in seconds on CPU.
TinyResNet = functools.partial(ResNet10, width=4)
TinyResNet50 = functools.partial(ResNet50, stage_sizes=(1, 1, 1, 1), width=4)
TinyResNet50Keras = functools.partial(ResNet50Keras, stage_sizes=(1, 1, 1, 1), width=4)
