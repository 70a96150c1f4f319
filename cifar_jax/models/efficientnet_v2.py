"""EfficientNetV2 (Tan & Le, 2021) in NHWC layout, adapted to 32x32 images like EfficientNet.

The network is `efficientnet.EfficientNet` with another stage table: the early stages are
Fused-MBConv blocks (one full k x k convolution in place of the 1x1 expansion and the depthwise
convolution, no squeeze-excitation), the later ones MBConv blocks with squeeze-excitation. The
B0 stage table and every parameter shape are those of Keras applications' `EfficientNetV2B0`
and timm's `tf_efficientnetv2_b0` (the `efficientnetv2-b0` block arguments of both, which
agree): 7,139,704 parameters with a 1000-way head and 5,871,514 with a 10-way one.

CIFAR adaptation, as `efficientnet`'s: the stem convolution has stride 1 instead of 2 and every
stage keeps its stride, so the six stages output maps of 32, 16, 8, 4, 4 and 2 pixels a side on
32x32 images (the reference's maps at 64x64), and the parameters are unchanged.
`stem_strides=2` is the reference network, for inputs resized to 224x224 or so. Padding and
BatchNorm epsilon default to the TensorFlow original's ('same', 1e-3), which both releases keep.
"""

import functools

from cifar_jax.models.efficientnet import EfficientNet, Stage


class EfficientNetV2(EfficientNet):
  """EfficientNetV2: `EfficientNet` on a stage table that starts with Fused-MBConv stages (its
  fields and defaults: Keras' EfficientNetV2 uses BatchNorm momentum 0.9 and epsilon 1e-3 too).
  A class of its own so that loaders and messages can tell the two families apart."""


def _fused(expand_ratio, features, repeats, strides):
  return Stage(expand_ratio, features, repeats, strides, kernel_size=3, fused=True)


B0_STAGES = (
    _fused(expand_ratio=1, features=16, repeats=1, strides=1),
    _fused(expand_ratio=4, features=32, repeats=2, strides=2),
    _fused(expand_ratio=4, features=48, repeats=2, strides=2),
    Stage(expand_ratio=4, features=96, repeats=3, strides=2, kernel_size=3),
    Stage(expand_ratio=6, features=112, repeats=5, strides=1, kernel_size=3),
    Stage(expand_ratio=6, features=192, repeats=8, strides=2, kernel_size=3),
)

# The MBConv stages' squeeze-excitation is a quarter of a block's input channels, as in B0.
EfficientNetV2B0 = functools.partial(EfficientNetV2, stages=B0_STAGES, stem_features=32,
                                     head_features=1280, se_ratio=0.25)


# Tiny variant for tests: a Fused-MBConv block without expansion, a stride-2 one with expansion
# and a residual one, then stride-2 and residual MBConv blocks with squeeze-excitation, at a few
# channels, so it compiles in seconds on CPU.
TINY_STAGES = (
    _fused(expand_ratio=1, features=8, repeats=1, strides=1),
    _fused(expand_ratio=4, features=16, repeats=2, strides=2),
    Stage(expand_ratio=4, features=24, repeats=2, strides=2, kernel_size=3),
)
TinyEfficientNetV2 = functools.partial(EfficientNetV2, stages=TINY_STAGES, stem_features=8,
                                       head_features=32, se_ratio=0.25)
