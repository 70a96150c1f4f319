"""The train and eval steps and the loop: parallel equals serial, resume equals uninterrupted."""
import json
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from cifar_jax import augment, data, metrics, optim, sharding, steps, train
from cifar_jax import config as config_lib
from cifar_jax.checkpoint import Checkpoints
from cifar_jax.errors import UserError


def tiny_config(**overrides):
  """A small ResNet on synthetic CIFAR-10: 256 training images, batch 32 (8 steps an epoch)."""
  config = config_lib.base_config()
  config.dataset.name = 'cifar10'
  config.dataset.source = 'synthetic'
  config.dataset.synthetic_train_size = 256
  config.dataset.synthetic_test_size = 100
  config.model.name = 'resnet10'
  config.model.width = 4
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_epochs = 2
  config.steps_per_call = 3
  config.schedule.name = 'constant'
  config.optimizer.learning_rate = 0.05
  config.update_from_flattened_dict(overrides)
  return config


def mesh_of(num_devices):
  return Mesh(np.array(jax.devices()[:num_devices]), (sharding.DATA_AXIS,))


def build(config, mesh):
  """Everything the loop builds, on `mesh`: (state, splits, train_fn, eval_fn, model)."""
  dataset, host = train.load_host_splits(config)
  splits = train.place_splits(host, dataset.num_classes, config.eval_batch_size, mesh)
  steps_per_epoch = splits.num_train // config.batch_size
  model = train.create_model(config, dataset.num_classes)
  optimizer = optim.create_optimizer(config, optim.create_schedule(config, steps_per_epoch))
  state = train.create_train_state(config, model, optimizer, optim.create_plateau(config),
                                   augment.channel_stats(host['train'][0]), mesh)
  train_fn = train.compile_train_fn(config, model, optimizer, mesh, splits.num_train,
                                    steps_per_epoch)
  eval_fn = train.compile_eval_fn(config, model, mesh, dataset.num_classes)
  return state, splits, train_fn, eval_fn, model, host


def assert_trees_close(a, b, rtol=1e-4, atol=1e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y),
                                                       rtol=rtol, atol=atol), a, b)


@pytest.mark.parametrize('hem_mode,steps_per_call', [('topk', 3), ('off', 1)])
def test_steps_on_8_devices_equal_the_same_global_batches_on_1(hem_mode, steps_per_call):
  config = tiny_config(**{'hem.mode': hem_mode, 'augment.cutout_size': 8,
                          'steps_per_call': steps_per_call})
  results = []
  for num_devices in (1, 8):
    state, splits, train_fn, *_ = build(config, mesh_of(num_devices))
    for stop_step in range(steps_per_call, 4, steps_per_call):  # Three steps in all.
      state, totals = train_fn(state, splits.train_images, splits.train_labels,
                               jnp.int32(stop_step))
    results.append((jax.device_get(state), jax.device_get(totals)))
  (one, one_totals), (eight, eight_totals) = results
  assert int(one.step) == int(eight.step) == 3
  assert_trees_close(one.params, eight.params)
  assert_trees_close(one.batch_stats, eight.batch_stats)
  assert_trees_close(one.opt_state, eight.opt_state)
  assert_trees_close(one_totals, eight_totals)


def test_train_fn_compiles_once_and_stops_where_told():
  config = tiny_config()
  state, splits, train_fn, *_ = build(config, mesh_of(8))
  with metrics.CompilationCounter() as first_call:
    state, _ = train_fn(state, splits.train_images, splits.train_labels, jnp.int32(2))
  assert first_call.count >= 1  # The counter sees compilations.
  with metrics.CompilationCounter() as compilations:
    for stop_step in (7, 8, 11):
      state, totals = train_fn(state, splits.train_images, splits.train_labels,
                               jnp.int32(stop_step))
      assert int(state.step) == stop_step
  assert int(totals['count']) == 3 * config.batch_size
  assert compilations.count == 0


def test_an_epoch_visits_distinct_examples_and_epochs_differ():
  permutation = jax.random.permutation(jax.random.PRNGKey(0), 100)
  epoch = [np.asarray(steps.batch_indices(permutation, step, batch_size=32, steps_per_epoch=3))
           for step in range(3)]
  assert len(set(np.concatenate(epoch))) == 96  # Three whole batches; 4 rows skipped.
  next_epoch_first = steps.batch_indices(permutation, 3, batch_size=32, steps_per_epoch=3)
  np.testing.assert_array_equal(next_epoch_first, epoch[0])  # Same permutation, same slice.


def test_eval_counts_every_example_exactly_once():
  config = tiny_config()  # 100 test images in batches of 64: the last batch is padded.
  state, splits, _, eval_fn, model, host = build(config, mesh_of(8))
  result = metrics.summarize_eval(eval_fn(state, *splits.eval_sets['test']))
  images, labels = host['test']
  logits = model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                       augment.normalize(images, state.image_mean, state.image_std), train=False)
  assert result['num_examples'] == 100
  assert result['accuracy'] == pytest.approx(np.mean(np.argmax(logits, -1) == labels))
  losses = -jax.nn.log_softmax(logits)[np.arange(100), labels]
  assert result['loss'] == pytest.approx(float(np.mean(losses)), rel=1e-4)


def test_checkpoint_from_8_devices_restores_on_4(tmp_path):
  config = tiny_config()
  state, splits, train_fn, *_ = build(config, mesh_of(8))
  state, _ = train_fn(state, splits.train_images, splits.train_labels, jnp.int32(2))
  checkpoints = Checkpoints(str(tmp_path))
  checkpoints.save(state, score=0.0)
  checkpoints.wait()
  target, *_ = build(config, mesh_of(4))
  restored = checkpoints.restore(target, step=2)
  checkpoints.close()
  assert restored.params['head']['kernel'].sharding.mesh.size == 4
  assert_trees_close(jax.device_get(restored), jax.device_get(state), rtol=0, atol=0)


