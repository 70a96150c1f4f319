"""Vision Transformer (Dosovitskiy et al., 2021) in NHWC layout.

Submodule and parameter names and shapes follow the original ViT checkpoints
(google-research/vision_transformer, e.g. `ViT-B_16.npz` and the AugReg releases), so their
flattened `.npz` keys map one-to-one onto this module's parameter paths:

  embedding/{kernel [p, p, 3, D], bias}
  cls [1, 1, D]                                  ('token' classifier only)
  Transformer/posembed_input/pos_embedding [1, T, D]
  Transformer/encoderblock_{i}/LayerNorm_0/{scale, bias}
  Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/{query, key, value}/
      {kernel [D, heads, D/heads], bias [heads, D/heads]}
  Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/out/
      {kernel [heads, D/heads, D], bias [D]}
  Transformer/encoderblock_{i}/LayerNorm_2/{scale, bias}
  Transformer/encoderblock_{i}/MlpBlock_3/{Dense_0, Dense_1}/{kernel, bias}
  Transformer/encoder_norm/{scale, bias}
  pre_logits/{kernel, bias}                      (only with `representation_size`)
  head/{kernel, bias}

T is the number of tokens: (H / p) * (W / p) patches plus the class token. The position
embedding is created for the input size seen at initialisation (65 tokens for 32x32 images with
4x4 patches, 197 for 224x224 with 16x16), and applying the model to another size is a shape
error, since using the checkpoints at another resolution needs the embedding resampled.
"""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cifar_jax.errors import UserError, check_choice
from cifar_jax.models import layers

CLASSIFIERS = ('token', 'gap')

# The original ViT initialisers: Xavier-uniform Dense kernels with near-zero biases.
_dense = functools.partial(nn.Dense, kernel_init=nn.initializers.xavier_uniform(),
                           bias_init=nn.initializers.normal(stddev=1e-6))


class MlpBlock(nn.Module):
  """Dense, GELU, dropout, Dense, dropout.

  Attributes:
    mlp_dim: Hidden width.
    dropout_rate: Dropout after each Dense layer, in train mode.
    dtype: Compute dtype; parameters are float32.
  """
  mlp_dim: int
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, x, *, train: bool):
    dense = functools.partial(_dense, dtype=self.dtype, param_dtype=jnp.float32)
    y = nn.gelu(dense(self.mlp_dim, name='Dense_0')(x))
    y = nn.Dropout(self.dropout_rate, name='dropout_0')(y, deterministic=not train)
    y = dense(x.shape[-1], name='Dense_1')(y)
    return nn.Dropout(self.dropout_rate, name='dropout_1')(y, deterministic=not train)


class EncoderBlock(nn.Module):
  """Pre-LayerNorm Transformer block: x + attention(LN(x)), then x + MLP(LN(x)).

  Attributes:
    num_heads: Attention heads; the hidden size must be a multiple of it.
    mlp_dim: Hidden width of the MLP.
    dropout_rate: Dropout on each residual branch's output (and inside the MLP), in train mode.
    attention_dropout_rate: Dropout on the attention weights, in train mode.
    drop_path_rate: Probability of skipping each residual branch for an example, in train mode.
    dtype: Compute dtype; parameters are float32.
  """
  num_heads: int
  mlp_dim: int
  dropout_rate: float
  attention_dropout_rate: float
  drop_path_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, x, *, train: bool):
    # Stochastic depth: one mask entry per example, broadcast over tokens and channels, so a
    # whole branch is dropped for that example (and the kept ones rescaled).
    drop_path = functools.partial(nn.Dropout, self.drop_path_rate, broadcast_dims=(1, 2))
    norm = functools.partial(nn.LayerNorm, dtype=self.dtype, param_dtype=jnp.float32)

    y = norm(name='LayerNorm_0')(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=nn.initializers.xavier_uniform(), broadcast_dropout=False,
        dropout_rate=self.attention_dropout_rate,
        # bfloat16 softmax over many tokens loses the small attention weights.
        force_fp32_for_softmax=True, name='MultiHeadDotProductAttention_1',
    )(y, deterministic=not train)
    y = nn.Dropout(self.dropout_rate, name='dropout')(y, deterministic=not train)
    x = x + drop_path(name='drop_path_1')(y, deterministic=not train)

    y = norm(name='LayerNorm_2')(x)
    y = MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, name='MlpBlock_3')(y, train=train)
    return x + drop_path(name='drop_path_3')(y, deterministic=not train)


class AddPositionEmbedding(nn.Module):
  """Adds a learned embedding [1, tokens, hidden] sized from the input at initialisation."""

  @nn.compact
  def __call__(self, x):
    embedding = self.param('pos_embedding', nn.initializers.normal(stddev=0.02),
                           (1, *x.shape[1:]), jnp.float32)
    return x + embedding.astype(x.dtype)


