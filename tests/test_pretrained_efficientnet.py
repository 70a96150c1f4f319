"""EfficientNet-B0 and EfficientNetV2-B0 weights of Keras and timm give those libraries' outputs.

The references are the libraries' own networks with random weights and BatchNorm statistics:
keras.applications' `EfficientNetB0` and `EfficientNetV2B0` (no top, 32x32 inputs) saved by Keras
3 in each layout it writes (the legacy `.h5` renamed as the keras.applications downloads name
their weights, the legacy `.h5` of `model.save`, `.weights.h5`, `.keras`), and timm's
`tf_efficientnet_b0`, `efficientnet_b0` and `tf_efficientnetv2_b0` state dicts (`.safetensors`
and `.pth`). The flax models are built as the references are (stem stride 2, and the reference's
padding and BatchNorm epsilon) and compared on the same images. Skipped without Keras 3 (run on
its JAX backend), PyTorch or timm.
"""
import json

import h5py
import numpy as np
import pytest
from conftest import (
  assert_load_refused,
  import_keras,
  import_torchvision,
  keras_application,
  random_images,
  run_command,
  zero_variables,
)

from cifar_jax import models, pretrained
from cifar_jax.augment import normalize
from cifar_jax.errors import UserError

NUM_CLASSES = 5

# Keras 3.15 converts its variables with NumPy 1's `__array__` protocol, thousands of times.
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')


def imagenet_inputs(images):
  """The model inputs of uint8 `images`, normalised with ImageNet's statistics."""
  return normalize.model_inputs(images, *normalize.input_stats('imagenet', None), 32)


def assert_close(got, expected):
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4,
                             atol=1e-4 * np.abs(expected).max())


def assert_depends_on_the_image(logits):
  """A reference whose logits hardly change from image to image cannot tell a misplaced pixel:
  random BatchNorm statistics of the wrong scale make a deep network's output a constant."""
  assert logits.std(axis=0).mean() > 0.2 * np.abs(logits).mean()


# Random weights as a trained network has them: BatchNorm scales and offsets drawn at random, then
# each BatchNorm's statistics measured on a batch of images (`CALIBRATION`), so that it does
# normalise, and then perturbed (mean moved by up to 0.2 standard deviations, variance scaled by
# 0.5 to 2), so that the statistics matter and are not the batch's.
CALIBRATION = random_images(16, seed=5)
IMAGES = random_images(4)


def perturbed(rng, mean, var):
  """Measured statistics, perturbed as described above."""
  shift = rng.uniform(-0.2, 0.2, size=mean.shape) * np.sqrt(var)
  return [(mean + shift).astype(np.float32),
          (var * rng.uniform(0.5, 2.0, size=var.shape)).astype(np.float32)]


# Keras.


def randomised_keras(keras, network, seed=0):
  """`network` with random BatchNorm parameters and statistics (see `perturbed`) and
  squeeze-excitation biases, and an input normalisation with ImageNet's statistics where it has
  weights: with these, its map of [0, 255] images is `config.model.normalization='imagenet'`'s."""
  import jax  # noqa: PLC0415

  rng = np.random.default_rng(seed)

  def uniform(low, high, like):
    return rng.uniform(low, high, size=like.shape).astype(np.float32)

  norms = [layer for layer in network.layers
           if isinstance(layer, keras.layers.BatchNormalization)]
  for layer in norms:
    scale, offset, mean, var = layer.get_weights()
    layer.set_weights([uniform(0.5, 1.5, scale), uniform(-0.2, 0.2, offset), mean, var])
    layer.momentum = 0.0  # A training pass sets the statistics to its batch's.
  for layer in network.layers:
    if isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
      kernel, bias = layer.get_weights()
      layer.set_weights([kernel, uniform(-0.2, 0.2, bias)])
    elif isinstance(layer, keras.layers.Normalization) and layer.weights:
      mean, std = normalize.FIXED_STATS['imagenet']
      layer.set_weights([np.float32(mean), np.float32(std) ** 2, layer.get_weights()[2]])
      layer.finalize_state()  # The layer normalises with a copy of its weights made here.
  # Keras 3's JAX backend computes a training pass as a pure function of the variables.
  training_pass = jax.jit(lambda trainable, non_trainable, images: network.stateless_call(
      trainable, non_trainable, images, training=True)[1])
  updated = training_pass([v.value for v in network.trainable_variables],
                          [v.value for v in network.non_trainable_variables],
                          CALIBRATION.astype(np.float32))
  for variable, value in zip(network.non_trainable_variables, updated, strict=True):
    variable.assign(value)
  for layer in norms:
    scale, offset, mean, var = layer.get_weights()
    layer.set_weights([scale, offset, *perturbed(rng, mean, var)])
  return network


