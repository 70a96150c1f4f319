"""EfficientNet (Tan & Le, 2019) in NHWC layout, adapted to 32x32 images.

The blocks, the B0 stage table and every parameter shape are those of the reference
implementations (the TensorFlow original, Keras and torchvision): EfficientNet-B0 has 5,288,548
parameters with a 1000-way head and 4,020,358 with a 10-way one.

CIFAR adaptation: the stem convolution has stride 1 instead of 2, and every stage keeps its
stride. At 224x224 the reference downsamples by 32 to a 7x7 map; a 32x32 image would already be
16x16 after the stem and 1x1 for the last two stages. Without the stem's stride the seven stages
output maps of 32, 16, 8, 4, 4, 2 and 2 pixels a side, the maps (and cost) of the reference at
64x64, and the parameters are unchanged, so ImageNet weights still fit. Dropping the first
stride-2 stage's stride as well was the alternative; it quadruples the cost of every later stage
for a 4x4 final map. `stem_strides=2` restores the reference network exactly, for inputs resized
to 224x224 or so (fine-tuning at the pretraining's resolution).

Padding and BatchNorm epsilon are fields, since the pretrained weights in circulation were
trained with two conventions (see `cifar_jax.pretrained.efficientnet`): TensorFlow's 'SAME'
padding, which for a stride-2 convolution on an even size pads one pixel more at the bottom and
right than at the top and left, with epsilon 1e-3 (the TensorFlow original, Keras applications,
timm's `tf_efficientnet_*`; the defaults), and PyTorch's symmetric padding of k // 2 pixels with
epsilon 1e-5 (timm's own `efficientnet_b0`). Loading weights into the other convention shifts
every stride-2 sampling grid by a pixel.
"""

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cifar_jax.errors import check_choice
from cifar_jax.models import layers

# `padding` choices: TensorFlow's 'SAME' (the extra pixel of a stride-2 convolution on an even
# size at the bottom/right), or k // 2 pixels on every side as PyTorch pads.
PADDINGS = ('same', 'symmetric')


