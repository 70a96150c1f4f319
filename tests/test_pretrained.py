"""Loading pretrained weights: the ViT .npz layout, head and stem surgery, errors, fine-tuning.

The files are written here in each real layout (same names, nesting and dtypes) with random
values at small widths. Numerical agreement with PyTorch is in test_pretrained_torch.py.
"""
import functools
import os

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import safetensors.numpy
from conftest import (
  CONFIG_DIR,
  WritesAFileWhenUnpickled,
  assert_load_refused,
  load_config_file,
  tiny_config,
  zero_variables,
)

from cifar_jax import config as config_lib
from cifar_jax import models, pretrained
from cifar_jax.errors import UserError
from cifar_jax.models import vit
from cifar_jax.pretrained import resnet as resnet_layout
from cifar_jax.training import loop, optim

TINY_VIT = functools.partial(vit.VisionTransformer, patch_size=4, hidden_size=16, num_layers=2,
                             num_heads=2, mlp_dim=32)


def init_variables(model, size=32, seed=0):
  variables = jax.jit(lambda: model.init(jax.random.PRNGKey(seed), jnp.zeros((1, size, size, 3)),
                                         train=False))()
  variables = jax.device_get(variables)
  return variables['params'], variables.get('batch_stats', {})


def write_vit_npz(path, params):
  """A checkpoint as the ViT releases store it: the flat '/'-joined parameter names."""
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  np.savez(path, **{name: np.asarray(value) for name, value in flat.items()})


def pretrained_vit_params():
  """A "pre-trained" tiny ViT: 1000 classes and a pre_logits layer, at 32x32 (8x8 patches)."""
  model = TINY_VIT(num_classes=1000, representation_size=16)
  params, _ = zero_variables(model)
  # Random values everywhere, so every loaded parameter can be told from a fresh one.
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(0)
  return jax.tree.unflatten(treedef, [rng.normal(size=x.shape).astype(np.float32)
                                      for x in leaves])


def test_vit_npz_loads_with_a_new_head_and_without_pre_logits(tmp_path):
  source = pretrained_vit_params()
  path = str(tmp_path / 'ViT-tiny.npz')
  write_vit_npz(path, source)
  model = TINY_VIT(num_classes=10)
  params, batch_stats, notes = pretrained.load(path, model, *init_variables(model))
  assert batch_stats == {}
  assert notes == ['head/bias: starts afresh with shape (10,); the file\'s head/bias has shape '
                   '(1000,)',
                   'head/kernel: starts afresh with shape (16, 10); the file\'s head/kernel has '
                   'shape (16, 1000)',
                   'left out of the file: pre_logits/bias, pre_logits/kernel']
  np.testing.assert_array_equal(params['head']['kernel'], 0)  # The fine-tuning recipe's head.
  # The loaded model runs.
  assert model.apply({'params': params}, jnp.zeros((2, 32, 32, 3)), train=False).shape == (2, 10)
  del source['head'], source['pre_logits'], params['head']
  jax.tree.map(np.testing.assert_array_equal, params, source)


def test_vit_position_embedding_is_resampled_to_a_finer_grid(tmp_path):
  source = pretrained_vit_params()
  width = 16
  # The class token's embedding, then an 8x8 grid constant in each channel.
  grid = np.tile(np.arange(width, dtype=np.float32), (64, 1))
  source['Transformer']['posembed_input']['pos_embedding'] = np.concatenate(
      [np.full((1, width), -7.0, np.float32), grid])[None]
  path = str(tmp_path / 'ViT-tiny.npz')
  write_vit_npz(path, source)
  model = TINY_VIT(num_classes=10)
  params, _, _ = pretrained.load(path, model, *init_variables(model, size=64))
  embedding = params['Transformer']['posembed_input']['pos_embedding']
  assert embedding.shape == (1, 1 + 16 * 16, width)  # 64x64 images, 4x4 patches.
  np.testing.assert_array_equal(embedding[0, 0], -7.0)
  # Resampling a constant field keeps it constant.
  np.testing.assert_allclose(embedding[0, 1:], np.tile(np.arange(width), (256, 1)), atol=1e-5)
  logits = model.apply({'params': params}, jnp.zeros((1, 64, 64, 3)), train=False)
  assert logits.shape == (1, 10)