class KerasReference:
  """A Keras network without top, a random head for its pooled features, its logits on IMAGES."""

  def __init__(self, network):
    self.network = network
    self.images = IMAGES
    rng = np.random.default_rng(1)
    features = network.output_shape[-1]
    self.head = {'kernel': rng.normal(size=(features, NUM_CLASSES)) / np.sqrt(features),
                 'bias': rng.normal(size=NUM_CLASSES)}
    self.head = {k: v.astype(np.float32) for k, v in self.head.items()}
    feature_map = network.predict(self.images.astype(np.float32), verbose=0)
    self.logits = feature_map.mean(axis=(1, 2)) @ self.head['kernel'] + self.head['bias']
    assert_depends_on_the_image(self.logits)

  def assert_same_logits(self, model, params, batch_stats):
    params = {**params, 'head': self.head}
    logits = model.apply({'params': params, 'batch_stats': batch_stats},
                         imagenet_inputs(self.images), train=False)
    assert_close(logits, self.logits)


@pytest.fixture(scope='module')
def keras():
  return import_keras()


@pytest.fixture(scope='module')
def keras_b0(keras):
  network = keras_application(keras, 'EfficientNetB0', include_top=False)
  return KerasReference(randomised_keras(keras, network))


@pytest.fixture(scope='module')
def keras_v2_b0(keras):
  # Its B variants normalise [0, 255] images with ImageNet's statistics, fixed in the model.
  network = keras_application(keras, 'EfficientNetV2B0', include_top=False)
  return KerasReference(randomised_keras(keras, network))


def save_download_h5(network, path):
  """The layout of the keras.applications downloads, which TF-Keras 2 wrote: "layer_names" at
  the top, 'layer/weight:0' datasets, and 'depthwise_kernel' for a depthwise convolution's
  kernel (which Keras 3 calls 'kernel')."""
  whole = str(path) + '.model.h5'
  network.save(whole)
  depthwise = {layer.name for layer in network.layers
               if type(layer).__name__ == 'DepthwiseConv2D'}
  with h5py.File(whole, 'r') as source, h5py.File(path, 'w') as target:
    weights = source['model_weights']
    for name, value in weights.attrs.items():
      target.attrs[name] = value
    for layer in weights.attrs['layer_names']:
      layer = layer.decode() if isinstance(layer, bytes) else layer
      group = target.create_group(layer)
      names = [n.decode() if isinstance(n, bytes) else n
               for n in weights[layer].attrs['weight_names']]
      renamed = []
      for name in names:
        weight = name.rsplit('/', 1)[-1]
        if layer in depthwise and weight == 'kernel':
          weight = 'depthwise_kernel'
        renamed.append(f'{layer}/{weight}:0')
        group.create_dataset(renamed[-1], data=np.asarray(weights[layer][name]))
      group.attrs['weight_names'] = np.array([n.encode() for n in renamed], dtype='S')


def save_keras(network, layout, directory):
  """Writes `network` in `layout`; returns the file's path."""
  if layout == 'download .h5':
    path = str(directory / 'efficientnet_notop.h5')
    save_download_h5(network, path)
  elif layout == 'model.save .h5':
    path = str(directory / 'model.h5')
    network.save(path)
  elif layout == '.weights.h5':
    path = str(directory / 'model.weights.h5')
    network.save_weights(path)
  else:
    path = str(directory / 'model.keras')
    network.save(path)
  return path


KERAS_LAYOUTS = ('download .h5', 'model.save .h5', '.weights.h5', '.keras')


