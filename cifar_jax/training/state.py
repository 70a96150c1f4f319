"""The train state: everything a resumed run needs, saved and restored as one pytree."""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from cifar_jax import rng
from cifar_jax.training import lookahead as lookahead_lib
from cifar_jax.training import loss_scale as loss_scale_lib
from cifar_jax.training import optim


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs, saved and restored as one pytree."""
  step: jax.Array  # Train steps taken; also positions the data order.
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  ema_params: Any  # Moving average of `params` when `ema_decay` > 0, else {}.
  # Lookahead's average of `params` and `batch_stats` when `config.lookahead.every` > 0, else {}.
  lookahead: Any
  plateau: Any  # optax's ReduceLROnPlateauState; `.scale` multiplies the rate.
  early_stopping: optim.EarlyStoppingState
  rng: jax.Array  # The run's key: data order and augmentation derive from it and the step.
  # Per-channel statistics of the training split, in [0, 1] units, that inputs
  # are normalised with; kept here so evaluation needs no training data.
  image_mean: jax.Array
  image_std: jax.Array
  # float16 compute: the dynamic loss scale and its counters (`loss_scale.LossScaleState`);
  # else {}, so the checkpoints of other runs are as they were before it existed.
  loss_scale: Any


def run_key(seed_key):
  """The run's key (`TrainState.rng`, the source of the data order and every step's key) of the
  key `jax.random.PRNGKey(config.seed)`."""
  return rng.stream(seed_key, 'run')


def init_train_state(seed_key, model, optimizer, plateau, image_mean, image_std,
                     ema: bool = False, lookahead: bool = False,
                     input_size: int = 32, loss_scale=None) -> TrainState:
  """A fresh train state (pure; jit it with output shardings to create it on the mesh).

  `loss_scale`: `config.loss_scale` for float16 compute, else None.
  """
  variables = model.init(rng.stream(seed_key, 'init'),
                         jnp.zeros((1, input_size, input_size, 3)), train=False)
  params = variables['params']
  batch_stats = variables.get('batch_stats', {})  # Models without BatchNorm (ViT) have none.
  return TrainState(
      step=jnp.array(0, jnp.int32), params=params, batch_stats=batch_stats,
      opt_state=optimizer.init(params), ema_params=params if ema else {},
      lookahead=lookahead_lib.init(params, batch_stats) if lookahead else {},
      # The plateau transform only needs a float dtype from its "params".
      plateau=plateau.init(jnp.zeros((), jnp.float32)),
      early_stopping=optim.EarlyStoppingState.create(), rng=run_key(seed_key),
      image_mean=jnp.asarray(image_mean, jnp.float32),
      image_std=jnp.asarray(image_std, jnp.float32),
      loss_scale=loss_scale_lib.init(loss_scale) if loss_scale is not None else {})
