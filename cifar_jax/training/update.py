"""The update half of the train step: inputs and targets -> a new train state (per-device code).

The loss with hard-example weights, the gradient of the global batch, SAM's second pass, the
optimiser (with the plateau's scale) and the weight EMA; with float16 compute, dynamic loss
scaling (`loss_scale.py`). New update rules belong in the optimiser (`optim.py`, as optax
transforms), which this half applies whatever it is.
"""
import jax
import jax.numpy as jnp
import optax
from jax import lax

from cifar_jax import rng
from cifar_jax.errors import UserError, check_choice
from cifar_jax.sharding import DATA_AXIS
from cifar_jax.training import hem
from cifar_jax.training import lookahead as lookahead_lib
from cifar_jax.training import loss_scale as loss_scale_lib

LOSS_REDUCTIONS = ('mean', 'sum')


def check_config(config) -> None:
  """Raises a UserError for a loss reduction, EMA decay, SAM radius, lookahead or loss scaling
  the update cannot use."""
  check_choice('config.loss_reduction', config.loss_reduction, LOSS_REDUCTIONS)
  lookahead_lib.check_config(config.lookahead)
  loss_scale_lib.check_config(config.loss_scale)
  if not 0 <= config.ema_decay < 1:
    raise UserError(f'config.ema_decay must be in [0, 1) (0 is off), got {config.ema_decay}.')
  if config.optimizer.sam_rho < 0:
    raise UserError(f'config.optimizer.sam_rho must be >= 0 (0 is off), got '
                    f'{config.optimizer.sam_rho}.')


