"""An Xception-style network (Chollet, 2017) for 32x32 images, in NHWC layout.

The structure is Xception's: an entry flow of downsampling residual blocks, a middle flow of
identical residual blocks, an exit flow, global average pooling and a linear classifier, all
built from depthwise-separable convolutions (a 3x3 depthwise convolution followed by a 1x1
pointwise one) with BatchNorm and ReLU. The sizes are scaled to CIFAR:

- The stem is one 3x3 stride-1 convolution instead of two convolutions that halve a 299x299
  image, and the first entry block keeps the 32x32 resolution, so the image is downsampled by 8
  (to 4x4) rather than 32, as in CIFAR ResNets.
- Channels are multiples of `width`: stem w; entry blocks 2w, 4w, 8w; middle flow 8w; exit block
  12w; final separable convolutions 16w and 24w (Xception: 32, then 128, 256, 728, 728, 1024,
  1536, 2048). The default w = 32 gives 2.7M parameters with 10 classes, against Xception's 21M.
"""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cifar_jax.models import layers


class SeparableConv(nn.Module):
  """3x3 depthwise convolution (one filter per channel), then a 1x1 pointwise convolution.

  As in Xception, there is no normalisation or activation between the two.

  Attributes:
    features: Output channels.
    conv: Convolution constructor (no bias, initialiser and dtypes bound).
  """
  features: int
  conv: layers.ModuleDef

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    x = self.conv(channels, (3, 3), padding=layers.PAD_3X3, feature_group_count=channels,
                  name='depthwise')(x)
    return self.conv(self.features, (1, 1), padding='VALID', name='pointwise')(x)


class DownsamplingBlock(nn.Module):
  """Entry/exit flow block: [ReLU,] sep-conv, BN, ReLU, sep-conv, BN, max-pool; plus a shortcut.

  The shortcut is a 1x1 convolution with the block's stride and BatchNorm, taken before the
  leading ReLU as in Xception.

  Attributes:
    features: Channels of the two separable convolutions; the second one's are the output's.
    strides: Stride of the 3x3 max-pool and of the shortcut; 1 omits the pool.
    conv: Convolution constructor (no bias, initialiser and dtypes bound).
    norm: BatchNorm constructor (train/eval mode, momentum, axis name and dtypes bound).
    pre_activation: Whether the branch starts with a ReLU; the first block follows the stem's.
    inner_features: Channels of the first separable convolution; None means `features`.
  """
  features: int
  strides: int
  conv: layers.ModuleDef
  norm: layers.ModuleDef
  pre_activation: bool = True
  inner_features: int | None = None

  @nn.compact
  def __call__(self, x):
    shortcut = self.conv(self.features, (1, 1), (self.strides, self.strides), padding='VALID',
                         name='proj_conv')(x)
    shortcut = self.norm(name='proj_bn')(shortcut)
    y = nn.relu(x) if self.pre_activation else x
    y = SeparableConv(self.inner_features or self.features, self.conv, name='sepconv1')(y)
    y = nn.relu(self.norm(name='bn1')(y))
    y = SeparableConv(self.features, self.conv, name='sepconv2')(y)
    y = self.norm(name='bn2')(y)
    if self.strides != 1:
      # Each 3x3 window is centred on a kept pixel, the one the 1x1 stride-2 shortcut samples;
      # 'SAME' would pad only at the bottom/right and centre the windows one pixel off.
      y = nn.max_pool(y, (3, 3), (self.strides, self.strides), padding=layers.PAD_3X3)
    return y + shortcut


class MiddleBlock(nn.Module):
  """Middle flow block: three times [ReLU, sep-conv, BN], plus the identity.

  Attributes:
    conv: Convolution constructor (no bias, initialiser and dtypes bound).
    norm: BatchNorm constructor (train/eval mode, momentum, axis name and dtypes bound).
  """
  conv: layers.ModuleDef
  norm: layers.ModuleDef

  @nn.compact
  def __call__(self, x):
    y = x
    for i in range(1, 4):
      y = SeparableConv(x.shape[-1], self.conv, name=f'sepconv{i}')(nn.relu(y))
      y = self.norm(name=f'bn{i}')(y)
    return y + x


class Xception(nn.Module):
  """Xception-style CIFAR network: stem, entry flow, middle flow, exit flow, pool, dropout, Dense.

  Attributes:
    num_classes: Number of output logits.
    width: Channels of the stem; every other width is a multiple of it (see the module doc).
    middle_blocks: Number of middle flow blocks (Xception has 8).
    dropout_rate: Dropout on the pooled features before the classifier, in train mode.
    dtype, bn_axis_name, bn_momentum: The shared fields (see `layers`).
  """
  num_classes: int
  width: int = 32
  middle_blocks: int = 8
  dropout_rate: float = 0.2
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9

  def __post_init__(self):
    # Checked here so a bad config fails when the model is created, not deep inside tracing.
    layers.check_fields(self, sizes=('width',), counts=('middle_blocks',),
                        rates=('dropout_rate', 'bn_momentum'))
    super().__post_init__()

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Class logits of normalised images, as every family computes them (see `layers`)."""
    conv = layers.conv(self, use_bias=False)
    norm = layers.batch_norm(self, train=train)
    block = functools.partial(DownsamplingBlock, conv=conv, norm=norm)
    w = self.width

    x = x.astype(self.dtype)
    x = conv(w, (3, 3), padding=layers.PAD_3X3, name='stem_conv')(x)
    x = nn.relu(norm(name='stem_bn')(x))

    x = block(2 * w, strides=1, pre_activation=False, name='entry_block1')(x)
    x = block(4 * w, strides=2, name='entry_block2')(x)
    x = block(8 * w, strides=2, name='entry_block3')(x)
    for i in range(self.middle_blocks):
      x = MiddleBlock(conv, norm, name=f'middle_block{i + 1}')(x)
    x = block(12 * w, strides=2, inner_features=8 * w, name='exit_block')(x)
    x = nn.relu(norm(name='exit_bn1')(SeparableConv(16 * w, conv, name='exit_sepconv1')(x)))
    x = nn.relu(norm(name='exit_bn2')(SeparableConv(24 * w, conv, name='exit_sepconv2')(x)))

    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, name='dropout')(x, deterministic=not train)
    return layers.zero_head(self, x)


# Tiny variant for tests: 4 channels in the stem and one middle flow block, so it compiles in
# seconds on CPU.
TinyXception = functools.partial(Xception, width=4, middle_blocks=1)
