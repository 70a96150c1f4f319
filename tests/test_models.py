"""What every registered model computes, run as its tiny variant (`models.TINY`); the registry.

Compilation dominates these tests on CPU, so they share a few compiled functions: the model is a
static argument, and models and inputs are the same across tests wherever a test allows, so
most calls reuse an earlier compilation. XLA also skips its backend optimisations, which would
double the compile time of models that run in milliseconds. Beyond the initialisation test,
parameters are drawn with numpy: a fresh init's head is zero, and compiling a model's
initialisers costs more than its forward pass. Full-size parameter counts and layer layouts are
in test_model_architectures.py.
"""

import functools
import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_trees_close, assert_trees_close_to_scale, mesh_of, tiny_config
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cifar_jax import config as config_lib
from cifar_jax import models
from cifar_jax.errors import UserError
from cifar_jax.models import MODELS, TINY, config_fields, create_model, layers
from cifar_jax.training import setup

NAMES = sorted(MODELS)
NUM_CLASSES = 10
BATCH = 16  # bfloat16 errors in train mode grow as BatchNorm's batches shrink.
FAST_COMPILE = {'xla_backend_optimization_level': 0}

# Families whose head is drawn at initialisation instead of zero.
DRAWN_HEAD = {'airbench'}

# Each regulariser config field at a value that makes train mode visibly random.
REGULARISERS = {'dropout': True, 'dropout_rate': 0.2, 'attention_dropout_rate': 0.1,
                'stochastic_depth_rate': 0.2, 'drop_connect_rate': 0.2}


def _tiny(name, **fields):
  return TINY[name](num_classes=NUM_CLASSES, **fields)


def _regularisers(name):
  """The config fields that turn on every regulariser model `name` has."""
  return {field: value for field, value in REGULARISERS.items() if field in config_fields(name)}


def _images(batch, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, 32, 32, 3)).astype(np.float32)


def _abstract_variables(model):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), _images(1), train=False))


