"""EfficientNetV2 (Tan & Le, 2021) in NHWC layout, adapted to 32x32 images like EfficientNet.

The early stages are Fused-MBConv blocks (one full k x k convolution in place of the 1x1
expansion and the depthwise convolution, no squeeze-excitation), the later ones the MBConv blocks
of `efficientnet` with squeeze-excitation. The B0 stage table and every parameter shape are those
of Keras applications' `EfficientNetV2B0` and timm's `tf_efficientnetv2_b0` (the
`efficientnetv2-b0` block arguments of both, which agree): 7,139,704 parameters with a 1000-way
head and 5,871,514 with a 10-way one.

CIFAR adaptation, as `efficientnet`'s: the stem convolution has stride 1 instead of 2 and every
stage keeps its stride, so the six stages output maps of 32, 16, 8, 4, 4 and 2 pixels a side on
32x32 images (the reference's maps at 64x64), and the parameters are unchanged.
`stem_strides=2` is the reference network, for inputs resized to 224x224 or so. Padding and
BatchNorm epsilon default to the TensorFlow original's ('same', 1e-3), which both releases keep.
"""

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cifar_jax.errors import check_choice
from cifar_jax.models import layers
from cifar_jax.models.efficientnet import (
    PADDINGS,
    MBConvBlock,
    SqueezeExcitation,
    conv_padding,
)

BLOCKS = ('fused', 'mbconv')


@dataclasses.dataclass(frozen=True)
class Stage:
  """One row of the stage table: `repeats` blocks of one kind with the same settings.

  Attributes:
    block: 'fused' (Fused-MBConv) or 'mbconv'.
    expand_ratio: Inner channels of a block as a multiple of its input channels.
    features: Output channels.
    repeats: Number of blocks.
    strides: Stride of the first block (the others have stride 1).
    kernel_size: Side of the k x k (or depthwise) kernel.
    se_ratio: Squeeze-excitation bottleneck width as a fraction of a block's input channels;
      0 is none.
  """
  block: str
  expand_ratio: int
  features: int
  repeats: int
  strides: int
  kernel_size: int
  se_ratio: float


B0_STAGES = (
    Stage('fused', expand_ratio=1, features=16, repeats=1, strides=1, kernel_size=3, se_ratio=0),
    Stage('fused', expand_ratio=4, features=32, repeats=2, strides=2, kernel_size=3, se_ratio=0),
    Stage('fused', expand_ratio=4, features=48, repeats=2, strides=2, kernel_size=3, se_ratio=0),
    Stage('mbconv', expand_ratio=4, features=96, repeats=3, strides=2, kernel_size=3,
          se_ratio=0.25),
    Stage('mbconv', expand_ratio=6, features=112, repeats=5, strides=1, kernel_size=3,
          se_ratio=0.25),
    Stage('mbconv', expand_ratio=6, features=192, repeats=8, strides=2, kernel_size=3,
          se_ratio=0.25),
)


class FusedMBConvBlock(nn.Module):
  """Fused-MBConv: a k x k expansion convolution, then a 1x1 projection.

  Without expansion (`expand_ratio=1`) the block is a single k x k convolution with BatchNorm
  and activation (named `project_*`, as in Keras). The shortcut (with stochastic depth on the
  residual branch) exists only when the block keeps the resolution and the channels.

  Attributes:
    features: Output channels.
    expand_ratio: Inner channels as a multiple of the input channels; 1 skips the expansion.
    kernel_size: Side of the k x k kernel.
    strides: Stride of the k x k convolution.
    se_ratio: Squeeze-excitation width as a fraction of the input channels; 0 is none.
    padding: One of `efficientnet.PADDINGS`.
    drop_path_rate: Probability of skipping the residual branch for an example, in train mode.
    conv: Convolution constructor (no bias, initialiser and dtypes bound).
    norm: BatchNorm constructor (train/eval mode, momentum, axis name and dtypes bound).
    dtype: Compute dtype; parameters are float32.
  """
  features: int
  expand_ratio: int
  kernel_size: int
  strides: int
  se_ratio: float
  padding: str
  drop_path_rate: float
  conv: layers.ModuleDef
  norm: layers.ModuleDef
  dtype: Any

  @nn.compact
  def __call__(self, x, *, train: bool):
    in_features = x.shape[-1]
    k, s = self.kernel_size, self.strides
    full = functools.partial(self.conv, kernel_size=(k, k), strides=(s, s),
                             padding=conv_padding(self.padding, k))
    y = x
    if self.expand_ratio != 1:
      y = full(in_features * self.expand_ratio, name='expand_conv')(y)
      y = nn.swish(self.norm(name='expand_bn')(y))
    if self.se_ratio > 0:
      y = SqueezeExcitation(max(1, int(in_features * self.se_ratio)), self.dtype, name='se')(y)
    if self.expand_ratio != 1:
      # A linear bottleneck, as in MBConv.
      y = self.norm(name='project_bn')(self.conv(self.features, (1, 1), name='project_conv')(y))
    else:
      y = nn.swish(self.norm(name='project_bn')(full(self.features, name='project_conv')(y)))
    if s == 1 and in_features == self.features:
      y = nn.Dropout(self.drop_path_rate, broadcast_dims=(1, 2, 3), name='drop_path')(
          y, deterministic=not train)
      y = y + x
    return y


