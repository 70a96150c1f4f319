"""CIFAR-style ResNets (He et al., 2016) in NHWC layout.

Unlike the ImageNet ResNets, the stem is a single 3x3 stride-1 convolution with no max-pool, so a
32x32 image keeps full resolution in the first stage. The layout and parameter shapes follow the
usual PyTorch CIFAR ResNets (ResNet-18 has 11,173,962 parameters with 10 classes), so weights map
one-to-one onto torchvision-style modules.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cifar_jax.models import layers

# Module constructors with the shared settings already bound; blocks call them with a name.
ModuleDef = Callable[..., nn.Module]

# He (kaiming) normal with fan_out, as torchvision initialises ResNet convolutions.
_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# PyTorch pads a 3x3 convolution by one pixel on every side. Flax's 'SAME' pads only at the
# bottom/right for stride 2 on even sizes, which would shift the sampling grid.
_PAD_3X3 = ((1, 1), (1, 1))


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with an identity or projection shortcut (ResNet-18/34).

  Attributes:
    features: Output channels of the block.
    strides: Stride of the first convolution (and of the projection shortcut).
    conv: Convolution constructor (no bias, initialiser and dtypes bound).
    norm: BatchNorm constructor (train/eval mode, momentum, axis name and dtypes bound).
  """
  features: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.features, (3, 3), (self.strides, self.strides), padding=_PAD_3X3,
                  name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.features, (3, 3), padding=_PAD_3X3, name='conv2')(y)
    y = self.norm(name='bn2')(y)
    if residual.shape != y.shape:
      residual = self.conv(self.features, (1, 1), (self.strides, self.strides), padding='VALID',
                           name='proj_conv')(residual)
      residual = self.norm(name='proj_bn')(residual)
    return nn.relu(y + residual)


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3, 1x1 expand (by 4) with an identity or projection shortcut (ResNet-50).

  The stride sits on the 3x3 convolution, as in torchvision.

  Attributes:
    features: Channels of the inner 3x3 convolution; the block outputs 4 * features.
    strides: Stride of the 3x3 convolution (and of the projection shortcut).
    conv: Convolution constructor (no bias, initialiser and dtypes bound).
    norm: BatchNorm constructor (train/eval mode, momentum, axis name and dtypes bound).
  """
  features: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef

  expansion = 4

  @nn.compact
  def __call__(self, x):
    residual = x
    out_features = self.features * self.expansion
    y = self.conv(self.features, (1, 1), padding='VALID', name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.features, (3, 3), (self.strides, self.strides), padding=_PAD_3X3,
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
  """CIFAR ResNet: 3x3 stem, four stages (widths w, 2w, 4w, 8w), global average pool, Dense.

  Attributes:
    stage_sizes: Number of blocks in each of the four stages.
    block_cls: Residual block class (`BasicBlock` or `BottleneckBlock`).
    num_classes: Number of output logits.
    width: Channels of the stem and of the first stage.
    dtype: Compute dtype. Parameters and BatchNorm statistics are always float32.
    bn_axis_name: Named mesh axis over which BatchNorm averages batch statistics, so that a
      `shard_map`ped step over that axis matches a single-device step on the global batch.
      None normalises each device's examples on their own.
    bn_momentum: Decay of the BatchNorm running averages (0.9 equals PyTorch's momentum=0.1).
  """
  stage_sizes: Sequence[int]
  block_cls: type[nn.Module]
  num_classes: int
  width: int = 64
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Computes class logits.

    Args:
      x: Normalised images, float [B, H, W, C].
      train: Whether to normalise with batch statistics and update the running averages
        (requires `mutable=['batch_stats']`) instead of using the running averages.

    Returns:
      float32 logits [B, num_classes].
    """
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=_conv_init, dtype=self.dtype,
                             param_dtype=jnp.float32)
    norm = layers.batch_norm(self, train=train)

    x = x.astype(self.dtype)
    x = conv(self.width, (3, 3), padding=_PAD_3X3, name='stem_conv')(x)
    x = nn.relu(norm(name='stem_bn')(x))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        # Every stage but the first halves the resolution in its first block.
        strides = 2 if stage > 0 and block == 0 else 1
        x = self.block_cls(features=self.width * 2**stage, strides=strides, conv=conv,
                           norm=norm, name=f'stage{stage + 1}_block{block}')(x)
    x = jnp.mean(x, axis=(1, 2))
    # A zero head makes every initial prediction uniform, so early training is not dominated by
    # arbitrary confident logits; standard in big_vision and the ViT fine-tuning recipe.
    x = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                 param_dtype=jnp.float32, name='head')(x)
    return x.astype(jnp.float32)


# ResNet-10 (one block a stage): small and quick to compile, for tests and smoke runs.
ResNet10 = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock)
ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)
