"""VGG (Simonyan & Zisserman, 2015), with or without BatchNorm, CIFAR variant, in NHWC layout.

The convolution stacks are configurations A, B, D and E of the paper (VGG-11, -13, -16, -19):
five blocks of 3x3 convolutions (with bias), each followed by BatchNorm (as in torchvision's
`vgg*_bn`) or not (as in the paper, Keras' VGG16/VGG19 and torchvision's `vgg*`) and ReLU, and a
2x2 max-pool after every block. The three large Dense layers of the ImageNet model are replaced by
a single Dense layer on the mean of the last feature map (512 channels, 1x1 at 32x32 inputs), as
in the usual PyTorch CIFAR VGGs: VGG-16 with BatchNorm then has 14,728,266 parameters with 10
classes. The module names are Keras' (`block1_conv1` ... `block5_conv4`), so its VGG weights
load one-to-one (see `cifar_jax.pretrained.vgg`).
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cifar_jax.models import layers

# Channels of each block in units of `width`; the last two blocks both have 8 * width.
_BLOCK_MULTIPLIERS = (1, 2, 4, 8, 8)


class VGG(nn.Module):
  """Five blocks of 3x3 conv-BN-ReLU layers with max-pooling, global average pool, Dense.

  Attributes:
    block_sizes: Number of convolutions in each of the five blocks.
    num_classes: Number of output logits.
    width: Channels of the first block; the others have 2, 4, 8 and 8 times as many.
    batch_norm: BatchNorm after each convolution; False gives conv-ReLU layers, as Keras' VGG.
    dtype, bn_axis_name, bn_momentum: The shared fields (see `layers`).
  """
  block_sizes: Sequence[int]
  num_classes: int
  width: int = 64
  batch_norm: bool = True
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9

  def __post_init__(self):
    # Checked here so a bad config fails when the model is created, not deep inside tracing.
    layers.check_fields(self, sizes=('block_sizes', 'width'), rates=('bn_momentum',))
    super().__post_init__()

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Class logits of normalised images, as every family computes them (see `layers`)."""
    conv = layers.conv(self, kernel_size=(3, 3), padding=layers.PAD_3X3)
    norm = layers.batch_norm(self, train=train)

    x = x.astype(self.dtype)
    for block, (num_convs, multiplier) in enumerate(
        zip(self.block_sizes, _BLOCK_MULTIPLIERS, strict=True)):
      for layer in range(num_convs):
        x = conv(self.width * multiplier, name=f'block{block + 1}_conv{layer + 1}')(x)
        if self.batch_norm:
          x = norm(name=f'block{block + 1}_bn{layer + 1}')(x)
        x = nn.relu(x)
      # 'SAME' rounds odd sizes up (PyTorch's ceil_mode) instead of dropping the last row, so
      # inputs smaller than 32x32 still end at 1x1 rather than vanishing; sizes that are
      # multiples of 32 are unaffected, and pool as Keras' and torchvision's pretrained VGGs do.
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='SAME')
    # At 32x32 the features are already 1x1, so this is the usual flatten; the mean also keeps
    # the head's shape independent of the input size.
    return layers.zero_head(self, jnp.mean(x, axis=(1, 2)))


VGG11 = functools.partial(VGG, block_sizes=(1, 1, 2, 2, 2))
VGG13 = functools.partial(VGG, block_sizes=(2, 2, 2, 2, 2))
VGG16 = functools.partial(VGG, block_sizes=(2, 2, 3, 3, 3))
VGG19 = functools.partial(VGG, block_sizes=(2, 2, 4, 4, 4))

# Tiny variant for tests: one convolution a block and 4 channels, so it compiles in seconds on CPU.
TinyVGG = functools.partial(VGG, block_sizes=(1, 1, 1, 1, 1), width=4)