@pytest.mark.parametrize('layout', KERAS_LAYOUTS)
def test_keras_efficientnet_b0_gives_keras_outputs(keras, keras_b0, layout, tmp_path):
  path = save_keras(keras_b0.network, layout, tmp_path)
  model = models.create_model('efficientnet_b0', num_classes=NUM_CLASSES, stem_strides=2)
  params, batch_stats, notes = pretrained.load(path, model, *zero_variables(model))
  # The input normalisation's weights are left out; the input pipeline normalises instead.
  # 'normalization', numbered after the first of the session.
  (normalization,) = [layer.name for layer in keras_b0.network.layers
                      if isinstance(layer, keras.layers.Normalization)]
  assert notes == ['head/bias: not in the file, starts afresh',
                   'head/kernel: not in the file, starts afresh',
                   f'left out of the file: {normalization}/count, {normalization}/mean, '
                   f'{normalization}/variance']
  keras_b0.assert_same_logits(model, params, batch_stats)


@pytest.mark.parametrize('layout', KERAS_LAYOUTS)
def test_keras_efficientnetv2_b0_gives_keras_outputs(keras_v2_b0, layout, tmp_path):
  path = save_keras(keras_v2_b0.network, layout, tmp_path)
  model = models.create_model('efficientnetv2_b0', num_classes=NUM_CLASSES, stem_strides=2)
  params, batch_stats, notes = pretrained.load(path, model, *zero_variables(model))
  assert notes == ['head/bias: not in the file, starts afresh',
                   'head/kernel: not in the file, starts afresh']
  keras_v2_b0.assert_same_logits(model, params, batch_stats)


@pytest.fixture(scope='module')
def keras_files(keras_b0, keras_v2_b0, tmp_path_factory):
  """Both references as the keras.applications downloads lay them out."""
  return {name: save_keras(reference.network, 'download .h5', tmp_path_factory.mktemp(name))
          for name, reference in (('b0', keras_b0), ('v2_b0', keras_v2_b0))}


@pytest.mark.parametrize('file, model_name, fields, message', [
    # The first variable in order that differs: the head convolution's input channels.
    ('b0', 'efficientnetv2_b0', {},
     r"top_conv/kernel has shape \(1, 1, 320, 1280\) but the model's head_conv/kernel needs "
     r'\(1, 1, 192, 1280\)'),
    ('v2_b0', 'efficientnet_b0', {},
     r"top_conv/kernel has shape \(1, 1, 192, 1280\) but the model's head_conv/kernel needs "
     r'\(1, 1, 320, 1280\)'),
    ('b0', 'efficientnet_b0', {'padding': 'symmetric', 'bn_epsilon': 1e-5},
     r"Keras' EfficientNet weights were trained with TensorFlow's padding and BatchNorm epsilon "
     r"1e-3: set config.model.padding='same' and config.model.bn_epsilon=0.001 \(not "
     r"'symmetric' and 1e-05\)"),
    ('b0', 'resnet50_keras', {},
     r"has no 'conv2_block1_1_bn/beta' for the model's stage1_block0/bn1/bias \(64,\): is it a "
     r'checkpoint of another architecture than ResNet\?'),
])
def test_a_keras_file_of_another_network_is_refused_naming_the_weight(
    keras_files, file, model_name, fields, message):
  model = models.create_model(model_name, num_classes=NUM_CLASSES, **fields)
  assert_load_refused(keras_files[file], model, message)


# timm.

TIMM_NETWORKS = {
    # timm name: our model and the fields that make it the same network.
    'tf_efficientnet_b0': ('efficientnet_b0', {}),
    'efficientnet_b0': ('efficientnet_b0', {'padding': 'symmetric', 'bn_epsilon': 1e-5}),
    'tf_efficientnetv2_b0': ('efficientnetv2_b0', {}),
}


@pytest.fixture(scope='module')
def timm():
  import_torchvision()  # timm imports torchvision.
  return pytest.importorskip('timm')