def test_resampling_a_position_embedding_interpolates_between_neighbours():
  # A 2x2 grid upsampled to 4x4: each new token lies between its neighbours' values.
  embedding = np.array([[0.0], [0.0], [1.0], [2.0], [3.0]], np.float32)[None]  # Class + 2x2.
  resized = pretrained.vit.resize_position_embedding(embedding, (1, 17, 1))
  grid = resized[0, 1:, 0].reshape(4, 4)
  assert resized[0, 0, 0] == 0.0
  assert grid[0, 0] == 0.0 and grid[3, 3] == 3.0  # Corners keep the corner values.
  assert np.all(np.diff(grid, axis=0) >= 0) and np.all(np.diff(grid, axis=1) >= 0)
  with pytest.raises(ValueError, match='square grid'):
    pretrained.vit.resize_position_embedding(embedding, (1, 11, 1))


def torchvision_state_dict(model_name, width, seed=0):
  """A "pretrained" ImageNet ResNet's state dict in torchvision's names and layouts.

  7x7 stem, 1000 classes, random values of a trained network's scale (He-normal kernels,
  positive variances), and torchvision's BatchNorm counters.
  """
  model = models.create_model(model_name, num_classes=1000, width=width, stem='imagenet')
  params, batch_stats = zero_variables(model, size=64)
  rng = np.random.default_rng(seed)

  def randomise(path, value):
    if path[-1].key == 'kernel':
      return rng.normal(size=value.shape) * np.sqrt(2 / np.prod(value.shape[:-1]))
    if path[-1].key in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, size=value.shape)
    return rng.normal(size=value.shape) * 0.1

  params, batch_stats = jax.tree_util.tree_map_with_path(randomise, (params, batch_stats))
  state = resnet_layout.to_torchvision(params, batch_stats)
  for name in list(state):
    if name.endswith('running_mean'):
      state[name.replace('running_mean', 'num_batches_tracked')] = np.array(100, np.int64)
  return state


def test_exported_state_dict_loads_back_unchanged(tmp_path):
  model = models.create_model('resnet18', num_classes=1000, width=8, stem='imagenet')
  state = torchvision_state_dict('resnet18', width=8)
  path = str(tmp_path / 'resnet18.safetensors')
  safetensors.numpy.save_file(state, path)
  params, batch_stats, _ = pretrained.load(path, model, *init_variables(model))
  exported = resnet_layout.to_torchvision(params, batch_stats)
  assert exported.keys() == {k for k in state if not k.endswith('num_batches_tracked')}
  for name, array in exported.items():
    np.testing.assert_array_equal(array, state[name])


def test_torchvision_resnet_loads_into_the_cifar_stem_with_a_new_head(tmp_path):
  model = models.create_model('resnet18', num_classes=10, width=8)  # CIFAR stem.
  state = torchvision_state_dict('resnet18', width=8)
  path = str(tmp_path / 'resnet18.safetensors')
  safetensors.numpy.save_file(state, path)
  fresh_params, fresh_stats = init_variables(model)
  params, batch_stats, notes = pretrained.load(path, model, fresh_params, fresh_stats)
  assert notes[:3] == [
      'head/bias: starts afresh with shape (10,); the file\'s fc.bias has shape (1000,)',
      'head/kernel: starts afresh with shape (64, 10); the file\'s fc.weight has shape (64, 1000)',
      'stem_conv/kernel: starts afresh with shape (3, 3, 3, 8); the file\'s conv1.weight has '
      'shape (7, 7, 3, 8)']
  np.testing.assert_array_equal(params['stem_conv']['kernel'], fresh_params['stem_conv']['kernel'])
  np.testing.assert_array_equal(params['head']['kernel'], 0)
  np.testing.assert_array_equal(params['stage2_block0']['proj_conv']['kernel'],
                                state['layer2.0.downsample.0.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params['stage4_block1']['bn2']['scale'],
                                state['layer4.1.bn2.weight'])
  np.testing.assert_array_equal(batch_stats['stem_bn']['var'], state['bn1.running_var'])


@pytest.fixture(scope='module')
def resnet18_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('weights') / 'resnet18.safetensors')
  safetensors.numpy.save_file(torchvision_state_dict('resnet18', width=8), path)
  return path