class EfficientNetV2(nn.Module):
  """EfficientNetV2: stem conv, Fused-MBConv and MBConv stages, 1x1 head conv, average pool,
  dropout, Dense.

  Attributes:
    stages: The stage table (`B0_STAGES`).
    stem_features: Channels of the stem convolution.
    head_features: Channels of the 1x1 convolution before the pool.
    num_classes: Number of output logits.
    dropout_rate: Dropout on the pooled features before the classifier, in train mode.
    drop_connect_rate: Stochastic depth rate; block i of n (counted over all stages) skips its
      residual branch with probability drop_connect_rate * i / n, in train mode.
    stem_strides: Stride of the stem convolution: 1 for 32x32 inputs, 2 as in the reference.
    padding: 'same' (TensorFlow's) or 'symmetric' (PyTorch's); see `efficientnet`.
    dtype, bn_axis_name, bn_momentum: The shared fields (see `layers`); Keras' EfficientNetV2
      uses momentum 0.9 too.
    bn_epsilon: BatchNorm's variance epsilon (the reference's 1e-3).
  """
  stages: Sequence[Stage]
  stem_features: int
  head_features: int
  num_classes: int
  dropout_rate: float = 0.2
  drop_connect_rate: float = 0.2
  stem_strides: int = 1
  padding: str = 'same'
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-3

  def __post_init__(self):
    # Checked here so a bad config fails when the model is created, not deep inside tracing.
    layers.check_fields(self, sizes=('stem_features', 'head_features', 'stem_strides'),
                        positive=('bn_epsilon',),
                        rates=('dropout_rate', 'drop_connect_rate', 'bn_momentum'))
    check_choice('config.model.padding', self.padding, PADDINGS)
    for stage in self.stages:
      check_choice('Stage.block', stage.block, BLOCKS)
    super().__post_init__()

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Class logits of normalised images, as every family computes them (see `layers`)."""
    # 1x1 convolutions pad nothing under either padding; the others name theirs.
    conv = layers.conv(self, use_bias=False, padding='VALID')
    norm = layers.batch_norm(self, train=train, epsilon=self.bn_epsilon)

    x = x.astype(self.dtype)
    s = self.stem_strides
    x = conv(self.stem_features, (3, 3), (s, s), padding=conv_padding(self.padding, 3),
             name='stem_conv')(x)
    x = nn.swish(norm(name='stem_bn')(x))
    num_blocks = sum(stage.repeats for stage in self.stages)
    block_index = 0
    for i, stage in enumerate(self.stages):
      block_cls = FusedMBConvBlock if stage.block == 'fused' else MBConvBlock
      for j in range(stage.repeats):
        x = block_cls(
            features=stage.features, expand_ratio=stage.expand_ratio,
            kernel_size=stage.kernel_size, strides=stage.strides if j == 0 else 1,
            se_ratio=stage.se_ratio, padding=self.padding,
            drop_path_rate=self.drop_connect_rate * block_index / num_blocks, conv=conv,
            norm=norm, dtype=self.dtype, name=f'stage{i + 1}_block{j}')(x, train=train)
        block_index += 1
    x = conv(self.head_features, (1, 1), name='head_conv')(x)
    x = nn.swish(norm(name='head_bn')(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, name='dropout')(x, deterministic=not train)
    return layers.zero_head(self, x)


EfficientNetV2B0 = functools.partial(EfficientNetV2, stages=B0_STAGES, stem_features=32,
                                     head_features=1280)


# Tiny variant for tests: a Fused-MBConv block without expansion, a stride-2 one with expansion
# and a residual one, then stride-2 and residual MBConv blocks with squeeze-excitation, at a few
# channels, so it compiles in seconds on CPU.
TINY_STAGES = (
    Stage('fused', expand_ratio=1, features=8, repeats=1, strides=1, kernel_size=3, se_ratio=0),
    Stage('fused', expand_ratio=4, features=16, repeats=2, strides=2, kernel_size=3, se_ratio=0),
    Stage('mbconv', expand_ratio=4, features=24, repeats=2, strides=2, kernel_size=3,
          se_ratio=0.25),
)
TinyEfficientNetV2 = functools.partial(EfficientNetV2, stages=TINY_STAGES, stem_features=8,
                                       head_features=32)