def timm_network(timm, name, num_classes, seed=0):
  """timm's network `name` in eval mode, with random BatchNorm parameters and statistics (see
  `perturbed`) and squeeze-excitation biases."""
  import torch  # noqa: PLC0415 (import_torchvision skips without it)
  torch.manual_seed(seed)
  network = timm.create_model(name, pretrained=False, num_classes=num_classes)
  rng = np.random.default_rng(seed)

  def uniform(tensor, low, high):
    tensor.copy_(torch.from_numpy(rng.uniform(low, high, size=tuple(tensor.shape))))

  norms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    for module in norms:
      uniform(module.weight, 0.5, 1.5)
      uniform(module.bias, -0.2, 0.2)
      module.reset_running_stats()
      module.momentum = None  # A training pass sets the statistics to its batch's.
    for module in network.modules():
      if isinstance(module, torch.nn.Conv2d) and module.bias is not None:
        uniform(module.bias, -0.2, 0.2)
    network.train()
    network(torch.from_numpy(np.array(imagenet_inputs(CALIBRATION)).transpose(0, 3, 1, 2)))
    for module in norms:
      mean, var = perturbed(rng, module.running_mean.numpy(), module.running_var.numpy())
      module.running_mean.copy_(torch.from_numpy(mean))
      module.running_var.copy_(torch.from_numpy(var))
  return network.eval()


def save_state_dict(network, path):
  import torch  # noqa: PLC0415
  if path.endswith('.pth'):
    torch.save(network.state_dict(), path)
  else:
    import safetensors.torch  # noqa: PLC0415
    safetensors.torch.save_file(network.state_dict(), path)


def timm_logits(network, inputs):
  import torch  # noqa: PLC0415
  with torch.no_grad():
    return network(torch.from_numpy(np.array(inputs).transpose(0, 3, 1, 2))).numpy()


@pytest.mark.parametrize('suffix', ['.safetensors', '.pth'])
@pytest.mark.parametrize('timm_name', TIMM_NETWORKS)
def test_timm_efficientnet_gives_timms_logits(timm, timm_name, suffix, tmp_path):
  network = timm_network(timm, timm_name, NUM_CLASSES)
  path = str(tmp_path / f'{timm_name}{suffix}')
  save_state_dict(network, path)
  model_name, fields = TIMM_NETWORKS[timm_name]
  model = models.create_model(model_name, num_classes=NUM_CLASSES, stem_strides=2, **fields)
  params, batch_stats, notes = pretrained.load(path, model, *zero_variables(model))
  assert len(notes) == 1 and notes[0].startswith('left out of the file: blocks.0.0.bn1.'
                                                 'num_batches_tracked')
  inputs = imagenet_inputs(IMAGES)
  expected = timm_logits(network, inputs)
  assert_depends_on_the_image(expected)
  logits = model.apply({'params': params, 'batch_stats': batch_stats}, inputs, train=False)
  assert_close(logits, expected)


def test_tf_weights_in_the_other_padding_give_other_logits(timm, tmp_path):
  """Why padding and epsilon are fields: the file cannot tell which network it belongs to."""
  network = timm_network(timm, 'tf_efficientnet_b0', NUM_CLASSES)
  path = str(tmp_path / 'tf_efficientnet_b0.safetensors')
  save_state_dict(network, path)
  model = models.create_model('efficientnet_b0', num_classes=NUM_CLASSES, stem_strides=2,
                              padding='symmetric', bn_epsilon=1e-5)
  params, batch_stats, _ = pretrained.load(path, model, *zero_variables(model))
  inputs = imagenet_inputs(IMAGES)
  logits = model.apply({'params': params, 'batch_stats': batch_stats}, inputs, train=False)
  expected = timm_logits(network, inputs)
  assert np.abs(np.asarray(logits) - expected).max() > 0.05 * np.abs(expected).max()


@pytest.fixture(scope='module')
def timm_files(timm, tmp_path_factory):
  """The three networks with ImageNet's 1000 classes, as `.safetensors`."""
  directory = tmp_path_factory.mktemp('timm')
  files = {}
  for name in TIMM_NETWORKS:
    files[name] = str(directory / f'{name}.safetensors')
    save_state_dict(timm_network(timm, name, 1000), files[name])
  return files


def test_timm_classifier_of_other_classes_starts_afresh(timm_files):
  model = models.create_model('efficientnetv2_b0', num_classes=100)
  params, _, notes = pretrained.load(timm_files['tf_efficientnetv2_b0'], model,
                                     *zero_variables(model))
  assert notes[:2] == [
      "head/bias: starts afresh with shape (100,); the file's classifier.bias has shape (1000,)",
      "head/kernel: starts afresh with shape (1280, 100); the file's classifier.weight has shape "
      '(1280, 1000)']
  np.testing.assert_array_equal(params['head']['kernel'], 0)
  assert np.abs(params['stage6_block7']['se']['reduce']['bias']).max() > 0


