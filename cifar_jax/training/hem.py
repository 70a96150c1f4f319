"""Hard example mining: per-example loss weights chosen across the global batch.

Runs inside the per-device train step. Losses are shared over the named data
axis, so the weights of an example depend only on the global batch, not on how
it is split across devices: one device and eight give the same weights. Weights
are normalised to mean 1 over the global batch, so the learning rate keeps its
meaning, and carry no gradient.
"""
import jax.numpy as jnp
from jax import lax

from cifar_jax.errors import UserError, check_choice

MODES = ('off', 'topk', 'softmax')


def check_config(hem_config) -> None:
  """Raises a UserError naming the first field of `config.hem` that mining cannot use."""
  check_choice('config.hem.mode', hem_config.mode, MODES)
  if not 0 < hem_config.fraction <= 1:
    raise UserError(f'config.hem.fraction must be in (0, 1], got {hem_config.fraction}.')
  if hem_config.boost <= 0:
    raise UserError(f'config.hem.boost must be positive, got {hem_config.boost}.')
  if hem_config.temperature <= 0:
    raise UserError(f'config.hem.temperature must be positive, got {hem_config.temperature}.')
  if not 0 <= hem_config.start_fraction < 1:
    raise UserError(f'config.hem.start_fraction must be in [0, 1), got '
                    f'{hem_config.start_fraction}.')


def _topk_weights(losses, fraction, boost, axis_name):
  """The hardest `fraction` of the global batch weighs `boost` times the rest."""
  local_size = losses.shape[0]
  global_losses = lax.all_gather(losses, axis_name, tiled=True)
  global_size = global_losses.shape[0]
  num_hard = max(1, round(fraction * global_size))
  # Rank by a stable sort rather than thresholding at the k-th loss, so ties
  # cannot boost more than `num_hard` examples.
  hardest = jnp.argsort(-global_losses, stable=True)[:num_hard]
  is_hard = jnp.zeros(global_size, bool).at[hardest].set(True)
  offset = lax.axis_index(axis_name) * local_size
  mine = lax.dynamic_slice(is_hard, (offset,), (local_size,))
  mean_weight = (num_hard * boost + (global_size - num_hard)) / global_size
  return jnp.where(mine, boost, 1.0) / mean_weight


def _softmax_weights(losses, temperature, axis_name):
  """Weights proportional to exp(loss / temperature)."""
  z = losses / temperature
  # Subtracting the global maximum keeps exp finite; it cancels in the ratio.
  unnormalised = jnp.exp(z - lax.pmax(jnp.max(z), axis_name))
  return unnormalised / lax.pmean(jnp.mean(unnormalised), axis_name)


def example_weights(losses, *, mode: str, fraction: float, boost: float, temperature: float,
                    axis_name: str, active=True):
  """Per-example weights (mean 1 over the global batch) and their statistics.

  Args:
    losses: this device's per-example losses, float32 [local_batch].
    mode: 'off' | 'topk' | 'softmax'.
    fraction, boost: 'topk' settings.
    temperature: 'softmax' setting.
    axis_name: the named data axis the global batch is split over.
    active: bool (may be traced); False gives every example weight 1 (mining not started).

  Returns:
    (weights [local_batch], {'hem_weight_max', 'hem_ess'}), where the effective
    sample size `hem_ess` is (sum w)^2 / (n sum w^2), as a fraction of the batch:
    1 when all weights are equal.
  """
  losses = lax.stop_gradient(losses.astype(jnp.float32))
  if mode == 'off':
    weights = jnp.ones_like(losses)
  elif mode == 'topk':
    weights = _topk_weights(losses, fraction, boost, axis_name)
  elif mode == 'softmax':
    weights = _softmax_weights(losses, temperature, axis_name)
  else:
    raise ValueError(f'unknown hard example mining mode {mode!r}')
  weights = jnp.where(active, weights, 1.0)
  stats = {
      'hem_weight_max': lax.pmax(jnp.max(weights), axis_name),
      # Mean weight is 1, so the effective sample size is 1 / mean(w^2).
      'hem_ess': 1.0 / lax.pmean(jnp.mean(weights**2), axis_name),
  }
  return weights, stats
