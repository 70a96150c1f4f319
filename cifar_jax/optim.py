"""Learning-rate schedules, the SGD optimiser, plateau cuts and early stopping.

The step counter the schedules read is the optimiser's own, and the plateau
and early-stopping states are plain arrays in the train state, so all of it is
checkpointed and resumes exactly.
"""
import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from optax import contrib


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
  """The one place a duration in epochs becomes a number of train steps."""
  return int(round(epochs * steps_per_epoch))


def create_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """The scheduled learning rate as a function of the train step."""
  base = config.optimizer.learning_rate
  total = epochs_to_steps(config.num_epochs, steps_per_epoch)
  s = config.schedule
  if s.name == 'constant':
    return optax.constant_schedule(base)
  if s.name == 'piecewise':
    boundaries = {epochs_to_steps(e, steps_per_epoch): s.decay_factor for e in s.boundaries_epochs}
    return optax.piecewise_constant_schedule(base, boundaries)
  if s.name == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=base,
        warmup_steps=epochs_to_steps(s.warmup_epochs, steps_per_epoch),
        decay_steps=total, end_value=0.0)
  if s.name == 'onecycle':
    return optax.cosine_onecycle_schedule(transition_steps=total, peak_value=base)
  raise ValueError(f'unknown schedule {s.name!r}')  # validate() rules this out.


def _decay_mask(params):
  """True for the parameters weight decay applies to: kernels, not norms or biases."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: path[-1].key not in ('bias', 'scale'), params)


def create_optimizer(config: ml_collections.ConfigDict,
                     schedule: optax.Schedule) -> optax.GradientTransformation:
  """SGD with momentum and coupled L2 weight decay, or AdamW; optional gradient clipping."""
  o = config.optimizer
  mask = None if o.decay_norm_and_bias else _decay_mask
  if o.name == 'adamw':
    update = optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=mask)
  else:
    update = optax.chain(optax.add_decayed_weights(o.weight_decay, mask=mask),
                         optax.sgd(schedule, momentum=o.momentum, nesterov=o.nesterov))
  if o.grad_clip_norm:
    # Clipping sees the raw gradient, before weight decay is added.
    return optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), update)
  return update


# The monitored metric is turned into a loss (lower is better) for both the
# plateau logic and early stopping.
def monitor_loss(metrics: dict, monitor: str):
  """The monitored evaluation metric as a value to minimise."""
  return -metrics['accuracy'] if monitor == 'accuracy' else metrics['loss']


def create_plateau(config: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
  """Keras' ReduceLROnPlateau as optax's transform, fed one value per evaluation.

  It is not chained into the optimiser (which runs every step): the train step
  multiplies the updates by `state.scale`, and `update_monitors` feeds it the
  monitored value at each evaluation, so `patience` counts evaluations.
  """
  p = config.plateau
  return contrib.reduce_on_plateau(
      factor=p.factor, patience=p.patience, rtol=0.0, atol=p.min_delta, cooldown=p.cooldown,
      # Disabled, the floor is the full rate, so cuts are no-ops.
      min_scale=p.min_scale if p.enabled else 1.0)


@flax.struct.dataclass
class EarlyStoppingState:
  """Keras' EarlyStopping: stop after `patience` evaluations without improvement."""
  best: jax.Array  # Best monitored loss so far.
  wait: jax.Array  # Evaluations since it last improved.

  @classmethod
  def create(cls):
    return cls(best=jnp.array(jnp.inf, jnp.float32), wait=jnp.array(0, jnp.int32))

  def update(self, value, min_delta: float) -> 'EarlyStoppingState':
    improved = value < self.best - min_delta
    return EarlyStoppingState(
        best=jnp.where(improved, value, self.best).astype(jnp.float32),
        wait=jnp.where(improved, 0, self.wait + 1).astype(jnp.int32))

  def should_stop(self, patience: int) -> bool:
    return bool(self.wait >= patience)