@pytest.mark.parametrize('file, model_name, message', [
    # The first variable in order that differs: the head convolution's input channels.
    ('efficientnet_b0', 'efficientnetv2_b0',
     r"conv_head.weight has shape \(1, 1, 320, 1280\) but the model's head_conv/kernel needs "
     r'\(1, 1, 192, 1280\): check config.model'),
    ('tf_efficientnetv2_b0', 'efficientnet_b0',
     r"conv_head.weight has shape \(1, 1, 192, 1280\) but the model's head_conv/kernel"),
    ('efficientnet_b0', 'resnet18',
     r"has no 'layer1.0.bn1.bias' for the model's stage1_block0/bn1/bias \(64,\): is it a "
     r'checkpoint of another architecture than ResNet\?'),
    ('efficientnet_b0', 'vit_b16', 'ViT models load .npz checkpoints'),
])
def test_a_timm_file_of_another_network_is_refused_naming_the_weight(
    timm_files, file, model_name, message):
  model = models.create_model(model_name, num_classes=10)
  assert_load_refused(timm_files[file], model, message)


def test_missing_and_extra_weights_are_refused_naming_one(timm_files, tmp_path):
  import safetensors.numpy  # noqa: PLC0415
  state = safetensors.numpy.load_file(timm_files['tf_efficientnet_b0'])
  model = models.create_model('efficientnet_b0', num_classes=10)
  variables = zero_variables(model)
  missing = {k: v for k, v in state.items() if k != 'blocks.2.1.se.conv_reduce.bias'}
  safetensors.numpy.save_file(missing, tmp_path / 'missing.safetensors')
  with pytest.raises(UserError, match=r"missing.safetensors has no 'blocks.2.1.se.conv_reduce"
                                      r".bias' for the model's stage3_block1/se/reduce/bias "
                                      r'\(10,\)'):
    pretrained.load(str(tmp_path / 'missing.safetensors'), model, *variables)
  extra = {**state, 'blocks.6.1.conv_pw.weight': np.zeros((1920, 320, 1, 1), np.float32)}
  safetensors.numpy.save_file(extra, tmp_path / 'extra.safetensors')
  with pytest.raises(UserError, match=r'extra.safetensors has 1 weights the model has no place '
                                      r'for, e.g. blocks.6.1.conv_pw.weight'):
    pretrained.load(str(tmp_path / 'extra.safetensors'), model, *variables)


@pytest.mark.parametrize('suffix, error', [
    ('.safetensors', 'could not read .* as a safetensors file'),
    ('.pth', 'could not read .* as a PyTorch file'),
])
def test_a_truncated_file_is_refused_in_one_line(timm, suffix, error, tmp_path):
  source = str(tmp_path / f'whole{suffix}')
  save_state_dict(timm_network(timm, 'tf_efficientnetv2_b0', 10), source)
  path = tmp_path / f'truncated{suffix}'
  path.write_bytes(open(source, 'rb').read()[:1_000_000])
  model = models.create_model('efficientnetv2_b0', num_classes=10)
  assert_load_refused(str(path), model, error)


def test_main_fine_tunes_a_step_from_a_timm_file(timm_files, tmp_path):
  """The fine-tuning config, from a file, on synthetic data at 32x32: one step and evaluation."""
  workdir = tmp_path / 'run'
  result = run_command(
      'cifar_jax.main', '--config=configs/efficientnet_b0_c100_finetune.py',
      f'--workdir={workdir}', f'--config.model.init_from={timm_files["tf_efficientnet_b0"]}',
      '--config.dataset.source=synthetic', '--config.dataset.synthetic_train_size=64',
      '--config.dataset.synthetic_test_size=16', '--config.batch_size=16',
      '--config.eval_batch_size=16', '--config.max_steps=1', '--config.model.input_size=32',
      '--config.model.dtype=float32', '--config.schedule.warmup_epochs=0', '--noreport')
  assert result.returncode == 0, result.stderr[-3000:]
  assert "head/kernel: starts afresh with shape (1280, 100); the file's classifier.weight" \
      in result.stderr
  (record,) = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  assert record['step'] == 1 and np.isfinite(record['train_loss'])
