"""The set-up and the loop: parallel equals serial, resume equals uninterrupted, compiled once."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    assert_trees_close,
    assert_trees_close_to_scale,
    mesh_of,
    tiny_airbench_config,
    tiny_config,
)

from cifar_jax import workdir
from cifar_jax.augment import normalize
from cifar_jax.data import splits as splits_lib
from cifar_jax.errors import UserError
from cifar_jax.training import evaluation, loop, setup
from cifar_jax.training.checkpoint import Checkpoints
from cifar_jax.training.metrics import CompilationCounter


# The suite draws with the classic threefry (see conftest.py); one case uses JAX's default.
@pytest.mark.parametrize('hem_mode,steps_per_call,partitionable', [('topk', 3, False),
                                                                  ('off', 1, True)])
def test_steps_on_8_devices_equal_the_same_global_batches_on_1(hem_mode, steps_per_call,
                                                               partitionable):
  config = tiny_config(**{'hem.mode': hem_mode, 'augment.cutout_size': 8,
                          'steps_per_call': steps_per_call})
  results = []
  for num_devices in (1, 8):
    with jax.threefry_partitionable(partitionable):
      run = setup.setup(config, mesh_of(num_devices))
      state, splits = run.new_state(), run.splits
      for stop_step in range(steps_per_call, 4, steps_per_call):  # Three steps in all.
        state, totals = run.train_fn(state, splits.train_images, splits.train_labels,
                                     jnp.int32(stop_step))
    results.append((jax.device_get(state), jax.device_get(totals)))
  (one, one_totals), (eight, eight_totals) = results
  assert int(one.step) == int(eight.step) == 3
  assert_trees_close(one.params, eight.params)
  assert_trees_close(one.batch_stats, eight.batch_stats)
  assert_trees_close(one.opt_state, eight.opt_state)
  assert_trees_close(one_totals, eight_totals)


def test_airbench_recipe_on_8_devices_equals_1_and_starts_whitened():
  # Lookahead syncs at step 2, when the whitening bias freezes; the kernel never trains.
  config = tiny_airbench_config(**{'lookahead.every': 2, 'steps_per_call': 1,
                                   'optimizer.frozen_after_epochs': (('^whiten/kernel$', 0),
                                                                     ('^whiten/bias$', 0.25))})
  results = []
  for num_devices in (1, 8):
    run = setup.setup(config, mesh_of(num_devices))
    state, splits = run.new_state(), run.splits
    if num_devices == 8:
      # The eigenvectors of the whitening amplify the rounding of the covariance's sums, which
      # differs with the devices' share of the work: close, and then the same start for both.
      whiten = results[0][0][0].params['whiten']['kernel']
      np.testing.assert_allclose(state.params['whiten']['kernel'], whiten,
                                 atol=1e-4 * np.abs(whiten).max())
      state = state.replace(params={**state.params, 'whiten': {
          **state.params['whiten'], 'kernel': jax.device_put(whiten, state.params['whiten'][
              'kernel'].sharding)}})
      # (Copies: the train function donates the state, and a buffer may be donated once.)
      state = state.replace(lookahead={**state.lookahead,
                                       'params': jax.tree.map(jnp.copy, state.params)})
    states = [jax.device_get(state)]
    for stop_step in (1, 2, 3):
      state, totals = run.train_fn(state, splits.train_images, splits.train_labels,
                                   jnp.int32(stop_step))
      states.append(jax.device_get(state))
    results.append((states, jax.device_get(totals)))
  (one, one_totals), (eight, eight_totals) = results
  # BatchNorm's eps of 1e-12 amplifies rounding in channels of small variance: the largest
  # difference measured, relative to its leaf's scale, was 2e-3 (a momentum trace); a step that
  # differed by more than rounding would differ by far more.
  for field in ('params', 'batch_stats', 'opt_state', 'lookahead'):
    assert_trees_close_to_scale(getattr(one[-1], field), getattr(eight[-1], field), tol=1e-2)
  assert_trees_close(one_totals, eight_totals)

  # Set-up computed the whitening kernel from the first training images.
  images = splits_lib.load_splits(config)[1]['train'][0][:64]
  inputs = normalize.model_inputs(images, *normalize.FIXED_STATS['cifar10'], 32)
  whitened = run.model.init_from_data(one[0].params, inputs)
  assert_trees_close_to_scale(one[0].params['whiten']['kernel'], whitened['whiten']['kernel'],
                              tol=1e-3)
  # Frozen from the start; the bias trains for two steps and stays from then on.
  for state in one[1:]:
    np.testing.assert_allclose(state.params['whiten']['kernel'],
                               one[0].params['whiten']['kernel'], rtol=1e-6)
  biases = [state.params['whiten']['bias'] for state in one]
  assert not np.allclose(biases[1], biases[0]) and not np.allclose(biases[2], biases[1])
  np.testing.assert_array_equal(biases[3], biases[2])
  # At the lookahead sync (step 2) the network was reset to the average.
  assert_trees_close(one[2].params, one[2].lookahead['params'], rtol=0, atol=0)


def test_train_fn_compiles_once_and_stops_where_told():
  config = tiny_config()
  run = setup.setup(config, mesh_of(8))
  state, splits = run.new_state(), run.splits
  with CompilationCounter() as first_call:
    state, _ = run.train_fn(state, splits.train_images, splits.train_labels, jnp.int32(2))
  assert first_call.count >= 1  # The counter sees compilations.
  with CompilationCounter() as compilations:
    for stop_step in (7, 8, 11):
      state, totals = run.train_fn(state, splits.train_images, splits.train_labels,
                                   jnp.int32(stop_step))
      assert int(state.step) == stop_step
  assert int(totals['count']) == 3 * config.batch_size
  assert compilations.count == 0


def test_eval_counts_every_example_exactly_once():
  config = tiny_config()  # 100 test images in batches of 64: the last batch is padded.
  run = setup.setup(config, mesh_of(8))
  state = run.new_state()
  result = evaluation.summarize_eval(run.eval_fn(state, *run.splits.eval_sets['test']))
  _, host = splits_lib.load_splits(config)
  images, labels = host['test']
  logits = run.model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                           normalize.normalize(images, state.image_mean, state.image_std),
                           train=False)
  assert result['num_examples'] == 100
  assert result['accuracy'] == pytest.approx(np.mean(np.argmax(logits, -1) == labels))
  losses = -jax.nn.log_softmax(logits)[np.arange(100), labels]
  assert result['loss'] == pytest.approx(float(np.mean(losses)), rel=1e-4)


def test_checkpoint_from_8_devices_restores_on_4(tmp_path):
  config = tiny_config()
  run = setup.setup(config, mesh_of(8))
  state, _ = run.train_fn(run.new_state(), run.splits.train_images, run.splits.train_labels,
                          jnp.int32(2))
  checkpoints = Checkpoints(str(tmp_path))
  checkpoints.save(state, score=0.0)
  checkpoints.wait()
  restored = checkpoints.restore(setup.setup(config, mesh_of(4)).new_state(), step=2)
  checkpoints.close()
  assert restored.params['head']['kernel'].sharding.mesh.size == 4
  assert_trees_close(jax.device_get(restored), jax.device_get(state), rtol=0, atol=0)


def test_resumed_run_ends_like_an_uninterrupted_one(tmp_path):
  # Evaluations every epoch (8 steps); the interruption at step 5 is mid-epoch.
  config = tiny_config(**{'plateau.enabled': True, 'plateau.patience': 1})
  uninterrupted = loop.train_and_evaluate(config, str(tmp_path / 'a'))
  config.max_steps = 5
  loop.train_and_evaluate(config, str(tmp_path / 'b'))
  config.max_steps = 0
  resumed = loop.train_and_evaluate(config, str(tmp_path / 'b'))
  assert int(resumed.step) == int(uninterrupted.step) == 16
  assert_trees_close(jax.device_get(resumed), jax.device_get(uninterrupted), rtol=1e-5, atol=1e-6)


def test_training_on_learnable_data_drives_the_loss_down(tmp_path):
  config = tiny_config(**{'num_epochs': 8, 'optimizer.learning_rate': 0.1})
  loop.train_and_evaluate(config, str(tmp_path))
  records = workdir.read_metrics(str(tmp_path))
  assert [r['epoch'] for r in records] == [1, 2, 3, 4, 5, 6, 7, 8]
  assert records[-1]['train_loss'] < 0.5 * records[0]['train_loss']
  assert records[-1]['test_accuracy'] > 0.4  # Chance is 0.1.


def test_workdir_outputs(tmp_path):
  config = tiny_config(**{'num_epochs': 1})
  loop.train_and_evaluate(config, str(tmp_path))
  assert json.load(open(tmp_path / 'config.json'))['model']['width'] == 4
  (record,) = workdir.read_metrics(str(tmp_path))
  for key in ('step', 'epoch', 'train_loss', 'train_accuracy', 'test_loss', 'test_accuracy',
              'test_top5_accuracy', 'learning_rate', 'images_per_sec'):
    assert key in record
  assert any(name.startswith('events.out.tfevents') for name in
             os.listdir(tmp_path / 'tensorboard'))
  assert Checkpoints(str(tmp_path), read_only=True).all_steps() == [8]
  assert not (tmp_path / 'profile').exists()  # config.profile_steps is off.


def test_plateau_lowers_the_rate_and_early_stopping_ends_the_run(tmp_path):
  # No evaluation can improve by more than 10 accuracy points' worth... of 1.0:
  # every evaluation after the first is a flat one.
  config = tiny_config(**{'num_epochs': 10, 'plateau.enabled': True, 'plateau.patience': 1,
                          'plateau.factor': 0.5, 'plateau.min_delta': 10.0,
                          'early_stopping.enabled': True, 'early_stopping.patience': 3,
                          'early_stopping.min_delta': 10.0})
  loop.train_and_evaluate(config, str(tmp_path))
  records = workdir.read_metrics(str(tmp_path))
  rates = [r['learning_rate'] for r in records]
  # Each record logs the rate the epoch trained with; the cut after evaluation
  # k shows in record k+1.
  assert rates == pytest.approx([0.05, 0.05, 0.025, 0.0125])
  assert len(records) == 4  # Stopped after 3 evaluations without improvement, not 10.


def test_validation_split_is_held_out_and_monitored(tmp_path):
  # With the recipe options on, to run them through the loop once.
  config = tiny_config(**{'num_epochs': 1, 'dataset.validation_size': 64, 'ema_decay': 0.9,
                          'eval_flip_tta': True, 'optimizer.sam_rho': 0.05,
                          'label_smoothing': 0.1, 'optimizer.grad_clip_norm': 1.0,
                          'augment.randaugment_ops': 2, 'augment.mixup_alpha': 0.2,
                          'augment.cutmix_alpha': 1.0})
  loop.train_and_evaluate(config, str(tmp_path))
  (record,) = workdir.read_metrics(str(tmp_path))
  assert record['val_num_examples'] == 64 and record['test_num_examples'] == 100
  assert record['step'] == (256 - 64) // 32
  assert record['ema_val_num_examples'] == 64 and 'ema_test_accuracy' in record


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  config = tiny_config(**{'num_epochs': 1})
  loop.train_and_evaluate(config, str(tmp_path))
  config.num_epochs = 2
  config.optimizer.learning_rate = 1e30
  with pytest.raises(UserError, match='loss became'):
    loop.train_and_evaluate(config, str(tmp_path))
  assert Checkpoints(str(tmp_path), read_only=True).all_steps() == [8]


def test_a_run_diverging_before_its_first_checkpoint_says_so(tmp_path):
  checkpoints = Checkpoints(str(tmp_path))
  with pytest.raises(UserError, match='between steps 0 and 3; .*no checkpoint had been saved'):
    loop.check_finite({'loss_sum': np.nan}, 0, 3, checkpoints, None)
  loop.check_finite({'loss_sum': 1.5}, 0, 3, checkpoints, None)  # A finite loss passes.
  checkpoints.close()


def test_batch_that_does_not_divide_across_devices_is_a_clear_error(tmp_path):
  with pytest.raises(UserError, match='divide evenly'):
    loop.train_and_evaluate(tiny_config(**{'batch_size': 36}), str(tmp_path))
