"""Lookahead with a growing decay, as airbench uses it (per-device code, in the update half).

Every `every` steps the weights and the BatchNorm running statistics move to a running average,
avg <- d * avg + (1 - d) * net with d = decay**every * (step / total)**power, and the network
is reset to that average. Early on d is near 0 and the average follows the network; late in the
run it smooths the last steps. After the run's last step the network takes the average.
"""
import jax
import jax.numpy as jnp
import ml_collections

from cifar_jax.errors import UserError


def check_config(lookahead: ml_collections.ConfigDict) -> None:
  """Raises a UserError for a `config.lookahead` field no run can use."""
  if lookahead.every < 0:
    raise UserError(f'config.lookahead.every must be >= 0 (0 is off), got {lookahead.every}.')
  if not 0 <= lookahead.decay <= 1:
    raise UserError(f'config.lookahead.decay must be in [0, 1], got {lookahead.decay}.')
  if lookahead.power < 0:
    raise UserError(f'config.lookahead.power must be >= 0, got {lookahead.power}.')


def init(params, batch_stats) -> dict:
  """The average at the start: the network itself."""
  return {'params': params, 'batch_stats': batch_stats}


def decay_at(step, *, every: int, decay: float, power: float, total_steps: int):
  """The average's decay at a sync after `step` steps (float32)."""
  return jnp.float32(decay ** every) * (step / total_steps).astype(jnp.float32) ** power


def apply(average: dict, params, batch_stats, step, *, every: int, decay: float, power: float,
          total_steps: int):
  """After train step `step` (1-based): the new (average, params, batch_stats).

  At a sync step the average moves towards the network and the network is reset to it; at the
  last step the network takes the average; otherwise nothing changes.
  """
  sync = step % every == 0
  d = jnp.where(sync, decay_at(step, every=every, decay=decay, power=power,
                               total_steps=total_steps), 1.0)
  net = {'params': params, 'batch_stats': batch_stats}
  average = jax.tree.map(lambda a, x: (d * a + (1 - d) * x).astype(a.dtype), average, net)
  take = sync | (step >= total_steps)
  net = jax.tree.map(lambda a, x: jnp.where(take, a, x), average, net)
  return average, net['params'], net['batch_stats']