def update(state, inputs, targets, labels, step_key, *, model, optimizer, hem_config,
           sam_rho: float = 0.0, ema_decay: float = 0.0, loss_reduction: str = 'mean',
           lookahead=None, total_steps: int = 0, loss_scaling=None):
  """One optimiser step on this device's share of a global batch.

  Args:
    state: The replicated `TrainState`.
    inputs, targets: The input half's output for this device's share.
    labels: int32 [B], for the accuracy metric.
    step_key: The train step's key; the streams used here are named under it.
    model, optimizer: The flax module and the optax transformation.
    hem_config: `config.hem`.
    sam_rho: SAM's ascent radius; 0 is off.
    ema_decay: Weight EMA decay per step; 0 is off.
    loss_reduction: 'mean' or 'sum' of the per-example losses over the global batch.
    lookahead: `config.lookahead` (None or `every` 0 is off).
    total_steps: The run's length in steps, which lookahead's decay grows towards and
      `hem_config.start_fraction` is a share of.
    loss_scaling: `config.loss_scale` for float16 compute (`state.loss_scale` then holds the
      scaler), or None: no scaling.

  Returns:
    The new state and this step's metrics, summed over the global batch.
  """
  # Dropout and stochastic depth draw per device, like mixing.
  dropout_key = jax.random.fold_in(rng.stream(step_key, 'dropout'), lax.axis_index(DATA_AXIS))
  # The gradient below is of this device's mean loss, averaged over devices: the global mean.
  # A summed loss is that times the global batch size.
  reduction_factor = labels.shape[0] * lax.axis_size(DATA_AXIS) if loss_reduction == 'sum' else 1
  # float16: each device's loss is multiplied by the dynamic scale over the number of devices,
  # so each example's share of the backward pass, and with it where float16 overflows, is the
  # same however many devices share the batch.
  gradient_factor = (state.loss_scale.scale / lax.axis_size(DATA_AXIS)
                     if loss_scaling is not None else None)

  def loss_fn(params):
    logits, new_variables = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, inputs, train=True,
        mutable=['batch_stats'], rngs={'dropout': dropout_key})
    losses = optax.softmax_cross_entropy(logits, targets)
    weights, hem_stats = hem.example_weights(
        losses, mode=hem_config.mode, fraction=hem_config.fraction, boost=hem_config.boost,
        temperature=hem_config.temperature, axis_name=DATA_AXIS,
        active=state.step >= round(hem_config.start_fraction * total_steps))
    batch_stats = new_variables.get('batch_stats', {})
    loss = reduction_factor * jnp.mean(weights * losses)
    if gradient_factor is not None:
      loss = loss * gradient_factor
    return loss, (logits, losses, batch_stats, hem_stats)

  def global_grads(params):
    # The parameters are replicated (invariant over the data axis), and the
    # gradient with respect to an invariant value is implicitly summed over
    # devices. Differentiating a device-varying view instead gives each device
    # the gradient of its own share; every device holds an equal share, so
    # their mean is the gradient of the global batch's mean loss.
    local_params = lax.pcast(params, DATA_AXIS, to='varying')
    grads, aux = jax.grad(loss_fn, has_aux=True)(local_params)
    grads = lax.pmean(grads, DATA_AXIS)
    if gradient_factor is not None:
      grads = jax.tree.map(lambda g: g / gradient_factor, grads)
    return grads, aux

  grads, (logits, losses, batch_stats, hem_stats) = global_grads(state.params)
  if sam_rho:
    # SAM: step to the (first-order) worst point within `sam_rho` of the
    # parameters and descend with the gradient found there. The ascent uses the
    # global gradient, so it does not depend on the device count; BatchNorm
    # statistics and metrics come from the first pass.
    scale = sam_rho / (optax.tree.norm(grads) + 1e-12)
    grads, _ = global_grads(jax.tree.map(lambda p, g: p + scale * g, state.params, grads))
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  updates = jax.tree.map(lambda u: u * state.plateau.scale, updates)
  params = optax.apply_updates(state.params, updates)
  step = state.step + 1
  average = state.lookahead
  if lookahead is not None and lookahead.every:
    average, params, batch_stats = lookahead_lib.apply(
        average, params, batch_stats, step, every=lookahead.every, decay=lookahead.decay,
        power=lookahead.power, total_steps=total_steps)
  ema_params = (optax.incremental_update(params, state.ema_params, step_size=1 - ema_decay)
                if ema_decay else state.ema_params)
  new_state = state.replace(step=step, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, ema_params=ema_params, lookahead=average)
  step_metrics = {
      'loss_sum': lax.psum(jnp.sum(losses), DATA_AXIS),
      'correct': lax.psum(jnp.sum(jnp.argmax(logits, -1) == labels), DATA_AXIS),
      'count': lax.psum(labels.shape[0], DATA_AXIS),
      'hem_ess_sum': hem_stats['hem_ess'],
      'hem_weight_max': hem_stats['hem_weight_max'],
      'skipped_steps': jnp.int32(0),
  }
  if loss_scaling is not None:
    new_state, step_metrics = skip_if_overflowed(state, new_state, step_metrics, grads, losses,
                                                 loss_scaling)
  return new_state, step_metrics


def skip_if_overflowed(state, new_state, step_metrics: dict, grads, losses, loss_scaling):
  """`new_state` with the scaler updated, or, when a gradient or loss overflowed on any device,
  `state` with only the step and the scaler moved on. A skipped step adds nothing to the train
  metrics but `skipped_steps`: its examples were not trained on."""
  finite = loss_scale_lib.all_finite_on_every_device(grads, losses)
  scaler, skip = loss_scale_lib.update(
      state.loss_scale, finite, growth_interval=loss_scaling.growth_interval,
      factor=loss_scaling.factor, minimum=loss_scaling.min)
  kept = state.replace(step=new_state.step)
  new_state = jax.tree.map(lambda old, new: jnp.where(skip, old, new), kept, new_state)
  step_metrics = jax.tree.map(lambda v: jnp.where(skip, jnp.zeros_like(v), v), step_metrics)
  return (new_state.replace(loss_scale=scaler),
          {**step_metrics, 'skipped_steps': skip.astype(jnp.int32)})