def _random_variables(model, seed=0):
  """Random parameters and BatchNorm statistics for `model`, drawn on the host.

  Unlike a fresh init, the head is not zero (so logits depend on the whole network) and the
  running statistics are not the identity (so eval mode uses them).
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'kernel':  # He-normal, so activations keep their scale through ReLUs.
      values = rng.normal(scale=math.sqrt(2 / math.prod(leaf.shape[:-1])), size=leaf.shape)
    elif name in ('scale', 'var'):
      values = rng.uniform(0.5, 1.5, size=leaf.shape)
    else:  # Biases, running means, ViT's class token and position embedding.
      values = rng.normal(scale=0.1, size=leaf.shape)
    return values.astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, _abstract_variables(model))


@functools.partial(jax.jit, static_argnames='model', compiler_options=FAST_COMPILE)
def _init(model, images):
  return model.init(jax.random.key(0), images, train=False)


@functools.partial(jax.jit, static_argnames='model', compiler_options=FAST_COMPILE)
def _outputs(model, variables, images):
  """Eval mode's (logits, BatchNorm statistics after the pass), then train mode's.

  Called as the eval and train steps call the model: eval mode gets no dropout rng. Train mode
  runs under dropout keys 1 and 2, stacked: its logits are [2, B, classes].
  """
  def train_pass(key):
    logits, updates = model.apply(variables, images, train=True, mutable=['batch_stats'],
                                  rngs={'dropout': key})
    return logits, updates.get('batch_stats', {})

  logits, updates = model.apply(variables, images, train=False, mutable=['batch_stats'])
  keys = jnp.stack([jax.random.key(1), jax.random.key(2)])
  return (logits, updates.get('batch_stats', {})), jax.vmap(train_pass)(keys)


@functools.partial(jax.jit, static_argnames='model', compiler_options=FAST_COMPILE)
def _gradients(model, variables, images, labels):
  """Gradients of the train-mode cross-entropy with respect to the parameters."""
  def loss_fn(params):
    logits, _ = model.apply({**variables, 'params': params}, images, train=True,
                            mutable=['batch_stats'], rngs={'dropout': jax.random.key(1)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  return jax.grad(loss_fn)(variables['params'])


def _first(tree):
  """The entries of a tree stacked over two dropout keys, under the first key."""
  return jax.tree.map(lambda x: x[0], tree)


# The registry.


def test_unknown_model_name():
  with pytest.raises(UserError, match='resnet18'):
    create_model('resnet19', num_classes=10)


def test_unknown_config_field():
  with pytest.raises(UserError, match="'depth'.*width"):
    create_model('resnet18', num_classes=10, depth=18)
  # Fields fixed by the family entry are not config fields.
  with pytest.raises(UserError, match='stage_sizes'):
    create_model('resnet18', num_classes=10, stage_sizes=(1, 1, 1, 1))
  with pytest.raises(UserError, match="'depth'"):
    create_model('wrn16_8', num_classes=10, depth=28)


def test_unknown_dtype():
  with pytest.raises(UserError, match='float16'):
    create_model('resnet18', num_classes=10, dtype='float64')


@pytest.mark.parametrize('name,fields', [
    ('resnet50', ['width', 'stem', 'frozen_batch_stats', 'dtype', 'bn_momentum', 'bn_epsilon',
                  'conv_bias']),
    # The Keras variant binds what its weights file fixes.
    ('resnet50_keras', ['width', 'stem', 'frozen_batch_stats', 'dtype', 'bn_momentum']),
    # The aliases fix depth and widening.
    ('wrn16_8', ['dropout_rate', 'width', 'dtype', 'bn_momentum']),
    ('vit_b16', ['dropout_rate', 'attention_dropout_rate', 'stochastic_depth_rate', 'classifier',
                 'representation_size', 'dtype']),
    ('vit_tiny_p4', ['dropout_rate', 'attention_dropout_rate', 'stochastic_depth_rate',
                     'classifier', 'representation_size', 'dtype']),
    ('efficientnet_b0', ['dropout_rate', 'drop_connect_rate', 'se_ratio', 'stem_strides',
                         'padding', 'dtype', 'bn_momentum', 'bn_epsilon']),
    ('efficientnetv2_b0', ['dropout_rate', 'drop_connect_rate', 'stem_strides', 'padding',
                           'dtype', 'bn_momentum', 'bn_epsilon']),
    ('xception', ['width', 'middle_blocks', 'dropout_rate', 'dtype', 'bn_momentum']),
])
def test_config_fields(name, fields):
  assert config_fields(name) == fields


def test_create_model_converts_the_dtype_and_keeps_the_variant():
  model = create_model('vit_b32', num_classes=10, dtype='bfloat16', classifier='gap')
  assert (model.patch_size, model.hidden_size, model.dtype, model.classifier) == (
      32, 768, jnp.bfloat16, 'gap')


@pytest.mark.parametrize('depth', [4, 20, 29])
def test_wide_resnet_depth_must_be_6n_plus_4(depth):
  with pytest.raises(UserError, match=f'6n \\+ 4.*got {depth}'):
    create_model('wide_resnet', num_classes=10, depth=depth)


def test_every_model_has_a_tiny_variant_of_its_class():
  def module_class(constructor):
    while isinstance(constructor, functools.partial):
      constructor = constructor.func
    return constructor

  assert TINY.keys() == MODELS.keys()
  for name in MODELS:
    assert module_class(TINY[name]) is module_class(MODELS[name]), name


# Every model, through its tiny variant.


@pytest.mark.parametrize('name', NAMES)
def test_initialises_and_trains(name):
  # With every regulariser on, and on the same inputs as the next tests, which then reuse these
  # compilations.
  model = _tiny(name, **_regularisers(name))
  images = _images(BATCH)
  variables = jax.device_get(_init(model, images))
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32
  (eval_logits, eval_stats), (train_logits, train_stats) = _outputs(model, variables, images)
  for logits in (eval_logits, train_logits[0]):
    assert logits.shape == (BATCH, NUM_CLASSES) and logits.dtype == jnp.float32
  # The zero head predicts uniformly at initialisation (airbench draws its head, as its
  # reference does).
  if name not in DRAWN_HEAD:
    np.testing.assert_array_equal(eval_logits, 0.0)

  # Eval mode keeps the running averages; train mode moves every BatchNorm's. (A mean may stay
  # zero: a bias-free linear layer after a BatchNorm passes its zero mean on.)
  stats = flax.traverse_util.flatten_dict(variables.get('batch_stats', {}))
  eval_stats = flax.traverse_util.flatten_dict(eval_stats)
  train_stats = flax.traverse_util.flatten_dict(_first(train_stats))
  assert eval_stats.keys() == train_stats.keys() == stats.keys()
  for key, value in stats.items():
    np.testing.assert_array_equal(eval_stats[key], value)
    if key[-1] == 'var':
      assert not np.allclose(train_stats[key], value), key

  # The loss depends on every layer: with a random head, every kernel has a gradient.
  grads = _gradients(model, _random_variables(model), images, np.arange(BATCH) % NUM_CLASSES)
  for path, grad in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert np.all(np.isfinite(grad)), jax.tree_util.keystr(path)
    if path[-1].key == 'kernel':
      assert np.any(grad != 0), jax.tree_util.keystr(path)


@pytest.mark.parametrize('name', NAMES)
def test_bfloat16_close_to_float32(name):
  # Every regulariser on: the same keys draw the same masks in both dtypes.
  f32 = _tiny(name, **_regularisers(name))
  bf16 = f32.clone(dtype=jnp.bfloat16)
  # Parameters and BatchNorm statistics stay float32 in a bfloat16 model.
  for leaf in jax.tree.leaves(_abstract_variables(bf16)):
    assert leaf.dtype == jnp.float32
  variables = _random_variables(f32)
  images = _images(BATCH)
  for (expected, _), (actual, _) in zip(_outputs(f32, variables, images),
                                        _outputs(bf16, variables, images), strict=True):
    assert actual.dtype == jnp.float32
    assert np.all(np.isfinite(expected))
    assert not np.array_equal(actual, expected)  # It does compute in bfloat16.
    # bfloat16 keeps ~3 significant digits; errors grow somewhat with depth.
    np.testing.assert_allclose(actual, expected, atol=0.05 * np.abs(expected).max())


@pytest.mark.parametrize('name,fields', [
    *[(name, _regularisers(name)) for name in NAMES],
    ('simple_cnn', {'dropout': False}),
    # Stochastic depth alone.
    ('vit_tiny_p4', {'stochastic_depth_rate': 0.5}),
    ('efficientnet_b0', {'dropout_rate': 0.0, 'drop_connect_rate': 0.5}),
])
def test_regularisers_act_in_train_mode_only(name, fields):
  model = _tiny(name, **fields)
  # Eval mode runs without a dropout rng (see `_outputs`), so it cannot be random.
  _, (train_logits, _) = _outputs(model, _random_variables(model), _images(BATCH))
  if any(fields.values()):
    assert not np.allclose(train_logits[0], train_logits[1], rtol=1e-3, atol=1e-3)
  else:
    np.testing.assert_array_equal(train_logits[0], train_logits[1])


@pytest.mark.parametrize('name', NAMES)
def test_every_batchnorm_averages_over_the_named_axis(name):
  axis_names = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm):
      axis_names.append(context.module.axis_name)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    variables = _abstract_variables(_tiny(name, bn_axis_name='data'))
  assert bool(axis_names) == ('batch_stats' in variables)
  assert set(axis_names) <= {'data'}


def test_sharded_batchnorm_matches_single_device():
  """8 devices with 2 examples each compute what 1 device does with all 16."""
  single = _tiny('resnet18')
  sharded = _tiny('resnet18', bn_axis_name='data')
  variables = _random_variables(single)
  images = _images(BATCH)
  expected_logits, expected_stats = _first(_outputs(single, variables, images)[1])

  def train_pass(model):
    def run(variables, images):
      logits, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
      return logits, updates['batch_stats']
    return run

  mesh = jax.make_mesh((8,), ('data',))
  variables = jax.device_put(variables, NamedSharding(mesh, P()))
  images = jax.device_put(images, NamedSharding(mesh, P('data')))
  step = jax.shard_map(train_pass(sharded), mesh=mesh, in_specs=(P(), P('data')),
                       out_specs=(P('data'), P()))
  logits, stats = jax.jit(step, compiler_options=FAST_COMPILE)(variables, images)

  np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               stats, expected_stats)
  # Without the axis name each device would normalise by its own 2 examples.
  local = jax.shard_map(lambda *args: train_pass(single)(*args)[0], mesh=mesh,
                        in_specs=(P(), P('data')), out_specs=P('data'))
  local_logits = jax.jit(local, compiler_options=FAST_COMPILE)(variables, images)
  assert not np.allclose(local_logits, expected_logits, atol=1e-3)


def test_airbench_whitening_makes_the_patches_of_the_images_uncorrelated():
  model = _tiny('airbench')
  rng = np.random.default_rng(0)
  # Strongly correlated pixels and channels: smooth noise, mixed across channels.
  noise = rng.normal(size=(64, 33, 33, 3))
  smooth = (noise[:, 1:, 1:] + noise[:, :-1, 1:] + noise[:, 1:, :-1] + noise[:, :-1, :-1]) / 2
  images = (smooth @ np.array([[1.0, 0.8, 0.5], [0.0, 0.6, 0.5], [0.0, 0.0, 0.7]]))
  images = images.astype(np.float32)
  params = model.init_from_data(_abstract_variables(model)['params'], jnp.asarray(images))
  kernel = np.asarray(params['whiten']['kernel'])  # [2, 2, 3, 24]
  patches = np.stack([images[:, dy:dy + 31, dx:dx + 31] for dy in (0, 1) for dx in (0, 1)],
                     axis=-2).reshape(-1, 12)
  covariance = patches.T.astype(np.float64) @ patches / len(patches)
  assert not np.allclose(covariance, np.eye(12), atol=0.1)
  whitened = patches @ kernel.reshape(12, 24)
  np.testing.assert_allclose(whitened[:, 12:], -whitened[:, :12], rtol=1e-6)  # Both signs.
  # Uncorrelated, each of variance l / (l + eps) for an eigenvalue l of the covariance: nearly 1.
  eigenvalues = np.linalg.eigvalsh(covariance)[::-1]
  np.testing.assert_allclose(whitened[:, :12].T @ whitened[:, :12] / len(patches),
                             np.diag(eigenvalues / (eigenvalues + 5e-4)), atol=1e-4)
  assert np.all(eigenvalues / (eigenvalues + 5e-4) > 0.98)


def test_airbench_convolutions_start_as_the_identity_on_their_inputs():
  params = jax.device_get(_init(_tiny('airbench'), _images(BATCH)))['params']
  kernel = params['group1_conv2']['kernel']  # [3, 3, 16, 16]: the identity on all filters.
  expected = np.zeros_like(kernel)
  expected[1, 1] = np.eye(kernel.shape[2])
  np.testing.assert_array_equal(kernel, expected)
  kernel = params['group1_conv1']['kernel']  # [3, 3, 24, 8]: 8 filters, identity on 8 inputs.
  np.testing.assert_array_equal(kernel[1, 1], np.eye(24, 8))
  np.testing.assert_array_equal(kernel[0], 0.0)
  wider = params['group2_conv1']['kernel']  # [3, 3, 8, 16]: drawn beyond the first 8 filters.
  np.testing.assert_array_equal(wider[1, 1, :, :8], np.eye(8))
  assert np.all(np.abs(wider[..., 8:]) <= 1 / math.sqrt(9 * 8)) and np.any(wider[..., 8:])


def test_vit_starts_from_the_original_initialisation():
  # The same call as in test_initialises_and_trains, so the compilation is shared.
  model = _tiny('vit_tiny_p4', **_regularisers('vit_tiny_p4'))
  params = _init(model, _images(BATCH))['params']
  # Zero head and class token; position embedding with standard deviation 0.02.
  for leaf in (params['head']['kernel'], params['head']['bias'], params['cls']):
    np.testing.assert_array_equal(leaf, 0.0)
  assert np.std(params['Transformer']['posembed_input']['pos_embedding']) == pytest.approx(
      0.02, rel=0.1)
  # Near-zero Dense biases; Xavier-uniform kernels, bounded by sqrt(6 / (fan_in + fan_out)).
  dense = params['Transformer']['encoderblock_0']['MlpBlock_3']['Dense_0']
  assert np.abs(dense['bias']).max() < 1e-4
  assert np.abs(dense['kernel']).max() <= math.sqrt(6 / sum(dense['kernel'].shape))


# Through the train loop.


@pytest.mark.parametrize('name,fields', [
    # BatchNorm.
    ('vgg11', {'dtype': 'float32'}),
    # BatchNorm and dropout, computing in bfloat16.
    ('wide_resnet', {'dropout_rate': 0.3, 'dtype': 'bfloat16'}),
    # No BatchNorm; dropout and stochastic depth.
    ('vit_tiny_p4', {'dropout_rate': 0.1, 'stochastic_depth_rate': 0.1, 'dtype': 'float32'}),
])
def test_two_train_steps_on_8_devices(name, fields, monkeypatch):
  monkeypatch.setitem(models.MODELS, f'tiny_{name}', TINY[name])
  # Without weight decay, only gradients move the parameters.
  config = tiny_config(**{'optimizer.weight_decay': 0.0})
  config.model = config_lib.model_config(f'tiny_{name}', **fields)
  run = setup.setup(config, mesh_of(8))
  state = run.new_state()
  assert bool(state.batch_stats) == (name != 'vit_tiny_p4')  # ViT has no BatchNorm.
  initial = jax.device_get(state.params)  # The step donates `state`.

  state, totals = run.train_fn(state, run.splits.train_images, run.splits.train_labels,
                               jnp.int32(2))
  assert int(state.step) == 2 and int(totals['count']) == 2 * config.batch_size
  assert np.isfinite(float(totals['loss_sum']))
  # The first step trains the zero head; the second's gradient reaches every layer through it.
  trained = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
  for (path, new), old in zip(trained, jax.tree.leaves(initial), strict=True):
    if path[-1].key == 'kernel':
      assert not np.allclose(new, old), jax.tree_util.keystr(path)


# The shared layers.


@pytest.mark.parametrize('shape,window', [((3, 31, 31, 5), 2), ((2, 7, 7, 4), 3),
                                          ((2, 8, 6, 3), 2)])
def test_max_pool_and_its_gradient_are_xlas(shape, window):
  rng = np.random.default_rng(0)
  x = rng.normal(size=shape).astype(np.float32)
  x[0, 0, 0, 0] = x[0, 0, 1, 0]  # Tied maxima: the gradient goes to the first of them alone.
  x[1] = np.round(x[1])  # Many ties.
  x[-1, :window, :window] = 0.0  # A window all of one value.
  g = rng.normal(size=(shape[0], shape[1] // window, shape[2] // window, shape[3]))
  expected = jax.vjp(lambda x: nn.max_pool(x, (window, window), (window, window)), x)
  actual = jax.vjp(lambda x: layers.max_pool(x, window), x)
  np.testing.assert_array_equal(actual[0], expected[0])
  np.testing.assert_array_equal(actual[1](g)[0], expected[1](g)[0])


def test_exact_gelu_is_flaxs_and_differentiates_inside_shard_map():
  x = jnp.linspace(-9.0, 9.0, 4096).reshape(8, 512)
  np.testing.assert_array_equal(layers.gelu_exact(x), nn.gelu(x, approximate=False))
  expected = jax.grad(lambda x: nn.gelu(x, approximate=False).sum())(x)
  mesh = mesh_of(8)
  # The train step differentiates inside shard_map, where autodiff of erfc fails on jax 0.12.
  grad = jax.jit(jax.shard_map(jax.grad(lambda x: layers.gelu_exact(x).sum()), mesh=mesh,
                               in_specs=P('data'), out_specs=P('data')))
  actual = grad(jax.device_put(x, NamedSharding(mesh, P('data'))))
  np.testing.assert_allclose(actual, expected, rtol=0, atol=3e-7)


@pytest.mark.parametrize('kernel,strides,padding', [
    ((3, 3, 5, 7), (1, 1), 'SAME'), ((3, 3, 5, 7), (2, 2), ((1, 1), (1, 1))),
    ((2, 2, 5, 4), (1, 1), 'VALID'), ((4, 4, 5, 4), (4, 4), 'VALID'),
    ((1, 1, 5, 4), (2, 2), 'VALID'), ((7, 7, 5, 4), (2, 2), ((3, 3), (3, 3)))])
@pytest.mark.parametrize('chunk_rows', [1024, 40])
def test_patch_convolution_computes_what_xla_does(kernel, strides, padding, chunk_rows,
                                                  monkeypatch):
  # 1024 rows: the 6 images in one product; 40: one image (stride 1) or two (stride 2) a
  # product, in a loop; the 4x4-stride kernel's 2x2 outputs stay in one product either way.
  monkeypatch.setattr(layers, 'PATCH_ROWS', chunk_rows)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(6, 10, 10, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=kernel), jnp.float32)
  numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, ('NHWC', 'HWIO', 'NHWC'))

  def loss(conv):
    return lambda x, w: jnp.sum(jnp.sin(conv(x, w, strides, padding,
                                             dimension_numbers=numbers)))

  expected = jax.value_and_grad(loss(jax.lax.conv_general_dilated), (0, 1))(x, w)
  actual = jax.value_and_grad(loss(layers.patch_conv), (0, 1))(x, w)
  assert_trees_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_patch_convolution_in_low_precision_is_xlas_in_its_dtype(dtype, monkeypatch):
  # Products accumulate in float32 and the chunks' outputs are written in it; what comes out
  # (values and both gradients) is in the input's dtype, as XLA's convolution computes it.
  monkeypatch.setattr(layers, 'PATCH_ROWS', 40)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(6, 10, 10, 5)), dtype)
  w = jnp.asarray(rng.normal(size=(3, 3, 5, 7)) / 6, dtype)

  def loss(conv):
    def f(x, w):
      out = conv(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      return jnp.sum(jnp.sin(out.astype(jnp.float32))), out
    return jax.value_and_grad(f, (0, 1), has_aux=True)

  (_, out), grads = loss(layers.patch_conv)(x, w)
  (_, expected_out), expected_grads = loss(jax.lax.conv_general_dilated)(x, w)
  assert out.dtype == grads[0].dtype == grads[1].dtype == dtype
  assert_trees_close_to_scale((expected_out, *expected_grads), (out, *grads), tol=1e-2)


def test_patch_convolution_in_chunks_inside_shard_map_equals_one_device(monkeypatch):
  # The train step differentiates inside shard_map: each device's chunks add up its kernel
  # gradient, summed over the devices as autodiff sums any replicated input's gradient.
  monkeypatch.setattr(layers, 'PATCH_ROWS', 100)  # 2 of each device's 6 images a product.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(48, 10, 10, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 5, 7)), jnp.float32)

  def grads(x, w):
    return jax.grad(lambda x, w: jnp.sum(jnp.sin(layers.patch_conv(
        x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')))), (0, 1))(x, w)

  mesh = mesh_of(8)
  sharded = jax.jit(jax.shard_map(grads, mesh=mesh, in_specs=(P('data'), P()),
                                  out_specs=(P('data'), P())))
  actual = sharded(jax.device_put(x, NamedSharding(mesh, P('data'))), w)
  assert_trees_close(actual, jax.jit(grads)(x, w), rtol=1e-5, atol=1e-5)

