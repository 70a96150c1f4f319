"""Learning-rate schedules, the optimisers, plateau cuts and early stopping.

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

from cifar_jax.errors import UserError, check_choice

SCHEDULES = ('constant', 'piecewise', 'cosine', 'onecycle')
OPTIMIZERS = ('sgd', 'adamw')
MONITORS = ('accuracy', 'loss')


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises a UserError naming the first optimiser, schedule, monitor or fine-tuning field
  that this module cannot use."""
  check_choice('config.optimizer.name', config.optimizer.name, OPTIMIZERS)
  check_choice('config.schedule.name', config.schedule.name, SCHEDULES)
  check_choice('config.monitor', config.monitor, MONITORS)
  f = config.finetune
  if f.backbone_lr_scale < 0 or f.freeze_backbone_steps < 0:
    raise UserError('config.finetune.backbone_lr_scale and freeze_backbone_steps must be >= 0.')


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
  raise ValueError(f'unknown schedule {s.name!r}')  # check_config() rules this out.


def _decay_mask(params):
  """True for the parameters weight decay applies to: kernels, not norms or biases."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: path[-1].key not in ('bias', 'scale'), params)


def _update_rule(o: ml_collections.ConfigDict,
                 schedule: optax.Schedule) -> optax.GradientTransformation:
  """SGD with momentum and coupled L2 weight decay, or AdamW, at learning rate `schedule`."""
  mask = None if o.decay_norm_and_bias else _decay_mask
  if o.name == 'adamw':
    return optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=mask)
  return optax.chain(optax.add_decayed_weights(o.weight_decay, mask=mask),
                     optax.sgd(schedule, momentum=o.momentum, nesterov=o.nesterov))


def param_groups(params):
  """'head' for the parameters under the top-level `head` module, 'backbone' for all others."""
  return {name: jax.tree.map(lambda _, n=name: 'head' if n == 'head' else 'backbone', subtree)
          for name, subtree in params.items()}


def _head_and_backbone(o: ml_collections.ConfigDict, f: ml_collections.ConfigDict,
                       schedule: optax.Schedule) -> optax.GradientTransformation:
  """The update rule per parameter group: the backbone at a scaled rate, frozen at first."""
  frozen = f.freeze_backbone_steps
  # While frozen, the backbone's inner state (momentum, Adam moments and its
  # schedule's step count) stays untouched, so its count lags the train step
  # by `frozen` steps from the unfreeze on.
  backbone = _update_rule(o, lambda count: f.backbone_lr_scale * schedule(count + frozen))
  if frozen:
    # Zero updates until the unfreeze; the optimiser's state then starts fresh,
    # as when a Keras model is recompiled with its backbone made trainable.
    backbone = optax.transforms.conditionally_mask(backbone, lambda count: count >= frozen)
  return optax.multi_transform({'head': _update_rule(o, schedule), 'backbone': backbone},
                               param_groups)


def create_optimizer(config: ml_collections.ConfigDict,
                     schedule: optax.Schedule) -> optax.GradientTransformation:
  """The configured update rule, per parameter group when fine-tuning; optional clipping."""
  o, f = config.optimizer, config.finetune
  if f.backbone_lr_scale != 1.0 or f.freeze_backbone_steps:
    update = _head_and_backbone(o, f, schedule)
  else:
    update = _update_rule(o, schedule)
  if o.grad_clip_norm:
    # Clipping sees the raw gradient of all parameters, before weight decay is added.
    return optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), update)
  return update


# The monitored metric is turned into a loss (lower is better) for both the
# plateau logic and early stopping.
def monitor_loss(metrics: dict, monitor: str):
  """The monitored evaluation metric as a value to minimise."""
  return -metrics['accuracy'] if monitor == 'accuracy' else metrics['loss']


def create_plateau(config: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
  """Keras' ReduceLROnPlateau as optax's transform, fed one value per evaluation.

  It is not chained into the optimiser (which runs every step): the update half
  of the step multiplies the updates by its `scale`, and the loop's monitor
  function (`setup.compile_monitor_fn`) feeds it the monitored value at each
  evaluation, so `patience` counts evaluations.
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