@pytest.mark.parametrize('model_name, fields, message', [
    # ResNet-50's blocks have a third convolution and BatchNorm.
    ('resnet50', {'width': 8}, r"has no 'layer1.0.bn3.bias' for the model's "
                               r'stage1_block0/bn3/bias \(32,\): is it a checkpoint of another'),
    ('resnet34', {'width': 8}, r"has no 'layer1.2.bn1.bias' for the model's "
                               r'stage1_block2/bn1/bias'),
    ('resnet18', {'width': 16}, r'layer1.0.bn1.bias has shape \(8,\) but the '
                                r"model's stage1_block0/bn1/bias needs \(16,\)"),
    ('resnet10', {'width': 8}, r'weights the model has no place for, e.g. layer1.1.bn1.bias'),
    ('vit_tiny_p4', {}, 'ViT models load .npz checkpoints'),
    ('vgg11', {}, r"has no 'features.1.bias' for the model's block1_bn1/bias \(64,\)"),
    ('simple_cnn', {}, 'pretrained weights load into .*, not SimpleCNN'),
])
def test_a_checkpoint_of_another_architecture_is_refused_naming_the_parameter(
    resnet18_file, model_name, fields, message):
  model = models.create_model(model_name, num_classes=10, **fields)
  assert_load_refused(resnet18_file, model, message)


def test_unreadable_files_are_refused_with_the_reason(tmp_path):
  model = models.create_model('resnet10', num_classes=10, width=4)
  variables = zero_variables(model)
  with pytest.raises(UserError, match='no such file'):
    pretrained.load(str(tmp_path / 'missing.safetensors'), model, *variables)
  (tmp_path / 'weights.ckpt').write_bytes(b'x')
  with pytest.raises(UserError, match="unknown extension '.ckpt'.*.npz, .safetensors"):
    pretrained.load(str(tmp_path / 'weights.ckpt'), model, *variables)
  (tmp_path / 'broken.safetensors').write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": 1')
  with pytest.raises(UserError, match='could not read .*broken.safetensors as a safetensors'):
    pretrained.load(str(tmp_path / 'broken.safetensors'), model, *variables)
  (tmp_path / 'truncated.h5').write_bytes(b'\x89HDF\r\n')
  with pytest.raises(UserError, match='could not read .*truncated.h5 as a Keras HDF5'):
    pretrained.load(str(tmp_path / 'truncated.h5'), model, *variables)


def test_an_npz_with_pickled_objects_is_refused_without_running_them(tmp_path):
  marker = tmp_path / 'ran'
  path = str(tmp_path / 'evil.npz')
  np.savez(path, payload=np.array([WritesAFileWhenUnpickled(str(marker))], dtype=object))
  model = TINY_VIT(num_classes=10)
  assert_load_refused(path, model, 'could not read .*evil.npz.*pickle')
  assert not marker.exists()


