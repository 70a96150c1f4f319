"""Tests for the Vision Transformer, EfficientNet and Xception families.

Parameter counts come from `jax.eval_shape`, which builds no arrays, so even ViT-L/16 costs only
tracing. Forward passes use tiny configurations of the same code, since on CPU compiling the
full-size models would take minutes, and parameters drawn with numpy, since compiling a model's
own initialisers costs more than its forward pass (the train-loop test checks the ViT's).
"""

import functools
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import build, mesh_of, tiny_config

from cifar_jax import config as config_lib
from cifar_jax import models
from cifar_jax.models import config_fields, count_params, create_model, efficientnet, vit

TINY_VIT = functools.partial(vit.VisionTransformer, patch_size=4, hidden_size=32, num_layers=2,
                             num_heads=2, mlp_dim=64)
# Covers a block without expansion, a stride-2 block, a 5x5 kernel and a residual block.
TINY_EFFICIENTNET = functools.partial(
    efficientnet.EfficientNet, stem_features=8, head_features=32,
    stages=(efficientnet.Stage(expand_ratio=1, features=8, repeats=1, strides=1, kernel_size=3),
            efficientnet.Stage(expand_ratio=6, features=16, repeats=2, strides=2, kernel_size=5)))
TINY_XCEPTION = functools.partial(models.MODELS['xception'], width=4, middle_blocks=1)

# Each tiny family with every one of its regularisers on, so train mode is random.
TINY = {
    'vit': TINY_VIT(num_classes=10, dropout_rate=0.1, attention_dropout_rate=0.1,
                    stochastic_depth_rate=0.5),
    'efficientnet': TINY_EFFICIENTNET(num_classes=10, dropout_rate=0.2, drop_connect_rate=0.5),
    'xception': TINY_XCEPTION(num_classes=10, dropout_rate=0.2),
}


def _images(batch=4, size=32, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


def _init_shapes(model, size=32):
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))


