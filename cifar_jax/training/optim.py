"""Learning-rate schedules, the optimisers, plateau cuts and early stopping.

The step counter the schedules read is the optimiser's own, and the plateau
and early-stopping states are plain arrays in the train state, so all of it is
checkpointed and resumes exactly.
"""
import re

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from optax import contrib

from cifar_jax.errors import (
    AT_LEAST_0,
    FRACTION,
    OPEN_FRACTION,
    POSITIVE,
    UserError,
    check_choice,
    check_ranges,
)

SCHEDULES = ('constant', 'piecewise', 'cosine', 'onecycle', 'linear')
OPTIMIZERS = ('sgd', 'adamw')
MONITORS = ('accuracy', 'loss')


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises a UserError naming the first optimiser, schedule, monitor, plateau, early-stopping
  or fine-tuning field that this module cannot use."""
  check_choice('config.optimizer.name', config.optimizer.name, OPTIMIZERS)
  check_choice('config.schedule.name', config.schedule.name, SCHEDULES)
  check_choice('config.monitor', config.monitor, MONITORS)
  f = config.finetune
  if f.backbone_lr_scale < 0 or f.freeze_backbone_steps < 0:
    raise UserError('config.finetune.backbone_lr_scale and freeze_backbone_steps must be >= 0.')
  for field in ('lr_multipliers', 'frozen_after_epochs'):
    for rule in config.optimizer[field]:
      _check_rule(f'config.optimizer.{field}', rule)
  if config.schedule.name == 'linear':
    _check_points(config.schedule.points)
  check_ranges(config, {
      'optimizer.learning_rate': AT_LEAST_0, 'optimizer.momentum': FRACTION,
      'optimizer.b1': FRACTION, 'optimizer.b2': FRACTION, 'optimizer.weight_decay': AT_LEAST_0,
      'optimizer.grad_clip_norm': AT_LEAST_0, 'schedule.warmup_epochs': AT_LEAST_0,
      'schedule.decay_factor': AT_LEAST_0,
      # optax's plateau transform refuses a factor or min_delta out of range even when off.
      'plateau.factor': OPEN_FRACTION, 'plateau.min_delta': POSITIVE,
      'plateau.patience': AT_LEAST_0, 'plateau.cooldown': AT_LEAST_0,
      'plateau.min_scale': ('in (0, 1]', lambda v: 0 < v <= 1),
      'early_stopping.patience': AT_LEAST_0, 'early_stopping.min_delta': AT_LEAST_0})
  s = config.schedule
  if s.name == 'piecewise' and not all(e >= 0 for e in s.boundaries_epochs):
    raise UserError(f'config.schedule.boundaries_epochs must be epochs >= 0, got '
                    f'{s.boundaries_epochs!r}.')
  if s.name == 'cosine' and s.warmup_epochs >= config.num_epochs:
    raise UserError(f'config.schedule.warmup_epochs={s.warmup_epochs} must be less than '
                    f'config.num_epochs={config.num_epochs}: the cosine decay follows the warm-up.')


def _check_rule(field: str, rule) -> None:
  """A (pattern, non-negative number) pair whose pattern compiles, or a UserError."""
  if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
          and isinstance(rule[1], (int, float)) and rule[1] >= 0):
    raise UserError(f'{field} holds {rule!r}; each entry must be a (pattern, number >= 0) pair, '
                    f"e.g. ('norm/bias$', 64.0).")
  try:
    re.compile(rule[0])
  except re.error as e:
    raise UserError(f'{field}: {rule[0]!r} is not a regular expression ({e}).') from None


def _check_points(points) -> None:
  """Points of the 'linear' schedule: from fraction 0 to 1, in order, multipliers >= 0."""
  ok = (len(points) >= 2 and all(len(p) == 2 for p in points)
        and points[0][0] == 0 and points[-1][0] == 1
        and all(a[0] <= b[0] for a, b in zip(points, points[1:], strict=False))
        and all(p[1] >= 0 for p in points))
  if not ok:
    raise UserError(f'config.schedule.points={points!r} must be (fraction, multiplier) pairs '
                    'from fraction 0 to 1 in order, with multipliers >= 0, e.g. '
                    '((0, 0.2), (0.23, 1), (1, 0.07)).')


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
  if s.name == 'linear':
    steps = jnp.array([int(fraction * total) for fraction, _ in s.points], jnp.float32)
    rates = jnp.array([base * multiplier for _, multiplier in s.points], jnp.float32)
    return lambda count: jnp.interp(count, steps, rates)
  raise ValueError(f'unknown schedule {s.name!r}')  # check_config() rules this out.


def _decay_mask(params):
  """True for the parameters weight decay applies to: kernels, not norms or biases."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: path[-1].key not in ('bias', 'scale'), params)


