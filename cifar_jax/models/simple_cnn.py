"""A small VGG-style CNN: the baseline of the well-known Keras CIFAR-10 tutorial, in NHWC layout.

Two blocks of two 3x3 'same' convolutions (32 then 64 filters), each followed by 2x2 max-pooling
and dropout that grows with depth (0.2, 0.3); then a 128-unit Dense layer with dropout 0.5 and the
classifier. As in the tutorial, BatchNorm follows each ReLU, and the convolutions and the hidden
Dense layer have biases and He-uniform initialisation. With 10 classes and 32x32 images the model
has 591,914 parameters.
"""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cifar_jax.models import layers

# Dropout rate after each block, then before the classifier: more regularisation where the layers
# are wider and closer to the output.
_BLOCK_DROPOUT = (0.2, 0.3)
_DENSE_DROPOUT = 0.5
_DENSE_FEATURES = 128


class SimpleCNN(nn.Module):
  """Two VGG-style blocks (widths w, 2w), a hidden Dense layer and a classifier.

  Attributes:
    num_classes: Number of output logits.
    width: Filters of the first block's convolutions; the second block has twice as many.
    dropout: Whether to apply the dropout layers in train mode (train mode then needs a
      'dropout' PRNG stream). Eval mode never drops.
    dtype, bn_axis_name, bn_momentum: The shared fields (see `layers`).
  """
  num_classes: int
  width: int = 32
  dropout: bool = True
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9

  def __post_init__(self):
    # Checked here so a bad config fails when the model is created, not deep inside tracing.
    layers.check_fields(self, sizes=('width',), rates=('bn_momentum',))
    super().__post_init__()

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Class logits of normalised images, as every family computes them (see `layers`)."""
    conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding=layers.PAD_3X3,
                             kernel_init=nn.initializers.he_uniform(), dtype=self.dtype,
                             param_dtype=jnp.float32, conv_general_dilated=layers.patch_conv)
    norm = layers.batch_norm(self, train=train)
    deterministic = not (train and self.dropout)

    x = x.astype(self.dtype)
    for block, rate in enumerate(_BLOCK_DROPOUT):
      features = self.width * 2**block
      for layer in range(2):
        x = conv(features, name=f'block{block + 1}_conv{layer + 1}')(x)
        # The tutorial normalises after the activation, not before it.
        x = norm(name=f'block{block + 1}_bn{layer + 1}')(nn.relu(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = nn.Dropout(rate, deterministic=deterministic)(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(_DENSE_FEATURES, kernel_init=nn.initializers.he_uniform(), dtype=self.dtype,
                 param_dtype=jnp.float32, name='dense')(x)
    x = norm(name='dense_bn')(nn.relu(x))
    x = nn.Dropout(_DENSE_DROPOUT, deterministic=deterministic)(x)
    return layers.zero_head(self, x)


# Tiny variant for tests: 4 and 8 filters, so it compiles in seconds on CPU.
TinySimpleCNN = functools.partial(SimpleCNN, width=4)
