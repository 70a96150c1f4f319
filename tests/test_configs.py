"""Every config in configs/: its model at full size is well-formed, and its recipe trains two
steps on synthetic data and evaluates, on CPU. And a bad config value is refused before any
work starts, in one line naming its field.

The full-size model is checked by shapes alone (`jax.eval_shape`: nothing is compiled). The two
steps run with the config's model family at its tiny size (`models.TINY`), keeping every other
field of the config — optimiser, schedule, augmentation, mining, EMA, the model's dtype and
regularisers — so that compiling WRN-28-10 or ViT-B/16 on CPU does not dominate the suite;
each family at its tiny size is tested in test_models.py. Batch sizes and synthetic split sizes
are shrunk (to 16 and 64/32 examples). Fine-tuning configs, which require a pretrained file,
start from a fresh initialisation at an input size of at most 64 here; loading is tested in
test_pretrained.py.
"""
import glob
import os

import jax
import ml_collections
import numpy as np
import pytest
from conftest import CONFIG_DIR, load_config_file, mesh_of, run_command, tiny_config

from cifar_jax import config as config_lib
from cifar_jax import models, workdir
from cifar_jax.config import MODEL_SETTINGS
from cifar_jax.errors import UserError
from cifar_jax.training import loop, setup

CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, '*.py')))


def test_every_config_is_listed():
  assert len(CONFIGS) >= 14


def synthetic_config(path):
  config = load_config_file(path)
  config.update_from_flattened_dict({
      'dataset.source': 'synthetic', 'max_steps': 2, 'dataset.synthetic_train_size': 64,
      'dataset.synthetic_test_size': 32, 'batch_size': 16, 'eval_batch_size': 32})
  if config.model.init_from is None:
    config.model.init_from = ''
    config.model.input_size = min(config.model.input_size, 64)
  return config


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.basename(p)[:-3])
def test_config_model_is_well_formed_at_full_size(path):
  config = synthetic_config(path)
  num_classes = 100 if config.dataset.name == 'cifar100' else 10
  model = models.from_config(config.model, num_classes)
  size = config.model.input_size
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                np.zeros((1, size, size, 3)), train=False))
  assert variables['params']['head']['kernel'].shape[-1] == num_classes


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.basename(p)[:-3])
def test_config_recipe_trains_two_steps_on_synthetic_data(path, tmp_path, monkeypatch):
  config = synthetic_config(path)
  name = config.model.name
  monkeypatch.setitem(models.MODELS, name, models.TINY[name])
  # The tiny variant fixes its sizes, so they are no longer config fields: drop the config's.
  kept = (*MODEL_SETTINGS, *models.config_fields(name))
  config.model = ml_collections.ConfigDict(
      {k: v for k, v in config.model.items() if k in kept})
  state = loop.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 2
  (record,) = workdir.read_metrics(str(tmp_path))
  assert record['step'] == 2 and record['test_num_examples'] == 32
  assert np.isfinite(record['train_loss']) and np.isfinite(record['test_loss'])


def model(name, input_size=32, **fields):
  """`config.model` for model `name` with `fields`, at `input_size`."""
  model_config = config_lib.model_config(name, **fields)
  model_config.input_size = input_size
  return model_config


