"""Schedules at their boundaries, weight-decay masking, parameter groups (frozen, freezing after
N epochs, learning-rate multipliers), plateau cuts and early stopping."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax import config as config_lib
from cifar_jax.errors import UserError
from cifar_jax.training import optim


def make_config(**overrides):
  config = config_lib.base_config()
  config.num_epochs = 10
  config.optimizer.learning_rate = 0.1
  config.update_from_flattened_dict(overrides)
  return config


def test_epochs_to_steps():
  assert optim.epochs_to_steps(2, 390) == 780
  assert optim.epochs_to_steps(0.5, 391) == 196
  assert optim.epochs_to_steps(0, 100) == 0


def test_piecewise_schedule_changes_exactly_at_the_boundaries():
  config = make_config(**{'schedule.name': 'piecewise', 'schedule.boundaries_epochs': (2, 5),
                          'schedule.decay_factor': 0.1})
  schedule = optim.create_schedule(config, steps_per_epoch=10)
  assert schedule(19) == pytest.approx(0.1)
  assert schedule(20) == pytest.approx(0.01)
  assert schedule(49) == pytest.approx(0.01)
  assert schedule(50) == pytest.approx(0.001)


def test_cosine_schedule_warms_up_then_decays_to_zero():
  config = make_config(**{'schedule.name': 'cosine', 'schedule.warmup_epochs': 1.0})
  schedule = optim.create_schedule(config, steps_per_epoch=10)
  assert schedule(0) == pytest.approx(0.0)
  assert schedule(5) == pytest.approx(0.05)
  assert schedule(10) == pytest.approx(0.1)
  assert schedule(55) == pytest.approx(0.05, abs=1e-6)  # Half-way through the decay.
  assert schedule(100) == pytest.approx(0.0, abs=1e-7)


def test_onecycle_peaks_at_the_learning_rate():
  schedule = optim.create_schedule(make_config(**{'schedule.name': 'onecycle'}), 10)
  peak = max(float(schedule(s)) for s in range(100))
  assert peak == pytest.approx(0.1, rel=1e-3)
  assert schedule(0) < 0.01 and schedule(99) < 0.001


def test_constant_schedule():
  schedule = optim.create_schedule(make_config(**{'schedule.name': 'constant'}), 10)
  assert schedule(0) == schedule(99) == pytest.approx(0.1)


def test_linear_schedule_joins_its_points():
  config = make_config(**{'schedule.name': 'linear',
                          'schedule.points': ((0.0, 0.2), (0.23, 1.0), (1.0, 0.07))})
  schedule = optim.create_schedule(config, steps_per_epoch=10)  # 100 steps; the peak at 23.
  assert schedule(0) == pytest.approx(0.02)
  assert schedule(23) == pytest.approx(0.1)
  assert schedule(10) == pytest.approx(0.1 * (0.2 + 0.8 * 10 / 23))
  assert schedule(100) == pytest.approx(0.007)
  assert schedule(60) == pytest.approx(0.1 * (1 - 0.93 * 37 / 77))


@pytest.mark.parametrize('points', [((0.0, 1.0),), ((0.1, 1.0), (1.0, 0.0)),
                                    ((0.0, 1.0), (0.5, 1.0), (0.4, 0.5), (1.0, 0.0))])
def test_linear_schedule_points_are_checked(points):
  config = make_config(**{'schedule.name': 'linear', 'schedule.points': points})
  with pytest.raises(UserError, match='config.schedule.points'):
    optim.check_config(config)


@pytest.mark.parametrize('field,rule', [('lr_multipliers', ('(', 2.0)),
                                        ('frozen_after_epochs', ('bias', -1)),
                                        ('lr_multipliers', 'bias')])
def test_group_rules_are_checked(field, rule):
  config = make_config(**{f'optimizer.{field}': (rule,)})
  with pytest.raises(UserError, match=f'config.optimizer.{field}'):
    optim.check_config(config)


def test_parameter_groups_freeze_and_scale_the_gradient_step_only():
  # Momentum 0, so each update is -lr * (gradient_scale * gradient + decay * param).
  config = make_config(**{
      'schedule.name': 'constant', 'optimizer.momentum': 0.0, 'optimizer.weight_decay': 0.5,
      'optimizer.frozen_after_epochs': (('^whiten/kernel$', 0), ('^whiten/bias$', 1)),
      'optimizer.lr_multipliers': ((r'_norm\d+/bias$', 4.0),)})
  tx = optim.create_optimizer(config, optim.create_schedule(config, 2), steps_per_epoch=2)
  params = {'whiten': {'kernel': jnp.ones(2), 'bias': jnp.ones(2)},
            'group1_norm1': {'bias': jnp.ones(2)}, 'head': {'kernel': jnp.ones(2)}}
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  for step in range(4):
    updates, state = tx.update(grads, state, params)
    np.testing.assert_array_equal(updates['whiten']['kernel'], 0.0)  # Frozen throughout.
    # Trained for one epoch (2 steps), then frozen: no gradient step, no decay.
    np.testing.assert_allclose(updates['whiten']['bias'], -0.1 * 1.5 if step < 2 else 0.0)
    np.testing.assert_allclose(updates['group1_norm1']['bias'], -0.1 * (4.0 + 0.5))
    np.testing.assert_allclose(updates['head']['kernel'], -0.1 * 1.5)


@pytest.mark.parametrize('decay_norm_and_bias', [True, False])
def test_weight_decay_mask(decay_norm_and_bias):
  config = make_config(**{'schedule.name': 'constant', 'optimizer.momentum': 0.0,
                          'optimizer.weight_decay': 0.5,
                          'optimizer.decay_norm_and_bias': decay_norm_and_bias})
  tx = optim.create_optimizer(config, optim.create_schedule(config, 1))
  params = {'conv': {'kernel': jnp.ones(2)}, 'bn': {'scale': jnp.ones(2), 'bias': jnp.ones(2)}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  # With zero gradients the update is -lr * weight_decay * param where decay applies.
  np.testing.assert_allclose(updates['conv']['kernel'], -0.05)
  expected_norm = -0.05 if decay_norm_and_bias else 0.0
  np.testing.assert_allclose(updates['bn']['scale'], expected_norm)
  np.testing.assert_allclose(updates['bn']['bias'], expected_norm)


def feed(plateau, values):
  state = plateau.init(jnp.zeros(()))
  scales = []
  for v in values:
    _, state = plateau.update(updates={}, state=state, value=jnp.asarray(v))
    scales.append(float(state.scale))
  return scales


def test_plateau_cuts_after_patience_flat_evaluations():
  config = make_config(**{'plateau.enabled': True, 'plateau.patience': 2, 'plateau.factor': 0.5,
                          'plateau.min_delta': 0.01, 'plateau.min_scale': 0.2})
  plateau = optim.create_plateau(config)
  # Improves twice, then flat (changes below min_delta do not count).
  scales = feed(plateau, [1.0, 0.9, 0.895, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
  assert scales == pytest.approx([1, 1, 1, 0.5, 0.5, 0.25, 0.25, 0.2, 0.2])  # Floor: min_scale.


def test_plateau_cooldown_delays_the_next_cut():
  config = make_config(**{'plateau.enabled': True, 'plateau.patience': 1, 'plateau.factor': 0.5,
                          'plateau.cooldown': 2, 'plateau.min_scale': 0.0})
  scales = feed(optim.create_plateau(config), [1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
  assert scales == [1, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_plateau_disabled_never_cuts():
  scales = feed(optim.create_plateau(make_config(**{'plateau.patience': 1})), [1.0] * 5)
  assert scales == [1.0] * 5


def test_early_stopping_fires_after_patience_evaluations_without_improvement():
  state = optim.EarlyStoppingState.create()
  stops = []
  for value in [1.0, 0.5, 0.49, 0.6, 0.5]:
    state = state.update(jnp.asarray(value), min_delta=0.05)
    stops.append(state.should_stop(patience=3))
  assert stops == [False, False, False, False, True]


def test_monitor_loss_turns_accuracy_into_a_loss():
  assert optim.monitor_loss({'accuracy': 0.7, 'loss': 1.2}, 'accuracy') == -0.7
  assert optim.monitor_loss({'accuracy': 0.7, 'loss': 1.2}, 'loss') == 1.2


def test_gradient_clipping_caps_the_global_norm():
  config = make_config(**{'schedule.name': 'constant', 'optimizer.momentum': 0.0,
                          'optimizer.weight_decay': 0.0, 'optimizer.learning_rate': 1.0,
                          'optimizer.grad_clip_norm': 0.5})
  tx = optim.create_optimizer(config, optim.create_schedule(config, 1))
  params = {'w': jnp.zeros(2)}
  updates, _ = tx.update({'w': jnp.array([3.0, 4.0])}, tx.init(params), params)
  np.testing.assert_allclose(updates['w'], [-0.3, -0.4], rtol=1e-6)  # Norm 5 clipped to 0.5.


def test_adamw_decays_weights_decoupled_from_the_gradient():
  config = make_config(**{'schedule.name': 'constant', 'optimizer.name': 'adamw',
                          'optimizer.learning_rate': 0.1, 'optimizer.weight_decay': 0.5})
  tx = optim.create_optimizer(config, optim.create_schedule(config, 1))
  params = {'kernel': jnp.full(2, 2.0)}
  updates, _ = tx.update({'kernel': jnp.zeros(2)}, tx.init(params), params)
  # Zero gradient: Adam's step is 0 and only the decay -lr * wd * w remains.
  np.testing.assert_allclose(updates['kernel'], -0.1 * 0.5 * 2.0, rtol=1e-6)
