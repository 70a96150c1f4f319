"""Pieces the model families share, and the fields they share.

Every family declares these fields itself, in its own order (its config fields follow that
order), and they mean the same in each:

  dtype: Compute dtype. Parameters and BatchNorm statistics are always float32.
  bn_axis_name: Named mesh axis over which BatchNorm averages batch statistics, so that a
    `shard_map`ped step over that axis matches a single-device step on the global batch.
    None normalises each device's examples on their own.
  bn_momentum: Decay of the BatchNorm running averages (0.9 equals PyTorch's momentum=0.1).

Every family's `__call__(x, *, train)` takes normalised images, float [B, H, W, C], and returns
float32 logits [B, num_classes]. With `train=True` it normalises with batch statistics and
updates the running averages (apply it with `mutable=['batch_stats']`) and applies dropout and
stochastic depth where the family has them (they need a 'dropout' rng); with `train=False` it
uses the running averages and keeps every unit.
"""
import functools
from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

# A module constructor with the shared settings already bound; blocks call it with a name.
ModuleDef = Callable[..., nn.Module]

# PyTorch pads a 3x3 convolution by one pixel on every side. Flax's 'SAME' pads only at the
# bottom/right for stride 2 on even sizes, which would shift the sampling grid.
PAD_3X3 = ((1, 1), (1, 1))


def conv(module: nn.Module, **kwargs) -> ModuleDef:
  """The convolution constructor of a family, computing in `module.dtype`.

  Kernels are He (kaiming) normal with fan_out, as torchvision initialises its ResNets and the
  EfficientNet reference its convolutions; parameters are float32. `kwargs` bind further
  `nn.Conv` arguments (`use_bias`, `padding`, ...).
  """
  return functools.partial(
      nn.Conv, kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
      dtype=module.dtype, param_dtype=jnp.float32, **kwargs)


def batch_norm(module: nn.Module, *, train: bool, epsilon: float = 1e-5) -> ModuleDef:
  """The BatchNorm constructor of a CNN family, bound from `module`'s fields.

  Parameters and running statistics stay float32 whatever the compute dtype;
  in training, batch statistics are averaged over `module.bn_axis_name`, so a
  step split across devices normalises with the global batch's statistics.
  """
  return functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=module.bn_momentum,
      epsilon=epsilon, dtype=module.dtype, param_dtype=jnp.float32,
      axis_name=module.bn_axis_name)


def zero_head(module: nn.Module, features):
  """float32 logits [B, module.num_classes] from a zero-initialised Dense layer named 'head'.

  A zero head makes every initial prediction uniform, so early training is not dominated by
  arbitrary confident logits; standard in big_vision and the ViT fine-tuning recipe, whose
  pretrained checkpoints are also fine-tuned from a freshly zeroed head.
  """
  logits = nn.Dense(module.num_classes, kernel_init=nn.initializers.zeros, dtype=module.dtype,
                    param_dtype=jnp.float32, name='head')(features)
  return logits.astype(jnp.float32)