def _variables(model, seed=0):
  """Random variables shaped as `model`'s: weights scaled by fan-in, unit scales and variances.

  The head is random too (the model's own is zero), so logits depend on the whole network.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name in ('scale', 'var'):
      return np.ones(leaf.shape, np.float32)
    if name in ('bias', 'mean'):
      return np.zeros(leaf.shape, np.float32)
    fan_in = math.prod(leaf.shape[:-1])
    return (rng.standard_normal(leaf.shape) / math.sqrt(fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, _init_shapes(model))


@functools.partial(jax.jit, static_argnames=('model',))
def _outputs(model, variables, x):
  """Logits in eval mode, then in train mode, each under dropout keys 1 and 2."""
  def logits(train, seed):
    out, _ = model.apply(variables, x, train=train, mutable=['batch_stats'],
                         rngs={'dropout': jax.random.key(seed)})
    return out
  return [logits(train, seed) for train in (False, True) for seed in (1, 2)]


def test_registry_and_config_fields():
  assert config_fields('vit_b16') == [
      'dropout_rate', 'attention_dropout_rate', 'stochastic_depth_rate', 'classifier',
      'representation_size', 'dtype']
  assert config_fields('vit_tiny_p4') == config_fields('vit_b16')
  assert config_fields('efficientnet_b0') == [
      'dropout_rate', 'drop_connect_rate', 'se_ratio', 'dtype', 'bn_momentum']
  assert config_fields('xception') == [
      'width', 'middle_blocks', 'dropout_rate', 'dtype', 'bn_momentum']
  model = create_model('vit_b32', num_classes=10, dtype='bfloat16', classifier='gap')
  assert (model.patch_size, model.hidden_size, model.dtype) == (32, 768, jnp.bfloat16)


@pytest.mark.parametrize('name,image_size,num_classes,expected', [
    # Embedding 16*16*3*768 + 768 = 590,592; class token 768; position embedding
    # (1 + 14*14) * 768 = 151,296; each of 12 blocks 7,087,872 (two LayerNorms 3,072, attention
    # 4 * (768*768 + 768) = 2,362,368, MLP 768*3072 + 3072 + 3072*768 + 768 = 4,722,432); final
    # LayerNorm 1,536; head 768*1000 + 1000 = 769,000.
    ('vit_b16', 224, 1000, 86_567_656),
    # Only the position embedding grows: (1 + 24*24 - 197) * 768 more.
    ('vit_b16', 384, 1000, 86_859_496),
    # Embedding 32*32*3*768 + 768 = 2,360,064; position embedding 50 * 768 = 38,400.
    ('vit_b32', 224, 1000, 88_224_232),
    # 24 blocks of 12,596,224; embedding 787,456; position embedding 201,728; head 1,025,000.
    ('vit_l16', 224, 1000, 304_326_632),
    ('vit_tiny_p4', 32, 10, 5_362_762),
    ('vit_small_p4', 32, 10, 21_342_346),
    # The reference EfficientNet-B0 count; the CIFAR stem stride changes no shape.
    ('efficientnet_b0', 224, 1000, 5_288_548),
    ('efficientnet_b0', 32, 1000, 5_288_548),
    ('efficientnet_b0', 32, 10, 5_288_548 - 1280 * 990 - 990),
    ('xception', 32, 10, 2_699_082),
])
def test_param_counts(name, image_size, num_classes, expected):
  model = create_model(name, num_classes=num_classes)
  assert count_params(_init_shapes(model, image_size)['params']) == expected


@pytest.mark.parametrize('name,image_size,shape', [
    ('vit_tiny_p4', 32, (1, 1 + 8 * 8, 192)),
    ('vit_b16', 224, (1, 1 + 14 * 14, 768)),
    ('vit_b16', 384, (1, 1 + 24 * 24, 768)),
])
def test_vit_position_embedding_has_the_class_token_and_one_token_a_patch(name, image_size, shape):
  params = _init_shapes(create_model(name, num_classes=10), image_size)['params']
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == shape


def test_vit_position_embedding_is_sized_at_initialisation():
  model = TINY_VIT(num_classes=10)
  variables = _init_shapes(model, 32)
  with pytest.raises(flax.errors.ScopeParamShapeError, match='pos_embedding'):
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 16, 16, 3)), train=False), variables)


def test_vit_parameters_follow_the_original_checkpoint_layout():
  # Keys as in the flattened ViT-B_16.npz, for hidden 32, 2 heads of 16, MLP 64 and 2 blocks.
  block = {
      'LayerNorm_0/scale': (32,), 'LayerNorm_0/bias': (32,),
      'MultiHeadDotProductAttention_1/query/kernel': (32, 2, 16),
      'MultiHeadDotProductAttention_1/query/bias': (2, 16),
      'MultiHeadDotProductAttention_1/key/kernel': (32, 2, 16),
      'MultiHeadDotProductAttention_1/key/bias': (2, 16),
      'MultiHeadDotProductAttention_1/value/kernel': (32, 2, 16),
      'MultiHeadDotProductAttention_1/value/bias': (2, 16),
      'MultiHeadDotProductAttention_1/out/kernel': (2, 16, 32),
      'MultiHeadDotProductAttention_1/out/bias': (32,),
      'LayerNorm_2/scale': (32,), 'LayerNorm_2/bias': (32,),
      'MlpBlock_3/Dense_0/kernel': (32, 64), 'MlpBlock_3/Dense_0/bias': (64,),
      'MlpBlock_3/Dense_1/kernel': (64, 32), 'MlpBlock_3/Dense_1/bias': (32,),
  }
  expected = {
      'embedding/kernel': (4, 4, 3, 32), 'embedding/bias': (32,),
      'cls': (1, 1, 32),
      'Transformer/posembed_input/pos_embedding': (1, 65, 32),
      **{f'Transformer/encoderblock_{i}/{key}': shape
         for i in range(2) for key, shape in block.items()},
      'Transformer/encoder_norm/scale': (32,), 'Transformer/encoder_norm/bias': (32,),
      'pre_logits/kernel': (32, 24), 'pre_logits/bias': (24,),
      'head/kernel': (24, 10), 'head/bias': (10,),
  }
  variables = _init_shapes(TINY_VIT(num_classes=10, representation_size=24))
  assert variables.keys() == {'params'}  # No BatchNorm statistics.
  shapes = {key: leaf.shape for key, leaf in
            flax.traverse_util.flatten_dict(variables['params'], sep='/').items()}
  assert shapes == expected

  # Average pooling needs no class token, and no representation size means no pre-logits.
  gap = _init_shapes(TINY_VIT(num_classes=10, classifier='gap'))['params']
  assert gap.keys() == {'embedding', 'Transformer', 'head'}
  assert gap['Transformer']['posembed_input']['pos_embedding'].shape == (1, 64, 32)


def test_vit_rejects_an_unknown_classifier():
  with pytest.raises(ValueError, match='gap'):
    _init_shapes(TINY_VIT(num_classes=10, classifier='pool'))


@pytest.mark.parametrize('family', sorted(TINY))
def test_output_shapes_and_dtypes(family):
  model = TINY[family]
  for logits in _outputs(model, _variables(model), _images()):
    assert logits.shape == (4, 10) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize('family', sorted(TINY))
def test_dropout_and_stochastic_depth_act_in_train_mode_only(family):
  model = TINY[family]
  eval_1, eval_2, train_1, train_2 = _outputs(model, _variables(model), _images())
  np.testing.assert_array_equal(eval_1, eval_2)
  assert not np.allclose(train_1, train_2, atol=1e-3)


@pytest.mark.parametrize('model', [
    TINY_VIT(num_classes=10, stochastic_depth_rate=0.5),
    TINY_EFFICIENTNET(num_classes=10, dropout_rate=0.0, drop_connect_rate=0.5),
], ids=['vit', 'efficientnet'])
def test_stochastic_depth_alone_makes_train_mode_random(model):
  _, _, train_1, train_2 = _outputs(model, _variables(model), _images())
  assert not np.allclose(train_1, train_2, atol=1e-3)


@pytest.mark.parametrize('family', sorted(TINY))
def test_bfloat16_close_to_float32(family):
  f32 = TINY[family]
  bf16 = f32.clone(dtype=jnp.bfloat16)
  variables = _variables(f32)
  x = _images(seed=3)
  # Same parameters and dropout keys, so train mode draws the same masks in both dtypes.
  expected = _outputs(f32, variables, x)
  actual = _outputs(bf16, variables, x)
  # Parameters (and BatchNorm statistics) stay float32 in a bfloat16 model.
  for leaf in jax.tree.leaves(_init_shapes(bf16)):
    assert leaf.dtype == jnp.float32
  for a, e in zip(actual, expected, strict=True):
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(a, e, atol=0.05 * np.abs(e).max())


def test_vit_starts_from_the_original_initialisation_and_trains_on_8_devices(monkeypatch):
  """A model without BatchNorm, with dropout and stochastic depth, through the train loop."""
  monkeypatch.setitem(models.MODELS, 'tiny_vit', TINY_VIT)
  # Without weight decay, only gradients move the parameters.
  config = tiny_config(**{'optimizer.weight_decay': 0.0})
  config.model = config_lib.model_config(
      'tiny_vit', dtype='float32', dropout_rate=0.1, stochastic_depth_rate=0.1)
  state, splits, train_fn, *_ = build(config, mesh_of(8))
  assert state.batch_stats == {}

  initial = jax.device_get(state.params)
  # Zero head and class token; position embedding with standard deviation 0.02.
  for leaf in (initial['head']['kernel'], initial['head']['bias'], initial['cls']):
    np.testing.assert_array_equal(leaf, 0.0)
  assert np.std(initial['Transformer']['posembed_input']['pos_embedding']) == pytest.approx(
      0.02, rel=0.1)
  # Near-zero Dense biases; Xavier-uniform kernels, bounded by sqrt(6 / (fan_in + fan_out)).
  mlp = initial['Transformer']['encoderblock_0']['MlpBlock_3']
  assert np.abs(mlp['Dense_0']['bias']).max() < 1e-4
  assert np.abs(mlp['Dense_0']['kernel']).max() <= math.sqrt(6 / (32 + 64))

  state, totals = train_fn(state, splits.train_images, splits.train_labels, jnp.int32(2))
  assert int(state.step) == 2 and int(totals['count']) == 2 * config.batch_size
  assert np.isfinite(float(totals['loss_sum']))
  trained = jax.device_get(state.params)
  # The second step's gradient reaches the embedding through the head the first step trained.
  for module in ('head', 'embedding'):
    assert not np.allclose(trained[module]['kernel'], initial[module]['kernel'])