def conv_padding(padding: str, kernel_size: int):
  """The flax `padding` of a k x k convolution under `padding` (one of `PADDINGS`)."""
  if padding == 'same':
    return 'SAME'  # lax pads as TensorFlow: before = total // 2, after = the rest.
  return ((kernel_size // 2, kernel_size // 2),) * 2


@dataclasses.dataclass(frozen=True)
class Stage:
  """One row of the stage table: `repeats` blocks with the same settings.

  Attributes:
    expand_ratio: Inner channels of a block as a multiple of its input channels.
    features: Output channels.
    repeats: Number of blocks.
    strides: Stride of the first block (the others have stride 1).
    kernel_size: Side of the depthwise (or, fused, the full) kernel.
    fused: Fused-MBConv blocks (EfficientNetV2's early stages, no squeeze-excitation) instead
      of MBConv.
  """
  expand_ratio: int
  features: int
  repeats: int
  strides: int
  kernel_size: int
  fused: bool = False


B0_STAGES = (
    Stage(expand_ratio=1, features=16, repeats=1, strides=1, kernel_size=3),
    Stage(expand_ratio=6, features=24, repeats=2, strides=2, kernel_size=3),
    Stage(expand_ratio=6, features=40, repeats=2, strides=2, kernel_size=5),
    Stage(expand_ratio=6, features=80, repeats=3, strides=2, kernel_size=3),
    Stage(expand_ratio=6, features=112, repeats=3, strides=1, kernel_size=5),
    Stage(expand_ratio=6, features=192, repeats=4, strides=2, kernel_size=5),
    Stage(expand_ratio=6, features=320, repeats=1, strides=1, kernel_size=3),
)


class SqueezeExcitation(nn.Module):
  """Rescales channels by gates computed from their global average (Hu et al., 2018).

  Attributes:
    squeeze_features: Width of the bottleneck.
    dtype: Compute dtype; parameters are float32.
  """
  squeeze_features: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    conv = layers.conv(self, kernel_size=(1, 1))
    gates = jnp.mean(x, axis=(1, 2), keepdims=True)
    gates = nn.swish(conv(self.squeeze_features, name='reduce')(gates))
    gates = nn.sigmoid(conv(x.shape[-1], name='expand')(gates))
    return x * gates


class _Block(nn.Module):
  """What both block kinds share: their fields and the shortcut.

  Attributes:
    features: Output channels.
    expand_ratio: Inner channels as a multiple of the input channels; 1 skips the expansion.
    kernel_size: Side of the depthwise (MBConv) or full (Fused-MBConv) kernel.
    strides: Stride of that convolution.
    padding: One of `PADDINGS`.
    drop_path_rate: Probability of skipping the residual branch for an example, in train mode.
    conv: Convolution constructor (no bias, initialiser and dtypes bound).
    norm: BatchNorm constructor (train/eval mode, momentum, axis name and dtypes bound).
    dtype: Compute dtype; parameters are float32.
  """
  features: int
  expand_ratio: int
  kernel_size: int
  strides: int
  padding: str
  drop_path_rate: float
  conv: layers.ModuleDef
  norm: layers.ModuleDef
  dtype: Any

  def shortcut(self, x, y, *, train: bool):
    """The residual branch `y` plus the block's input `x` when the block keeps the resolution
    and the channels (`y` alone otherwise), the branch skipped per example in train mode."""
    if self.strides != 1 or x.shape[-1] != self.features:
      return y
    # One mask entry per example, broadcast over pixels and channels.
    y = nn.Dropout(self.drop_path_rate, broadcast_dims=(1, 2, 3), name='drop_path')(
        y, deterministic=not train)
    return y + x


class MBConvBlock(_Block):
  """Inverted residual: 1x1 expansion, depthwise conv, squeeze-excitation, 1x1 projection, and
  the shortcut (`_Block`, whose attributes it has).

  Attributes:
    se_ratio: Squeeze-excitation bottleneck width as a fraction of the input channels.
  """
  se_ratio: float

  @nn.compact
  def __call__(self, x, *, train: bool):
    in_features = x.shape[-1]
    y = x
    if self.expand_ratio != 1:
      y = self.conv(in_features * self.expand_ratio, (1, 1), name='expand_conv')(y)
      y = nn.swish(self.norm(name='expand_bn')(y))
    k, s = self.kernel_size, self.strides
    y = self.conv(y.shape[-1], (k, k), (s, s), padding=conv_padding(self.padding, k),
                  feature_group_count=y.shape[-1], name='depthwise_conv')(y)
    y = nn.swish(self.norm(name='depthwise_bn')(y))
    y = SqueezeExcitation(max(1, int(in_features * self.se_ratio)), self.dtype, name='se')(y)
    y = self.conv(self.features, (1, 1), name='project_conv')(y)
    # No activation after the projection: the block's output is a linear bottleneck.
    return self.shortcut(x, self.norm(name='project_bn')(y), train=train)


class FusedMBConvBlock(_Block):
  """Fused-MBConv (EfficientNetV2): a k x k expansion convolution, then a 1x1 projection, and
  the shortcut (`_Block`, whose attributes it has); no squeeze-excitation.

  Without expansion (`expand_ratio=1`) the block is a single k x k convolution with BatchNorm
  and activation (named `project_*`, as in Keras).
  """

  @nn.compact
  def __call__(self, x, *, train: bool):
    k, s = self.kernel_size, self.strides
    full = functools.partial(self.conv, kernel_size=(k, k), strides=(s, s),
                             padding=conv_padding(self.padding, k))
    if self.expand_ratio != 1:
      y = full(x.shape[-1] * self.expand_ratio, name='expand_conv')(x)
      y = nn.swish(self.norm(name='expand_bn')(y))
      # A linear bottleneck, as in MBConv.
      y = self.norm(name='project_bn')(self.conv(self.features, (1, 1), name='project_conv')(y))
    else:
      y = nn.swish(self.norm(name='project_bn')(full(self.features, name='project_conv')(x)))
    return self.shortcut(x, y, train=train)


class EfficientNet(nn.Module):
  """EfficientNet: stem conv, MBConv stages, 1x1 head conv, global average pool, dropout, Dense.

  EfficientNetV2 is this network with Fused-MBConv stages first (`Stage.fused`).

  Attributes:
    stages: The stage table (`B0_STAGES`, or `efficientnet_v2.B0_STAGES`).
    stem_features: Channels of the stem convolution.
    head_features: Channels of the 1x1 convolution before the pool.
    num_classes: Number of output logits.
    dropout_rate: Dropout on the pooled features before the classifier, in train mode.
    drop_connect_rate: Stochastic depth rate; block i of n (counted over all stages) skips its
      residual branch with probability drop_connect_rate * i / n, in train mode. Like dropout,
      it draws from the 'dropout' rng.
    se_ratio: Squeeze-excitation bottleneck width as a fraction of a block's input channels
      (MBConv blocks; fused ones have none).
    stem_strides: Stride of the stem convolution: 1 for 32x32 inputs (the CIFAR adaptation), 2
      as in the reference, for inputs of 224x224 or so.
    padding: 'same' (TensorFlow's) or 'symmetric' (PyTorch's); see the module docstring.
    dtype, bn_axis_name, bn_momentum: The shared fields (see `layers`). The TensorFlow
      reference's BatchNorm momentum is 0.99; the default here is the other families' 0.9.
    bn_epsilon: BatchNorm's variance epsilon: the reference's 1e-3, or 1e-5 for timm's own
      PyTorch-trained weights.
  """
  stages: Sequence[Stage]
  stem_features: int
  head_features: int
  num_classes: int
  dropout_rate: float = 0.2
  drop_connect_rate: float = 0.2
  se_ratio: float = 0.25
  stem_strides: int = 1
  padding: str = 'same'
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-3

  def __post_init__(self):
    # Checked here so a bad config fails when the model is created, not deep inside tracing.
    layers.check_fields(self, sizes=('stem_features', 'head_features', 'stem_strides'),
                        positive=('se_ratio', 'bn_epsilon'),
                        rates=('dropout_rate', 'drop_connect_rate', 'bn_momentum'))
    check_choice('config.model.padding', self.padding, PADDINGS)
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
      block = (FusedMBConvBlock if stage.fused
               else functools.partial(MBConvBlock, se_ratio=self.se_ratio))
      for j in range(stage.repeats):
        x = block(
            features=stage.features, expand_ratio=stage.expand_ratio,
            kernel_size=stage.kernel_size, strides=stage.strides if j == 0 else 1,
            padding=self.padding,
            drop_path_rate=self.drop_connect_rate * block_index / num_blocks, conv=conv,
            norm=norm, dtype=self.dtype, name=f'stage{i + 1}_block{j}')(x, train=train)
        block_index += 1
    x = conv(self.head_features, (1, 1), name='head_conv')(x)
    x = nn.swish(norm(name='head_bn')(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, name='dropout')(x, deterministic=not train)
    return layers.zero_head(self, x)


EfficientNetB0 = functools.partial(EfficientNet, stages=B0_STAGES, stem_features=32,
                                   head_features=1280)


# Tiny variant for tests: a block without expansion, a stride-2 block with a 5x5 kernel and a
# residual block, at a few channels, so it compiles in seconds on CPU.
TINY_STAGES = (
    Stage(expand_ratio=1, features=8, repeats=1, strides=1, kernel_size=3),
    Stage(expand_ratio=6, features=16, repeats=2, strides=2, kernel_size=5),
)
TinyEfficientNet = functools.partial(EfficientNet, stages=TINY_STAGES, stem_features=8,
                                     head_features=32)