# (overrides of `tiny_config`, its model or None, what the error says). Each crashed with a
# traceback from JAX, optax or NumPy, or ran out of memory, before its field was checked.
BAD_CONFIGS = {
    'width_negative': ({'model.width': -4}, None,
                       'config.model.width must be a positive integer, got -4.'),
    'width_zero': ({'model.width': 0}, None, 'config.model.width must be a positive integer'),
    'resnet_stem': ({}, model('resnet50', stem='vgg'), "config.model.stem='vgg' is not one of"),
    'resnet_bn_epsilon': ({}, model('resnet18', bn_epsilon=0.0),
                          'config.model.bn_epsilon must be a positive number'),
    'bn_momentum': ({}, model('resnet18', bn_momentum=1.5),
                    r'config.model.bn_momentum must be a number in \[0, 1\)'),
    'preact_width': ({}, model('preact_resnet18', width=0), 'config.model.width must be'),
    'vgg_width': ({}, model('vgg16', width=-1), 'config.model.width must be'),
    'simple_cnn_input_size': ({}, model('simple_cnn', input_size=3),
                              'config.model.input_size=3: the model cannot be applied to 3x3'),
    'wrn_widen_factor': ({}, model('wide_resnet', depth=16, widen_factor=0),
                         'config.model.widen_factor must be a positive integer'),
    'wrn_dropout': ({}, model('wrn28_10', dropout_rate=1.0), 'config.model.dropout_rate must be'),
    'airbench_widths': ({}, model('airbench', widths=(8, -16, 16)),
                        'config.model.widths must be a non-empty tuple, each entry a positive'),
    'airbench_no_widths': ({}, model('airbench', widths=()), 'config.model.widths must be'),
    'airbench_convs': ({}, model('airbench', convs_per_group=0),
                       'config.model.convs_per_group must be a positive integer'),
    'airbench_input_size': ({}, model('airbench', input_size=24), 'config.model.input_size=24'),
    'vit_depth_rate': ({}, model('vit_small_p4', stochastic_depth_rate=1.5),
                       'config.model.stochastic_depth_rate must be'),
    'vit_representation': ({}, model('vit_b16', representation_size=0),
                           'config.model.representation_size must be a positive integer'),
    'vit_classifier': ({}, model('vit_b16', classifier='pool'), 'config.model.classifier'),
    'efficientnet_drop': ({}, model('efficientnet_b0', drop_connect_rate=-0.2),
                          'config.model.drop_connect_rate must be'),
    'efficientnet_padding': ({}, model('efficientnet_b0', padding='valid'),
                             "config.model.padding='valid' is not one of same, symmetric"),
    'efficientnet_stem_strides': ({}, model('efficientnetv2_b0', stem_strides=0),
                                  'config.model.stem_strides must be a positive integer'),
    'efficientnet_bn_epsilon': ({}, model('efficientnetv2_b0', bn_epsilon=-1e-3),
                                'config.model.bn_epsilon must be a positive number'),
    'xception_blocks': ({}, model('xception', middle_blocks=-1),
                        'config.model.middle_blocks must be an integer >= 0'),
    'seed': ({'seed': -1}, None, r'config.seed must be an integer in \[0, 2\*\*63\)'),
    'decay_factor': ({'schedule.name': 'piecewise', 'schedule.decay_factor': -1.0}, None,
                     'config.schedule.decay_factor must be >= 0'),
    'boundaries': ({'schedule.name': 'piecewise', 'schedule.boundaries_epochs': (-1,)}, None,
                   'config.schedule.boundaries_epochs must be epochs >= 0'),
    'warmup': ({'schedule.name': 'cosine', 'schedule.warmup_epochs': 2.0}, None,
               'config.schedule.warmup_epochs=2.0 must be less than config.num_epochs=2'),
    'plateau_factor': ({'plateau.enabled': True, 'plateau.factor': 0.0}, None,
                       r'config.plateau.factor must be in \(0, 1\)'),
    'plateau_min_delta': ({'plateau.min_delta': 0.0}, None,
                          'config.plateau.min_delta must be positive'),
    'early_stopping_patience': ({'early_stopping.enabled': True,
                                 'early_stopping.patience': -1}, None,
                                'config.early_stopping.patience must be >= 0'),
    'momentum': ({'optimizer.momentum': 1.5}, None, r'config.optimizer.momentum must be in \[0'),
    'dtype': ({'model.dtype': 'float64'}, None, "config.model.dtype='float64' is not one of"),
    'eval_batch_in_memory': ({'eval_batch_size': 10**8}, None,
                             'config.eval_batch_size=100000000 cannot fit in memory'),
}


@pytest.mark.parametrize('overrides,model_config,message', BAD_CONFIGS.values(),
                         ids=BAD_CONFIGS.keys())
def test_check_config_names_the_bad_field(overrides, model_config, message):
  config = tiny_config(**overrides)
  if model_config is not None:
    config.model = model_config
  with pytest.raises(UserError, match=message):
    setup.check_config(config, num_devices=8)


def test_model_families_check_their_fixed_sizes_too():
  with pytest.raises(UserError, match='hidden_size=32 must be a multiple of .*num_heads=3'):
    models.TINY['vit_b16'](num_classes=10, num_heads=3)
  with pytest.raises(UserError, match='config.model.patch_size must be a positive integer'):
    models.TINY['vit_b16'](num_classes=10, patch_size=0)


@pytest.mark.parametrize('memory,sharing,field,fits,advice', [
    # A CPU: the mesh's 8 devices share the host's memory.
    (1000, 8, 'eval_batch_size', 1000, 'try 8 or less'),  # 1000 // 64 examples, 8 devices.
    (100, 1, 'batch_size', 800, 'try 8 or less'),  # A GPU each: it holds an eighth of a batch.
    (2, 1, 'batch_size', 16, 'no batch is likely to fit'),
])
def test_check_memory_refuses_a_batch_too_big_for_memory(monkeypatch, memory, sharing, field,
                                                         fits, advice):
  config = tiny_config(**{'batch_size': 8, 'eval_batch_size': 8, field: fits + 8})
  per_example = models.largest_activation_bytes(models.from_config(config.model, 10), 32)
  assert per_example == 32 * 32 * 4 * 4  # The stem's output: 4 channels at 32x32, float32.
  # `memory` examples' worth of memory, shared by `sharing` devices.
  monkeypatch.setattr(setup, 'memory_per_device', lambda: (memory * per_example, sharing))
  with pytest.raises(UserError, match=f'config.{field}={fits + 8} cannot fit in memory.*{advice}'):
    setup.check_config(config, num_devices=8)
  config[field] = fits
  setup.check_config(config, num_devices=8)


def test_eval_batch_size_is_lowered_to_the_largest_evaluation_split():
  config = tiny_config(eval_batch_size=1024)  # 100 test images, 8 devices.
  run = setup.setup(config, mesh_of(8))
  assert config.eval_batch_size == 104
  assert run.splits.eval_sets['test'][0].shape[0] == 104


@pytest.mark.parametrize('override,message', [
    ('--config.model.width=-4', 'error: config.model.width must be a positive integer, got -4.'),
    ('--config.eval_batch_size=100000000',
     'error: config.eval_batch_size=100000000 cannot fit in memory'),
])
def test_main_reports_a_bad_config_in_one_line_before_any_work(tmp_path, override, message):
  result = run_command('cifar_jax.main', '--config=configs/smoke.py',
                       f'--workdir={tmp_path / "run"}', override)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  # Refused before the run's files were written (the workdir holds its lock alone).
  assert not (tmp_path / 'run' / 'config.json').exists()