def test_resumed_run_ends_like_an_uninterrupted_one(tmp_path):
  # Evaluations every epoch (8 steps); the interruption at step 5 is mid-epoch.
  config = tiny_config(**{'plateau.enabled': True, 'plateau.patience': 1})
  uninterrupted = train.train_and_evaluate(config, str(tmp_path / 'a'))
  config.max_steps = 5
  train.train_and_evaluate(config, str(tmp_path / 'b'))
  config.max_steps = 0
  resumed = train.train_and_evaluate(config, str(tmp_path / 'b'))
  assert int(resumed.step) == int(uninterrupted.step) == 16
  assert_trees_close(jax.device_get(resumed), jax.device_get(uninterrupted), rtol=1e-5, atol=1e-6)


def test_training_on_learnable_data_drives_the_loss_down(tmp_path):
  config = tiny_config(**{'num_epochs': 8, 'optimizer.learning_rate': 0.1})
  train.train_and_evaluate(config, str(tmp_path))
  records = metrics.read_metrics(str(tmp_path))
  assert [r['epoch'] for r in records] == [1, 2, 3, 4, 5, 6, 7, 8]
  assert records[-1]['train_loss'] < 0.5 * records[0]['train_loss']
  assert records[-1]['test_accuracy'] > 0.4  # Chance is 0.1.


def test_workdir_outputs(tmp_path):
  config = tiny_config(**{'num_epochs': 1})
  train.train_and_evaluate(config, str(tmp_path))
  assert json.load(open(tmp_path / 'config.json'))['model']['width'] == 4
  (record,) = metrics.read_metrics(str(tmp_path))
  for key in ('step', 'epoch', 'train_loss', 'train_accuracy', 'test_loss', 'test_accuracy',
              'test_top5_accuracy', 'learning_rate', 'images_per_sec'):
    assert key in record
  assert any(name.startswith('events.out.tfevents') for name in
             os.listdir(tmp_path / 'tensorboard'))
  assert Checkpoints(str(tmp_path), read_only=True).all_steps() == [8]


def test_plateau_lowers_the_rate_and_early_stopping_ends_the_run(tmp_path):
  # No evaluation can improve by more than 10 accuracy points' worth... of 1.0:
  # every evaluation after the first is a flat one.
  config = tiny_config(**{'num_epochs': 10, 'plateau.enabled': True, 'plateau.patience': 1,
                          'plateau.factor': 0.5, 'plateau.min_delta': 10.0,
                          'early_stopping.enabled': True, 'early_stopping.patience': 3,
                          'early_stopping.min_delta': 10.0})
  train.train_and_evaluate(config, str(tmp_path))
  records = metrics.read_metrics(str(tmp_path))
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
  train.train_and_evaluate(config, str(tmp_path))
  (record,) = metrics.read_metrics(str(tmp_path))
  assert record['val_num_examples'] == 64 and record['test_num_examples'] == 100
  assert record['step'] == (256 - 64) // 32
  assert record['ema_val_num_examples'] == 64 and 'ema_test_accuracy' in record


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  config = tiny_config(**{'num_epochs': 1})
  train.train_and_evaluate(config, str(tmp_path))
  config.num_epochs = 2
  config.optimizer.learning_rate = 1e30
  with pytest.raises(UserError, match='loss became'):
    train.train_and_evaluate(config, str(tmp_path))
  assert Checkpoints(str(tmp_path), read_only=True).all_steps() == [8]


def test_batch_that_does_not_divide_across_devices_is_a_clear_error(tmp_path):
  with pytest.raises(UserError, match='divide evenly'):
    train.train_and_evaluate(tiny_config(**{'batch_size': 36}), str(tmp_path))


def write_official_cifar100(directory):
  """A small CIFAR-100 in the official `cifar-100-python/` layout, from synthetic images."""
  dataset = data.load('cifar100', 'synthetic', synthetic_train_size=320, synthetic_test_size=100)
  folder = directory / 'cifar-100-python'
  folder.mkdir()
  for name, split in (('train', dataset.train), ('test', dataset.test)):
    rows = split.images.transpose(0, 3, 1, 2).reshape(len(split.labels), -1)  # 1024 R, G, B.
    content = {'data': rows, 'fine_labels': split.labels.tolist(),
               'coarse_labels': split.coarse_labels.tolist(),
               'filenames': [f'{i}.png' for i in range(len(split.labels))]}
    (folder / name).write_bytes(pickle.dumps(content, protocol=4))
  (folder / 'meta').write_bytes(pickle.dumps(
      {'fine_label_names': list(dataset.class_names),
       'coarse_label_names': list(dataset.coarse_class_names)}, protocol=4))


def test_cifar100_from_official_files_trains_and_evaluates(tmp_path):
  write_official_cifar100(tmp_path)
  config = tiny_config(**{'dataset.name': 'cifar100', 'dataset.source': 'local',
                          'dataset.data_dir': str(tmp_path), 'num_epochs': 1})
  state = train.train_and_evaluate(config, str(tmp_path / 'workdir'))
  assert state.params['head']['kernel'].shape[-1] == 100
  (record,) = metrics.read_metrics(str(tmp_path / 'workdir'))
  assert record['step'] == 10 and record['test_num_examples'] == 100