def _update_rule(o: ml_collections.ConfigDict, schedule: optax.Schedule,
                 gradient_scale: float = 1.0) -> optax.GradientTransformation:
  """SGD with momentum and coupled L2 weight decay, or AdamW, at learning rate `schedule`.

  `gradient_scale` multiplies the step along the gradient but not the weight-decay step: for
  SGD the gradient before the decay is added, for AdamW Adam's normalised update.
  """
  mask = None if o.decay_norm_and_bias else _decay_mask
  if o.name == 'adamw':
    if gradient_scale == 1.0:
      return optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=mask)
    return optax.chain(optax.scale_by_adam(b1=o.b1, b2=o.b2), optax.scale(gradient_scale),
                       optax.add_decayed_weights(o.weight_decay, mask=mask),
                       optax.scale_by_learning_rate(schedule))
  sgd = optax.chain(optax.add_decayed_weights(o.weight_decay, mask=mask),
                    optax.sgd(schedule, momentum=o.momentum, nesterov=o.nesterov))
  return sgd if gradient_scale == 1.0 else optax.chain(optax.scale(gradient_scale), sgd)


def _path_name(path) -> str:
  """A parameter's path as the group patterns see it: 'group1_norm1/bias'."""
  return '/'.join(str(getattr(k, 'key', k)) for k in path)


def _first_match(rules, name: str):
  """The index of the first (pattern, value) rule whose pattern is found in `name`, or None."""
  return next((i for i, (pattern, _) in enumerate(rules) if re.search(pattern, name)), None)


def param_groups(params, config: ml_collections.ConfigDict | None = None):
  """Each parameter's group label.

  'head' for the parameters under the top-level `head` module, 'backbone' for all others; with
  `config`, '+lr<i>' and '+frozen<j>' are appended when the i-th `optimizer.lr_multipliers`
  and the j-th `optimizer.frozen_after_epochs` rule are the first to match its path.
  """
  def label(path, _):
    name = _path_name(path)
    label = 'head' if name.split('/')[0] == 'head' else 'backbone'
    if config is not None:
      i = _first_match(config.optimizer.lr_multipliers, name)
      j = _first_match(config.optimizer.frozen_after_epochs, name)
      label += (f'+lr{i}' if i is not None else '') + (f'+frozen{j}' if j is not None else '')
    return label

  return jax.tree_util.tree_map_with_path(label, params)


def _group_rule(config: ml_collections.ConfigDict, schedule: optax.Schedule, label: str,
                steps_per_epoch: int) -> optax.GradientTransformation:
  """The update rule of one parameter group (see `param_groups`)."""
  o, f = config.optimizer, config.finetune
  part, *rules = label.split('+')
  # The fine-tuning backbone: a scaled rate, and frozen for its first steps.
  scale = f.backbone_lr_scale if part == 'backbone' else 1.0
  start = f.freeze_backbone_steps if part == 'backbone' else 0
  gradient_scale, stop = 1.0, None
  for rule in rules:
    if rule.startswith('lr'):
      gradient_scale = o.lr_multipliers[int(rule[2:])][1]
    else:
      stop = epochs_to_steps(o.frozen_after_epochs[int(rule[6:])][1], steps_per_epoch)
  if stop is not None and stop <= start:
    return optax.set_to_zero()  # Never trained: no optimiser state either.
  # While frozen, a group's inner state (momentum, Adam moments and its schedule's step count)
  # stays untouched, so its count lags the train step by `start` steps from the unfreeze on,
  # and starts fresh then, as when a Keras model is recompiled with its backbone trainable.
  rule = _update_rule(o, lambda count: scale * schedule(count + start), gradient_scale)
  if start or stop is not None:
    stop = stop if stop is not None else jnp.iinfo(jnp.int32).max
    rule = optax.transforms.conditionally_mask(
        rule, lambda count: (count >= start) & (count < stop))
  return rule


def create_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule,
                     steps_per_epoch: int = 1) -> optax.GradientTransformation:
  """The configured update rule, per parameter group where groups differ; optional clipping.

  Groups (`param_groups`) come from fine-tuning (`config.finetune`) and from the per-path
  rules `config.optimizer.lr_multipliers` and `frozen_after_epochs`; `steps_per_epoch` turns
  the latter's epochs into steps.
  """
  o, f = config.optimizer, config.finetune
  by_rule = bool(o.lr_multipliers or o.frozen_after_epochs)
  if by_rule or f.backbone_lr_scale != 1.0 or f.freeze_backbone_steps:
    # Every label `param_groups` can give, whether or not a parameter carries it.
    labels = [part + (f'+lr{i}' if i is not None else '') + (f'+frozen{j}' if j is not None else '')
              for part in ('head', 'backbone')
              for i in [None, *range(len(o.lr_multipliers))]
              for j in [None, *range(len(o.frozen_after_epochs))]]
    update = optax.multi_transform(
        {label: _group_rule(config, schedule, label, steps_per_epoch) for label in labels},
        lambda params: param_groups(params, config if by_rule else None))
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
