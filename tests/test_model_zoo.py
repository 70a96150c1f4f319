"""Tests for the simple CNN, VGG, pre-activation ResNet and Wide ResNet families.

Compilation dominates the cost of these tests on CPU, so shapes, dtypes and parameter counts come
from `jax.eval_shape` (tracing only), and only one representative per family is compiled.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import build, mesh_of, tiny_config

from cifar_jax import config as config_lib
from cifar_jax.errors import UserError
from cifar_jax.models import config_fields, count_params, create_model

NAMES = ('simple_cnn', 'vgg11', 'vgg13', 'vgg16', 'vgg19', 'preact_resnet18', 'wide_resnet',
         'wrn16_8', 'wrn28_10')
IMAGE_SHAPE = (32, 32, 3)

# Small but complete versions of each family, one per model class, for the compiled tests.
SMALL_SIMPLE_CNN = ('simple_cnn', {'width': 4})
SMALL_VGG = ('vgg16', {'width': 4})
SMALL_PREACT = ('preact_resnet18', {'width': 4})
SMALL_WRN = ('wide_resnet', {'depth': 10, 'widen_factor': 2, 'width': 4, 'dropout_rate': 0.3})


@pytest.fixture(autouse=True)
def _fast_prng_compilation():
  # XLA:CPU compiles JAX's default (partitionable) threefry several times slower than the
  # classic one, which matters for the random initialisers and dropout masks compiled here.
  # The tests need random numbers, not particular ones.
  with jax.threefry_partitionable(False):
    yield


def _images(batch, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, *IMAGE_SHAPE)).astype(np.float32)


def _abstract_variables(model):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), _images(1), train=False))


def _random_variables(model, seed=0):
  """Random parameters and BatchNorm statistics for `model`, drawn on the host.

  Compiling a model's initialisers takes seconds on CPU; these tests only need values of the
  right shapes and scales. Unlike a fresh init, the head is not zero (so logits depend on the
  whole network) and the running statistics are not the identity (so eval mode uses them).
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'kernel':  # He-normal, so activations keep their scale through ReLUs.
      values = rng.normal(scale=math.sqrt(2 / math.prod(leaf.shape[:-1])), size=leaf.shape)
    elif name in ('scale', 'var'):
      values = rng.uniform(0.5, 1.5, size=leaf.shape)
    else:  # Biases and running means.
      values = rng.normal(scale=0.1, size=leaf.shape)
    return values.astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, _abstract_variables(model))


@functools.partial(jax.jit, static_argnames=('model', 'train'))
def _forward(model, variables, x, dropout_key, *, train):
  logits, _ = model.apply(variables, x, train=train, mutable=['batch_stats'],
                          rngs={'dropout': dropout_key})
  return logits


@pytest.mark.parametrize('name', NAMES)
def test_output_shapes_and_dtypes(name):
  fields = {'depth': 10} if name == 'wide_resnet' else {}
  model = create_model(name, num_classes=7, width=4, **fields)
  variables = _abstract_variables(model)
  x = _images(3)
  # Called as the train and eval steps call it: eval mode needs no dropout PRNG.
  train_logits, updates = jax.eval_shape(functools.partial(
      model.apply, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.key(1)}),
      variables, x)
  eval_logits = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  for logits in (train_logits, eval_logits):
    assert logits.shape == (3, 7)
    assert logits.dtype == jnp.float32
  assert jax.tree.structure(updates['batch_stats']) == jax.tree.structure(
      variables['batch_stats'])


@pytest.mark.parametrize('name,expected', [
    # Two conv blocks, Dense 128 on the 8x8x64 features, head.
    ('simple_cnn', 591_914),
    ('vgg11', 9_231_114),
    ('vgg13', 9_416_010),
    ('vgg16', 14_728_266),
    ('vgg19', 20_040_522),
    # 1,024 more than the common PyTorch version, which has no final BatchNorm.
    ('preact_resnet18', 11_172_170),
    ('wrn16_8', 10_961_370),
    ('wrn28_10', 36_479_194),
    ('wide_resnet', 36_479_194),  # Defaults to WRN-28-10.
])
def test_param_counts(name, expected):
  variables = _abstract_variables(create_model(name, num_classes=10))
  assert count_params(variables['params']) == expected


def test_wrn28_10_is_the_36_5m_parameter_model_of_the_paper():
  variables = _abstract_variables(create_model('wrn28_10', num_classes=10))
  assert round(count_params(variables['params']) / 1e6, 1) == 36.5


def test_bfloat16_models_keep_float32_parameters_and_statistics():
  for name in NAMES:
    variables = _abstract_variables(create_model(name, num_classes=10, width=4,
                                                 dtype='bfloat16'))
    for leaf in jax.tree.leaves(variables):
      assert leaf.dtype == jnp.float32


