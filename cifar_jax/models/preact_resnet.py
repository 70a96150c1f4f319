"""CIFAR pre-activation ResNets ("Identity Mappings in Deep Residual Networks") in NHWC layout.

Each block normalises and activates its input before each convolution (BN-ReLU-conv), leaving the
residual path a pure sum of block outputs. The stem is a bare 3x3 convolution (the first block
normalises its output), and a final BN-ReLU normalises the sum before pooling, as in the paper.

PreActResNet-18 has 11,172,170 parameters with 10 classes. The widely used PyTorch CIFAR version
has 11,171,146: it leaves out the final BN-ReLU (1,024 parameters), so its head sees the
unnormalised residual sum.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cifar_jax.models import layers


class PreActBlock(nn.Module):
  """BN-ReLU-conv3x3 twice, added to an identity or projection shortcut.

  When the shape changes, the 1x1 projection reads the normalised and activated input, like the
  first convolution, rather than the raw residual sum.

  Attributes:
    features: Output channels of the block.
    strides: Stride of the first convolution (and of the projection shortcut).
    conv: Convolution constructor (no bias, initialiser and dtypes bound).
    norm: BatchNorm constructor (train/eval mode, momentum, axis name and dtypes bound).
    dropout: Dropout constructor (rate and train/eval mode bound) applied between the two
      convolutions, as in Wide ResNets; None for no dropout.
  """
  features: int
  strides: int
  conv: layers.ModuleDef
  norm: layers.ModuleDef
  dropout: layers.ModuleDef | None = None

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm(name='bn1')(x))
    if x.shape[-1] != self.features or self.strides != 1:
      shortcut = self.conv(self.features, (1, 1), (self.strides, self.strides), padding='VALID',
                           name='proj_conv')(y)
    else:
      shortcut = x
    y = self.conv(self.features, (3, 3), (self.strides, self.strides), padding=layers.PAD_3X3,
                  name='conv1')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    if self.dropout is not None:
      y = self.dropout()(y)
    y = self.conv(self.features, (3, 3), padding=layers.PAD_3X3, name='conv2')(y)
    return y + shortcut


class PreActResNet(nn.Module):
  """Pre-activation ResNet: 3x3 stem, four stages (widths w, 2w, 4w, 8w), BN-ReLU, pool, Dense.

  Attributes:
    stage_sizes: Number of blocks in each of the four stages.
    num_classes: Number of output logits.
    width: Channels of the stem and of the first stage.
    dtype, bn_axis_name, bn_momentum: The shared fields (see `layers`).
  """
  stage_sizes: Sequence[int]
  num_classes: int
  width: int = 64
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9

  def __post_init__(self):
    # Checked here so a bad config fails when the model is created, not deep inside tracing.
    layers.check_fields(self, sizes=('stage_sizes', 'width'), rates=('bn_momentum',))
    super().__post_init__()

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Class logits of normalised images, as every family computes them (see `layers`)."""
    conv = layers.conv(self, use_bias=False)
    norm = layers.batch_norm(self, train=train)

    x = x.astype(self.dtype)
    x = conv(self.width, (3, 3), padding=layers.PAD_3X3, name='stem_conv')(x)
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        # Every stage but the first halves the resolution in its first block.
        strides = 2 if stage > 0 and block == 0 else 1
        x = PreActBlock(features=self.width * 2**stage, strides=strides, conv=conv, norm=norm,
                        name=f'stage{stage + 1}_block{block}')(x)
    x = nn.relu(norm(name='final_bn')(x))
    return layers.zero_head(self, jnp.mean(x, axis=(1, 2)))


PreActResNet18 = functools.partial(PreActResNet, stage_sizes=(2, 2, 2, 2))

# Tiny variant for tests: one block a stage and 4 channels, so it compiles in seconds on CPU.
TinyPreActResNet = functools.partial(PreActResNet, stage_sizes=(1, 1, 1, 1), width=4)