class Encoder(nn.Module):
  """Position embedding, the Transformer blocks and the final LayerNorm.

  Attributes:
    num_layers: Number of Transformer blocks.
    num_heads: Attention heads of each block.
    mlp_dim: Hidden width of each block's MLP.
    dropout_rate: Dropout after the position embedding and in every block, in train mode.
    attention_dropout_rate: Dropout on the attention weights, in train mode.
    stochastic_depth_rate: Drop-path rate of the last block; it rises linearly from 0 at the
      first block.
    dtype: Compute dtype; parameters are float32.
  """
  num_layers: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float
  attention_dropout_rate: float
  stochastic_depth_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = AddPositionEmbedding(name='posembed_input')(x)
    x = nn.Dropout(self.dropout_rate, name='dropout')(x, deterministic=not train)
    for i in range(self.num_layers):
      # Linear decay of the survival probability (Huang et al., 2016): the early blocks, whose
      # features every later block builds on, are dropped least.
      drop_path_rate = self.stochastic_depth_rate * i / max(self.num_layers - 1, 1)
      x = EncoderBlock(self.num_heads, self.mlp_dim, self.dropout_rate,
                       self.attention_dropout_rate, drop_path_rate, self.dtype,
                       name=f'encoderblock_{i}')(x, train=train)
    return nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name='encoder_norm')(x)


class VisionTransformer(nn.Module):
  """ViT: non-overlapping patches embedded linearly, a Transformer encoder, a linear head.

  Attributes:
    patch_size: Side of the square patches, in pixels; the image sides must be multiples of it.
    hidden_size: Width D of the token embeddings.
    num_layers: Number of Transformer blocks.
    num_heads: Attention heads; `hidden_size` must be a multiple of it.
    mlp_dim: Hidden width of each block's MLP.
    num_classes: Number of output logits.
    dropout_rate: Dropout after the position embedding, on each residual branch and inside the
      MLPs, in train mode.
    attention_dropout_rate: Dropout on the attention weights, in train mode.
    stochastic_depth_rate: Probability, in train mode, that the last block's residual branches
      are skipped for an example; it rises linearly from 0 at the first block. Like dropout, it
      draws from the 'dropout' rng.
    classifier: 'token' classifies from a learned class token prepended to the patches; 'gap'
      from the mean of the patch tokens (no class token).
    representation_size: Width of the tanh "pre-logits" layer before the head, as in the
      original ViT's pre-training; None omits it (its fine-tuning setting).
    dtype: Compute dtype. Parameters are always float32.
    bn_axis_name: Unused: the model has no BatchNorm. Accepted so every registered model is
      built the same way.
  """
  patch_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  num_classes: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_depth_rate: float = 0.0
  classifier: str = 'token'
  representation_size: int | None = None
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  def __post_init__(self):
    # Checked here so a bad config fails when the model is created, not deep inside tracing.
    sizes = ('patch_size', 'hidden_size', 'num_layers', 'num_heads', 'mlp_dim')
    layers.check_fields(self, sizes=sizes + (() if self.representation_size is None
                                             else ('representation_size',)),
                        rates=('dropout_rate', 'attention_dropout_rate', 'stochastic_depth_rate'))
    if self.hidden_size % self.num_heads:
      raise UserError(f'config.model.hidden_size={self.hidden_size} must be a multiple of '
                      f'config.model.num_heads={self.num_heads}.')
    check_choice('config.model.classifier', self.classifier, CLASSIFIERS)
    super().__post_init__()

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Class logits of normalised images whose sides are multiples of `patch_size`, as every
    family computes them (see `layers`)."""
    x = x.astype(self.dtype)
    p = self.patch_size
    x = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype,
                param_dtype=jnp.float32, conv_general_dilated=layers.patch_conv,
                name='embedding')(x)
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height * width, channels)
    if self.classifier == 'token':
      cls = self.param('cls', nn.initializers.zeros, (1, 1, channels), jnp.float32)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, channels)), x],
                          axis=1)

    x = Encoder(self.num_layers, self.num_heads, self.mlp_dim, self.dropout_rate,
                self.attention_dropout_rate, self.stochastic_depth_rate, self.dtype,
                name='Transformer')(x, train=train)
    x = x[:, 0] if self.classifier == 'token' else jnp.mean(x, axis=1)

    if self.representation_size is not None:
      x = nn.tanh(nn.Dense(self.representation_size, dtype=self.dtype, param_dtype=jnp.float32,
                           name='pre_logits')(x))
    return layers.zero_head(self, x)


# From scratch on 32x32 images: 4x4 patches give 64 patch tokens. Tiny and Small are DeiT's
# widths (Touvron et al., 2021).
ViTTinyP4 = functools.partial(VisionTransformer, patch_size=4, hidden_size=192, num_layers=12,
                              num_heads=3, mlp_dim=768)
ViTSmallP4 = functools.partial(VisionTransformer, patch_size=4, hidden_size=384, num_layers=12,
                               num_heads=6, mlp_dim=1536)
# The standard ViT definitions (Dosovitskiy et al., 2021, table 1), for 224x224 or 384x384 inputs.
ViTB16 = functools.partial(VisionTransformer, patch_size=16, hidden_size=768, num_layers=12,
                           num_heads=12, mlp_dim=3072)
ViTB32 = functools.partial(VisionTransformer, patch_size=32, hidden_size=768, num_layers=12,
                           num_heads=12, mlp_dim=3072)
ViTL16 = functools.partial(VisionTransformer, patch_size=16, hidden_size=1024, num_layers=24,
                           num_heads=16, mlp_dim=4096)


# Tiny variant for tests (much smaller than DeiT's Tiny above): two blocks of width 32 with two
# heads, so it compiles in seconds on CPU.
TinyViT = functools.partial(VisionTransformer, patch_size=4, hidden_size=32, num_layers=2,
                            num_heads=2, mlp_dim=64)