def test_vgg_layers():
  params = _abstract_variables(create_model('vgg16', num_classes=10))['params']
  convs = [name for name in params if '_conv' in name]
  assert len(convs) == 13
  assert params['block5_conv3']['kernel'].shape == (3, 3, 512, 512)
  assert params['head']['kernel'].shape == (512, 10)


def test_preact_resnet_layers():
  params = _abstract_variables(create_model('preact_resnet18', num_classes=10))['params']
  # The stem is a bare convolution: the first block normalises its output.
  assert 'stem_bn' not in params and 'final_bn' in params
  assert 'proj_conv' not in params['stage1_block0']
  assert params['stage2_block0']['proj_conv']['kernel'].shape == (1, 1, 64, 128)
  # The first block normalises its input, so its first BatchNorm has the input's width.
  assert params['stage2_block0']['bn1']['scale'].shape == (64,)


def test_wide_resnet_layers():
  params = _abstract_variables(create_model('wrn28_10', num_classes=10))['params']
  # (28 - 4) / 6 = 4 blocks in each of three stages, widths 160, 320, 640.
  assert {f'stage{s}_block{b}' for s in (1, 2, 3) for b in range(4)} < params.keys()
  assert 'stage1_block4' not in params and 'stage4_block0' not in params
  # Even the first stage widens 16 to 160 channels, so it starts with a projection.
  assert params['stage1_block0']['proj_conv']['kernel'].shape == (1, 1, 16, 160)
  assert params['stage3_block3']['conv2']['kernel'].shape == (3, 3, 640, 640)


@pytest.mark.parametrize('depth', [4, 20, 29])
def test_wide_resnet_depth_must_be_6n_plus_4(depth):
  with pytest.raises(UserError, match=f'6n \\+ 4.*got {depth}'):
    create_model('wide_resnet', num_classes=10, depth=depth)


def test_wide_resnet_aliases_fix_depth_and_width():
  assert config_fields('wrn16_8') == ['dropout_rate', 'width', 'dtype', 'bn_momentum']
  with pytest.raises(UserError, match="'depth'"):
    create_model('wrn16_8', num_classes=10, depth=28)


@pytest.mark.parametrize('name,fields', [SMALL_SIMPLE_CNN, SMALL_VGG, SMALL_PREACT, SMALL_WRN])
def test_bfloat16_close_to_float32(name, fields):
  f32 = create_model(name, num_classes=10, **fields)
  bf16 = create_model(name, num_classes=10, dtype='bfloat16', **fields)
  variables = _random_variables(f32)
  x = _images(8, seed=1)
  # The same dropout key draws the same masks whatever the dtype.
  key = jax.random.key(0)
  expected = _forward(f32, variables, x, key, train=True)
  actual = _forward(bf16, variables, x, key, train=True)
  assert actual.shape == (8, 10)
  assert actual.dtype == jnp.float32
  # bfloat16 keeps ~3 significant digits; errors grow somewhat with depth.
  scale = np.abs(expected).max()
  np.testing.assert_allclose(actual, expected, atol=0.05 * scale)


@pytest.mark.parametrize('name,fields', [SMALL_SIMPLE_CNN, SMALL_WRN])
def test_dropout_only_in_train_mode(name, fields):
  model = create_model(name, num_classes=10, **fields)
  variables = _random_variables(model)
  x = _images(8, seed=2)
  first, second = (_forward(model, variables, x, jax.random.key(seed), train=True)
                   for seed in (0, 1))
  assert not np.allclose(first, second, rtol=1e-3, atol=1e-3)
  first, second = (_forward(model, variables, x, jax.random.key(seed), train=False)
                   for seed in (0, 1))
  np.testing.assert_array_equal(first, second)


def test_simple_cnn_dropout_can_be_turned_off():
  model = create_model('simple_cnn', num_classes=10, width=4, dropout=False)
  variables = _random_variables(model)
  x = _images(8, seed=2)
  first, second = (_forward(model, variables, x, jax.random.key(seed), train=True)
                   for seed in (0, 1))
  np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize('model_fields', [
    {'name': 'vgg11', 'width': 2, 'dtype': 'float32'},
    {'name': 'wide_resnet', 'depth': 10, 'widen_factor': 1, 'width': 4, 'dropout_rate': 0.3,
     'dtype': 'bfloat16'},
])
def test_one_train_step_on_8_devices(model_fields):
  config = tiny_config(steps_per_call=1)
  # Families differ in their fields, so the whole model sub-dict is replaced.
  config.model = config_lib.model_config(**model_fields)
  state, splits, train_fn, *_ = build(config, mesh_of(8))
  before = jax.device_get(state.params)  # The step donates `state`.
  state, totals = train_fn(state, splits.train_images, splits.train_labels, jnp.int32(1))
  assert int(state.step) == 1
  assert int(totals['count']) == config.batch_size
  assert np.isfinite(float(totals['loss_sum']))
  # The zero-initialised head is what the first step's gradient reaches.
  assert not np.allclose(jax.device_get(state.params['head']['kernel']),
                         before['head']['kernel'])
