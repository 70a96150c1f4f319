"""The airbench networks (Jordan, arXiv 2404.00498): small CNNs built to train CIFAR-10 fast.

A 2x2 convolution without padding whose kernel is computed from the data (patch whitening,
`init_from_data`) and frozen, then GELU; three groups, each a 3x3 convolution, 2x2 max-pooling,
BatchNorm and GELU followed by more convolution-BatchNorm-GELU layers; a 3x3 max-pool, a
bias-free linear layer and a fixed scale of the logits. The defaults are airbench94's (widths
64/256/256, two convolutions per group); airbench96 has 128/512/512, three per group and a
residual connection around the last two (`configs/airbench96_c10.py`).

As in the reference: convolutions are drawn as PyTorch draws them (uniform within
1/sqrt(fan_in)) and then set to the identity on their first input-channels-many filters;
BatchNorm has no scale (fixed at 1), eps 1e-12 and momentum 0.6 (PyTorch's 0.4), and computes in
float32 whatever the compute dtype. The recipe that trains these networks (frozen and
freeze-after parameters, per-group learning rates, lookahead, alternating flips, test-time
augmentation) is in `configs/airbench94_c10.py`, built from general config fields.
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cifar_jax.models import layers

# PyTorch's default initialisation of convolutions and linear layers: kaiming-uniform with
# a=sqrt(5), i.e. uniform within 1/sqrt(fan_in).
_torch_default = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


def _identity_on_inputs(key, shape, dtype=jnp.float32):
  """PyTorch's default draw, then the identity (dirac) on the first `in_channels` filters."""
  kernel = _torch_default(key, shape, dtype)
  kh, kw, cin, cout = shape
  n = min(cin, cout)
  dirac = jnp.zeros((kh, kw, cin, n), dtype).at[kh // 2, kw // 2].set(jnp.eye(cin, n, dtype=dtype))
  return kernel.at[..., :n].set(dirac)


class Airbench(nn.Module):
  """The airbench CNN.

  Attributes:
    num_classes: Number of output logits.
    widths: Channels of the three groups.
    convs_per_group: 3x3 convolutions per group (the first before the pooling); at least 1.
    residual: Add each group's input to the output of its convolutions after the first (from
      the first's BatchNorm-GELU output), as airbench96 does.
    logit_scale: The logits are the linear layer's outputs times this.
    whiten_examples: Training images the whitening kernel is computed from (`init_from_data`).
    whiten_eps: Added to each eigenvalue before the whitening divides by its square root.
    dtype: Compute dtype of the convolutions and the linear layer; BatchNorm computes in float32.
    bn_axis_name, bn_momentum: The shared fields (see `layers`).
  """
  num_classes: int
  widths: tuple = (64, 256, 256)
  convs_per_group: int = 2
  residual: bool = False
  logit_scale: float = 1 / 9
  whiten_examples: int = 5000
  whiten_eps: float = 5e-4
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  bn_momentum: float = 0.6

  def __post_init__(self):
    # Checked here so a bad config fails when the model is created, not deep inside tracing.
    layers.check_fields(self, sizes=('widths', 'convs_per_group', 'whiten_examples'),
                        positive=('logit_scale', 'whiten_eps'), rates=('bn_momentum',))
    super().__post_init__()

  # The whitening convolution: 2x2 patches of 3 channels, and their negatives.
  WHITEN_SIZE = 2

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Class logits of normalised images, as every family computes them (see `layers`)."""
    k = self.WHITEN_SIZE
    whiten_width = 2 * x.shape[-1] * k * k
    x = nn.Conv(whiten_width, (k, k), padding='VALID', kernel_init=_torch_default,
                dtype=self.dtype, param_dtype=jnp.float32,
                conv_general_dilated=layers.patch_conv, name='whiten')(x.astype(self.dtype))
    x = layers.gelu_exact(x)
    conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding='SAME', use_bias=False,
                             kernel_init=_identity_on_inputs, dtype=self.dtype,
                             param_dtype=jnp.float32, conv_general_dilated=layers.patch_conv)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=1e-12, use_scale=False,
                             dtype=jnp.float32, param_dtype=jnp.float32,
                             axis_name=self.bn_axis_name)

    def conv_norm_gelu(x, features, index, group, pool=False):
      x = conv(features, name=f'group{group}_conv{index}')(x)
      if pool:
        x = layers.max_pool(x, 2)
      x = norm(name=f'group{group}_norm{index}')(x)
      return layers.gelu_exact(x).astype(self.dtype)

    for group, features in enumerate(self.widths, start=1):
      x = conv_norm_gelu(x, features, 1, group, pool=True)
      shortcut = x
      for index in range(2, self.convs_per_group + 1):
        x = conv_norm_gelu(x, features, index, group)
      if self.residual:
        x = x + shortcut
    x = layers.max_pool(x, 3)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(self.num_classes, use_bias=False, kernel_init=_torch_default, dtype=self.dtype,
                 param_dtype=jnp.float32, name='head')(x)
    return x.astype(jnp.float32) * self.logit_scale

  @property
  def init_examples(self) -> int:
    """How many training images `init_from_data` takes (see `training.setup`)."""
    return self.whiten_examples

  def init_from_data(self, params, images):
    """`params` with the whitening kernel computed from normalised training images.

    The uncentred covariance of every 2x2 patch of `images` (float [N, H, W, 3]) has
    eigenvectors v_i and eigenvalues l_i; the kernel's filters are v_i / sqrt(l_i + whiten_eps)
    and their negatives, so the convolution maps patches to (nearly) uncorrelated unit-variance
    channels, and GELU sees both signs of each.
    """
    eigenvalues, eigenvectors = patch_eigenbasis(images, self.WHITEN_SIZE)
    filters = eigenvectors / jnp.sqrt(eigenvalues + self.whiten_eps)  # [k*k*C, k*k*C], columns.
    kernel = jnp.concatenate([filters, -filters], axis=1)
    kernel = kernel.reshape(self.WHITEN_SIZE, self.WHITEN_SIZE, images.shape[-1], -1)
    return {**params, 'whiten': {**params['whiten'], 'kernel': kernel.astype(jnp.float32)}}


def patch_eigenbasis(images, size: int):
  """Eigenvalues (descending) and eigenvectors (columns) of the uncentred covariance of all
  `size` x `size` patches of float [N, H, W, C] images, patches flattened as (dy, dx, c)."""
  n, h, w, c = images.shape
  images = images.astype(jnp.float32)
  patches = jnp.stack([images[:, dy:h - size + 1 + dy, dx:w - size + 1 + dx]
                       for dy in range(size) for dx in range(size)], axis=-2)
  patches = patches.reshape(-1, size * size * c)
  covariance = jnp.einsum('ni,nj->ij', patches, patches,
                          precision=jax.lax.Precision.HIGHEST) / patches.shape[0]
  eigenvalues, eigenvectors = jnp.linalg.eigh(covariance)
  return eigenvalues[::-1], eigenvectors[:, ::-1]


# Tiny variant for tests: the same layers at 8/16/16 channels.
TinyAirbench = functools.partial(Airbench, widths=(8, 16, 16), whiten_examples=64)