def test_resnet_with_frozen_batch_stats_normalises_with_the_running_averages():
  model = models.create_model('resnet10', num_classes=10, width=4, frozen_batch_stats=True)
  params, batch_stats = init_variables(model)
  batch_stats = jax.tree.map(lambda s: s + 0.5, batch_stats)
  variables = {'params': params, 'batch_stats': batch_stats}
  images = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 3))
  train_out, updated = model.apply(variables, images, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(train_out, model.apply(variables, images, train=False), rtol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, updated['batch_stats'], batch_stats)


def finetune_config(**overrides):
  config = config_lib.base_config()
  config.optimizer.momentum = 0.0
  config.optimizer.weight_decay = 0.0
  config.optimizer.learning_rate = 1.0
  config.schedule.name = 'constant'
  config.update_from_flattened_dict(overrides)
  return config


def updates_of(config, steps, grads):
  """The updates of `steps` optimiser steps, each on `grads`."""
  optimizer = optim.create_optimizer(config, optim.create_schedule(config, steps_per_epoch=10))
  state = optimizer.init(grads)
  updates = []
  for _ in range(steps):
    update, state = optimizer.update(grads, state, grads)
    updates.append(update)
  return updates


def test_backbone_learns_at_a_fraction_of_the_heads_rate():
  grads = {'head': {'kernel': np.ones(2, np.float32)}, 'body': {'kernel': np.ones(3, np.float32)}}
  (update,) = updates_of(finetune_config(**{'finetune.backbone_lr_scale': 0.1}), 1, grads)
  np.testing.assert_allclose(update['head']['kernel'], -1.0)
  np.testing.assert_allclose(update['body']['kernel'], -0.1)


def test_frozen_backbone_starts_with_fresh_momentum_at_the_unfreeze():
  grads = {'head': {'kernel': np.ones(2, np.float32)}, 'body': {'kernel': np.ones(3, np.float32)}}
  config = finetune_config(**{'finetune.freeze_backbone_steps': 3, 'optimizer.momentum': 0.9})
  updates = updates_of(config, 5, grads)
  for update in updates[:3]:
    np.testing.assert_array_equal(update['body']['kernel'], 0.0)
  # Momentum 0.9 on a constant gradient: 1, 1.9, 2.71, ... from each group's first step.
  np.testing.assert_allclose([u['head']['kernel'][0] for u in updates],
                             [-1.0, -1.9, -2.71, -3.439, -4.0951], rtol=1e-6)
  np.testing.assert_allclose([u['body']['kernel'][0] for u in updates[3:]], [-1.0, -1.9],
                             rtol=1e-6)


def test_frozen_backbone_follows_the_schedule_from_the_unfreeze_step():
  grads = {'head': {'kernel': np.ones(1, np.float32)}, 'body': {'kernel': np.ones(1, np.float32)}}
  config = finetune_config(**{'finetune.freeze_backbone_steps': 2, 'schedule.name': 'cosine',
                              'num_epochs': 1})  # 10 steps of cosine decay.
  schedule = optim.create_schedule(config, steps_per_epoch=10)
  updates = updates_of(config, 4, grads)
  np.testing.assert_allclose([u['body']['kernel'][0] for u in updates],
                             [0.0, 0.0, -schedule(2), -schedule(3)], rtol=1e-6)


@pytest.mark.parametrize('config_name, normalization', [
    ('vit_b16_c10_finetune', 'inception'), ('vit_b32_c100_finetune', 'inception'),
    ('resnet50_c10_finetune', 'imagenet'), ('resnet50_c100_finetune', 'caffe'),
    ('vgg19_c100_finetune', 'caffe'), ('efficientnet_b0_c100_finetune', 'imagenet'),
    ('efficientnetv2_b0_c100_finetune', 'imagenet')])
def test_finetuning_configs_normalise_as_their_weights_were_pretrained(config_name,
                                                                       normalization):
  config = load_config_file(os.path.join(CONFIG_DIR, f'{config_name}.py'))
  assert config.model.normalization == normalization
  assert config.model.init_from is None  # Required from the command line.


def test_config_requires_a_weights_file_where_the_recipe_needs_one():
  config = config_lib.base_config()
  config.model.init_from = ml_collections.config_dict.placeholder(str)
  with pytest.raises(UserError, match='--config.model.init_from=PATH'):
    models.check_config(config.model)


def test_finetunes_from_a_loaded_checkpoint_on_8_devices(resnet18_file, tmp_path):
  """Frozen backbone first (weights and statistics exactly the file's), then it learns too.

  The second run resumes from the workdir's checkpoint, which takes precedence over the file.
  """
  assert jax.device_count() == 8
  config = tiny_config(**{'steps_per_call': 1, 'finetune.freeze_backbone_steps': 2,
                          'finetune.backbone_lr_scale': 0.1, 'max_steps': 2})
  config.model = config_lib.model_config('resnet18', width=8, frozen_batch_stats=True,
                                         init_from=resnet18_file)
  workdir = str(tmp_path / 'run')
  state = loop.train_and_evaluate(config, workdir)
  file = safetensors.numpy.load_file(resnet18_file)
  params, batch_stats = jax.device_get((state.params, state.batch_stats))
  np.testing.assert_array_equal(params['stage3_block1']['conv2']['kernel'],
                                file['layer3.1.conv2.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(batch_stats['stage1_block0']['bn1']['mean'],
                                file['layer1.0.bn1.running_mean'])
  assert np.abs(params['head']['kernel']).max() > 0  # The head learnt from zero.

  config.max_steps = 4
  state = loop.train_and_evaluate(config, workdir)
  assert int(state.step) == 4
  moved = jax.device_get(state.params['stage3_block1']['conv2']['kernel'])
  assert not np.array_equal(moved, file['layer3.1.conv2.weight'].transpose(2, 3, 1, 0))
  assert np.all(np.isfinite(moved))


def test_images_are_resized_on_the_device_to_the_model_input(monkeypatch, tmp_path):
  """A ViT built for 64x64 inputs trains and evaluates on the 32x32 images, upsampled for it.

  Without the resize, its position embedding (sized for 64x64) would not fit the tokens.
  """
  monkeypatch.setitem(models.MODELS, 'tiny_vit_p8', functools.partial(TINY_VIT, patch_size=8))
  config = tiny_config(**{'max_steps': 1, 'steps_per_call': 1})
  config.model = config_lib.model_config('tiny_vit_p8', input_size=64)
  state = loop.train_and_evaluate(config, str(tmp_path))
  # 8x8 patches of a 64x64 image: 64 patch tokens and the class token.
  assert state.params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 65, 16)
  assert int(state.step) == 1
