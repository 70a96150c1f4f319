"""Pieces the convolutional families share."""
import functools

import flax.linen as nn
import jax.numpy as jnp


def batch_norm(module: nn.Module, *, train: bool, epsilon: float = 1e-5):
  """The BatchNorm constructor of a CNN family, bound from `module`'s fields.

  Parameters and running statistics stay float32 whatever the compute dtype;
  in training, batch statistics are averaged over `module.bn_axis_name`, so a
  step split across devices normalises with the global batch's statistics.
  """
  return functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=module.bn_momentum,
      epsilon=epsilon, dtype=module.dtype, param_dtype=jnp.float32,
      axis_name=module.bn_axis_name)
