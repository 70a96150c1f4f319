"""Wide ResNets (Zagoruyko & Komodakis, 2016) for CIFAR, in NHWC layout.

WRN-d-k has a 3x3 stem with 16 channels and three stages of (d - 4) / 6 pre-activation basic
blocks with 16k, 32k and 64k channels, the last two starting at stride 2; a final BN-ReLU, global
average pool and Dense give the logits. Dropout, when on, sits between the two convolutions of
each block. WRN-28-10 has 36,479,194 parameters with 10 classes.
"""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cifar_jax.errors import UserError
from cifar_jax.models import layers
from cifar_jax.models.preact_resnet import PreActBlock


class WideResNet(nn.Module):
  """WRN-depth-widen_factor: 3x3 stem, three stages of widened pre-activation blocks, Dense.

  Attributes:
    num_classes: Number of output logits.
    depth: Total layer count d; (d - 4) must be a multiple of 6.
    widen_factor: k, the factor widening every stage relative to `width`.
    dropout_rate: Share of activations dropped between the two convolutions of each block in
      train mode (train mode then needs a 'dropout' PRNG stream); 0 is off.
    width: Channels of the stem; the stages have k, 2k and 4k times as many (16 in the paper).
    dtype, bn_axis_name, bn_momentum: The shared fields (see `layers`).
  """
  num_classes: int
  depth: int = 28
  widen_factor: int = 10
  dropout_rate: float = 0.0
  width: int = 16
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9

  def __post_init__(self):
    # Checked here so a bad config fails when the model is created, not deep inside tracing.
    if not layers.is_int(self.depth) or self.depth < 10 or (self.depth - 4) % 6:
      raise UserError('config.model.depth must be 6n + 4 for n >= 1 (10, 16, 22, 28, 40, ...), '
                      f'got {self.depth!r}.')
    layers.check_fields(self, sizes=('widen_factor', 'width'),
                        rates=('dropout_rate', 'bn_momentum'))
    super().__post_init__()

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Class logits of normalised images, as every family computes them (see `layers`)."""
    conv = layers.conv(self, use_bias=False)
    norm = layers.batch_norm(self, train=train)
    dropout = functools.partial(nn.Dropout, rate=self.dropout_rate, deterministic=not train)
    blocks_per_stage = (self.depth - 4) // 6

    x = x.astype(self.dtype)
    x = conv(self.width, (3, 3), padding=layers.PAD_3X3, name='stem_conv')(x)
    for stage in range(3):
      for block in range(blocks_per_stage):
        strides = 2 if stage > 0 and block == 0 else 1
        x = PreActBlock(features=self.width * self.widen_factor * 2**stage, strides=strides,
                        conv=conv, norm=norm, dropout=dropout,
                        name=f'stage{stage + 1}_block{block}')(x)
    x = nn.relu(norm(name='final_bn')(x))
    return layers.zero_head(self, jnp.mean(x, axis=(1, 2)))


WRN16_8 = functools.partial(WideResNet, depth=16, widen_factor=8)
WRN28_10 = functools.partial(WideResNet, depth=28, widen_factor=10)

# Tiny variant for tests: WRN-10-2 from 4 channels (stages of 8, 16 and 32), so it compiles in
# seconds on CPU.
TinyWideResNet = functools.partial(WideResNet, depth=10, widen_factor=2, width=4)
