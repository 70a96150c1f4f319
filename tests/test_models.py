"""Tests for the model registry and the CIFAR ResNets."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cifar_jax.errors import UserError
from cifar_jax.models import MODELS, config_fields, count_params, create_model

# Small width and images keep the forward passes fast; the architecture is the same.
WIDTH = 8
IMAGE_SHAPE = (16, 16, 3)


def _images(batch, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, *IMAGE_SHAPE))


def _init(model, batch=2):
  # Op by op on purpose: the compiled ops are cached across models with the same layer shapes,
  # which on CPU is much faster than compiling each model's whole init.
  return model.init(jax.random.key(0), _images(batch), train=False)


@functools.partial(jax.jit, static_argnames=('model', 'train'))
def _apply(model, variables, x, *, train):
  """Forward pass returning (logits, batch_stats after the pass)."""
  logits, updates = model.apply(variables, x, train=train, mutable=['batch_stats'])
  return logits, updates['batch_stats']


def _with_random_head(variables, seed=1):
  """Replaces the zero-initialised head so logits depend on the whole network."""
  head = variables['params']['head']
  kernel = jax.random.normal(jax.random.key(seed), head['kernel'].shape) * 0.1
  params = {**variables['params'], 'head': {**head, 'kernel': kernel}}
  return {**variables, 'params': params}


# The other families are tested in test_model_zoo.py and test_model_zoo_2.py.
@pytest.mark.parametrize('name', sorted(n for n in MODELS if n.startswith('resnet')))
def test_output_shapes_and_dtypes(name):
  model = create_model(name, num_classes=10, width=WIDTH)
  variables = _init(model)
  for train in (False, True):
    logits, stats = _apply(model, variables, _images(2), train=train)
    assert logits.shape == (2, 10)
    assert logits.dtype == jnp.float32
    # The zero head predicts uniformly at initialisation.
    np.testing.assert_array_equal(logits, 0.0)
    assert jax.tree.structure(stats) == jax.tree.structure(variables['batch_stats'])


@pytest.mark.parametrize('name,expected', [
    ('resnet18', 11_173_962),
    ('resnet34', 21_282_122),
    ('resnet50', 23_520_842),
])
def test_param_counts(name, expected):
  model = create_model(name, num_classes=10)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  assert count_params(variables['params']) == expected


def test_named_submodules():
  model = create_model('resnet18', num_classes=10, width=WIDTH)
  params = _init(model)['params']
  assert {'stem_conv', 'stem_bn', 'stage1_block0', 'stage4_block1', 'head'} <= params.keys()
  assert {'proj_conv', 'proj_bn'} <= params['stage2_block0'].keys()
  assert 'proj_conv' not in params['stage1_block0']


def test_unknown_model_name():
  with pytest.raises(UserError, match='resnet18'):
    create_model('resnet19', num_classes=10)


def test_unknown_config_field():
  with pytest.raises(UserError, match="'depth'.*width"):
    create_model('resnet18', num_classes=10, depth=18)
  # Fields fixed by the family entry are not config fields.
  with pytest.raises(UserError, match='stage_sizes'):
    create_model('resnet18', num_classes=10, stage_sizes=(1, 1, 1, 1))
  assert config_fields('resnet50') == ['width', 'stem', 'frozen_batch_stats', 'dtype',
                                       'bn_momentum', 'bn_epsilon', 'conv_bias']
  # The Keras variant binds what its weights file fixes.
  assert config_fields('resnet50_keras') == ['width', 'stem', 'frozen_batch_stats', 'dtype',
                                             'bn_momentum']


def test_unknown_dtype():
  with pytest.raises(UserError, match='bfloat16'):
    create_model('resnet18', num_classes=10, dtype='float16')


def test_bfloat16_close_to_float32():
  f32 = create_model('resnet18', num_classes=10, width=WIDTH)
  bf16 = create_model('resnet18', num_classes=10, width=WIDTH, dtype='bfloat16')
  variables = _with_random_head(_init(f32, batch=8))
  x = _images(8, seed=2)
  expected, _ = _apply(f32, variables, x, train=True)
  actual, stats = _apply(bf16, variables, x, train=True)
  assert actual.dtype == jnp.float32
  # Parameters and BatchNorm statistics stay float32 in a bfloat16 model.
  bf16_params = jax.eval_shape(lambda: _init(bf16))['params']
  for leaf in jax.tree.leaves([bf16_params, stats]):
    assert leaf.dtype == jnp.float32
  # bfloat16 keeps ~3 significant digits; errors grow somewhat over 18 layers.
  scale = np.abs(expected).max()
  np.testing.assert_allclose(actual, expected, atol=0.05 * scale)


def test_batch_stats_update_only_in_train_mode():
  model = create_model('resnet18', num_classes=10, width=WIDTH)
  variables = _init(model, batch=4)
  x = _images(4, seed=3)
  _, eval_stats = _apply(model, variables, x, train=False)
  jax.tree.map(np.testing.assert_array_equal, eval_stats, variables['batch_stats'])
  _, train_stats = _apply(model, variables, x, train=True)
  for new, old in zip(jax.tree.leaves(train_stats),
                      jax.tree.leaves(variables['batch_stats']), strict=True):
    assert not np.allclose(new, old)


def test_sharded_batchnorm_matches_single_device():
  """8 devices with 2 examples each compute what 1 device does with all 16."""
  single = create_model('resnet18', num_classes=10, width=WIDTH)
  sharded = create_model('resnet18', num_classes=10, width=WIDTH, bn_axis_name='data')
  variables = _with_random_head(_init(single))
  x = _images(16, seed=4)

  expected_logits, expected_stats = _apply(single, variables, x, train=True)

  mesh = jax.make_mesh((8,), ('data',))
  variables = jax.device_put(variables, NamedSharding(mesh, P()))
  x = jax.device_put(x, NamedSharding(mesh, P('data')))
  step = jax.shard_map(functools.partial(_apply, sharded, train=True), mesh=mesh,
                       in_specs=(P(), P('data')), out_specs=(P('data'), P()))
  logits, stats = jax.jit(step)(variables, x)

  np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               stats, expected_stats)
  # Without the axis name each device would normalise by its own 2 examples.
  local = jax.shard_map(lambda v, x: _apply(single, v, x, train=True)[0], mesh=mesh,
                        in_specs=(P(), P('data')), out_specs=P('data'))
  assert not np.allclose(jax.jit(local)(variables, x), expected_logits, atol=1e-3)
