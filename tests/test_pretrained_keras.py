"""Keras weights, in each layout Keras writes, load into the flax models and give Keras' outputs.

The references are keras.applications' VGG19 and ResNet50 (no top, 32x32 inputs) with random
weights and BatchNorm statistics, saved by Keras 3 itself: in the legacy `.h5` layout (renamed
as the keras.applications downloads name their weights: Keras 1's 'block1_conv1_W_1:0' for VGG19,
'conv1_conv/kernel:0' for ResNet50), as `.weights.h5` and as a `.keras` archive. Keras computes
on its own 'caffe'-preprocessed BGR input and cifar_jax on the RGB images normalised 'caffe';
both pooled feature vectors go through the same random head. Skipped without Keras 3, which runs
on its JAX backend here (TensorFlow is not needed).
"""
import io
import zipfile

import h5py
import numpy as np
import pytest
from conftest import (
  assert_load_refused,
  import_keras,
  keras_application,
  random_images,
  zero_variables,
)

from cifar_jax import models, pretrained
from cifar_jax.augment import normalize
from cifar_jax.errors import UserError

NUM_CLASSES = 5


def randomised(keras_model, seed=0):
  """`keras_model` with random weights of a trained network's scale: He-normal kernels, and
  biases, BatchNorm scales, offsets and running statistics that all change the outputs."""
  rng = np.random.default_rng(seed)
  draw = {
      'kernel': lambda shape: rng.normal(size=shape) * np.sqrt(2 / np.prod(shape[:-1])),
      'bias': lambda shape: rng.normal(size=shape),
      'gamma': lambda shape: rng.uniform(0.5, 1.5, size=shape),
      'beta': lambda shape: rng.uniform(-0.2, 0.2, size=shape),
      'moving_mean': lambda shape: rng.uniform(-0.3, 0.3, size=shape),
      'moving_variance': lambda shape: rng.uniform(0.5, 2.0, size=shape),
  }
  for layer in keras_model.layers:
    if layer.weights:
      layer.set_weights([draw[w.name](w.shape).astype(np.float32) for w in layer.weights])
  return keras_model


class Reference:
  """A Keras network, a random head for its pooled features, and its logits on IMAGES."""

  def __init__(self, keras, keras_model, preprocess):
    self.keras_model = keras_model
    self.images = random_images(2)
    rng = np.random.default_rng(1)
    features = keras_model.output_shape[-1]
    self.head = {'kernel': (rng.normal(size=(features, NUM_CLASSES)) / np.sqrt(features)),
                 'bias': rng.normal(size=NUM_CLASSES)}
    self.head = {k: v.astype(np.float32) for k, v in self.head.items()}
    feature_map = keras.ops.convert_to_numpy(
        keras_model(preprocess(self.images.astype(np.float32)), training=False))
    self.logits = feature_map.mean(axis=(1, 2)) @ self.head['kernel'] + self.head['bias']

  def assert_same_logits(self, model, params, batch_stats):
    """`model` with the loaded variables and the reference's head gives the reference's logits."""
    params = {**params, 'head': self.head}
    inputs = normalize.model_inputs(self.images, *normalize.input_stats('caffe', None), 32)
    logits = model.apply({'params': params, 'batch_stats': batch_stats}, inputs, train=False)
    np.testing.assert_allclose(np.asarray(logits), self.logits, rtol=1e-4,
                               atol=1e-4 * np.abs(self.logits).max())


@pytest.fixture(scope='module')
def keras():
  return import_keras()


@pytest.fixture(scope='module')
def vgg19(keras):
  network = keras_application(keras, 'VGG19', include_top=False)
  return Reference(keras, randomised(network), keras.applications.vgg19.preprocess_input)


@pytest.fixture(scope='module')
def resnet50(keras):
  network = keras_application(keras, 'ResNet50', include_top=False)
  return Reference(keras, randomised(network), keras.applications.resnet50.preprocess_input)


def save_legacy_h5(keras_model, path):
  """Keras' legacy HDF5 weights, with "layer_names" at the top as in the keras.applications
  downloads; Keras 3 writes the layout inside its legacy whole-model `.h5`."""
  whole = str(path) + '.model.h5'
  keras_model.save(whole)
  with h5py.File(whole, 'r') as source, h5py.File(path, 'w') as target:
    for name, value in source['model_weights'].attrs.items():
      target.attrs[name] = value
    for layer in source['model_weights']:
      source.copy(source['model_weights'][layer], target, layer)


def rename_weights(path, rename):
  """Renames each weight of a legacy `.h5` (its dataset and its "weight_names" entry):
  rename(layer, 'kernel') -> the new name."""
  with h5py.File(path, 'r+') as f:
    for layer in f.attrs['layer_names']:
      group = f[layer]
      names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs['weight_names']]
      arrays = {name: np.asarray(group[name]) for name in names}
      for name in list(group):
        del group[name]
      renamed = [rename(layer, name.rsplit('/', 1)[-1]) for name in names]
      for old, new in zip(names, renamed, strict=True):
        group.create_dataset(new, data=arrays[old])
      group.attrs['weight_names'] = np.array([n.encode() for n in renamed], dtype='S')


def as_vgg_download(layer, weight):
  """Keras 1's names, which keras.applications' VGG16 and VGG19 files still carry."""
  return f'{layer}_{ {"kernel": "W", "bias": "b"}[weight]}_1:0'


def as_resnet_download(layer, weight):
  return f'{layer}/{weight}:0'


def strip_layer_names(archive_path):
  """The `.keras` archive as Keras before 3.6 wrote it: no layer names in model.weights.h5."""
  with zipfile.ZipFile(archive_path) as archive:
    members = {name: archive.read(name) for name in archive.namelist()}
  weights = io.BytesIO(members['model.weights.h5'])
  with h5py.File(weights, 'r+') as f:
    f.visititems(lambda name, item: item.attrs.pop('name', None) if name.endswith('vars')
                 else None)
  members['model.weights.h5'] = weights.getvalue()
  with zipfile.ZipFile(archive_path, 'w') as archive:
    for name, data in members.items():
      archive.writestr(name, data)


def save(reference, layout, directory, download_names):
  """Writes the reference network in `layout`; returns the file's path."""
  network = reference.keras_model
  if layout == 'legacy .h5':
    path = str(directory / 'weights_tf_dim_ordering_tf_kernels_notop.h5')
    save_legacy_h5(network, path)
    rename_weights(path, download_names)
  elif layout == '.weights.h5':
    path = str(directory / 'model.weights.h5')
    network.save_weights(path)
  else:
    path = str(directory / 'model.keras')
    network.save(path)
    if layout == '.keras before Keras 3.6':
      strip_layer_names(path)
  return path


LAYOUTS = ('legacy .h5', '.weights.h5', '.keras', '.keras before Keras 3.6')


@pytest.mark.parametrize('layout', LAYOUTS)
def test_keras_vgg19_gives_keras_outputs(vgg19, layout, tmp_path):
  path = save(vgg19, layout, tmp_path, as_vgg_download)
  model = models.create_model('vgg19', num_classes=NUM_CLASSES, batch_norm=False)
  params, batch_stats, notes = pretrained.load(path, model, *zero_variables(model))
  assert notes == ["head/bias: starts afresh in place of the file's classifier",
                   "head/kernel: starts afresh in place of the file's classifier"]
  vgg19.assert_same_logits(model, params, batch_stats)


@pytest.mark.parametrize('layout', LAYOUTS)
def test_keras_resnet50_gives_keras_outputs(resnet50, layout, tmp_path):
  path = save(resnet50, layout, tmp_path, as_resnet_download)
  model = models.create_model('resnet50_keras', num_classes=NUM_CLASSES, stem='imagenet')
  params, batch_stats, notes = pretrained.load(path, model, *zero_variables(model))
  assert notes == ['head/bias: not in the file, starts afresh',
                   'head/kernel: not in the file, starts afresh']
  resnet50.assert_same_logits(model, params, batch_stats)


def test_keras_vgg19_file_keeps_its_classifier_out_of_the_model(keras, vgg19, tmp_path):
  """The files with a top (fc1, fc2, predictions) load too: the head starts at zero."""
  network = keras_application(keras, 'VGG19', classes=3)
  path = str(tmp_path / 'vgg19.weights.h5')
  network.save_weights(path)
  model = models.create_model('vgg19', num_classes=NUM_CLASSES, batch_norm=False)
  params, _, notes = pretrained.load(path, model, *zero_variables(model))
  assert notes[-1] == 'left out of the file: fc1/bias, fc1/kernel, fc2/bias, fc2/kernel ...'
  np.testing.assert_array_equal(params['head']['kernel'], 0)
  np.testing.assert_array_equal(params['block5_conv4']['kernel'],
                                network.get_layer('block5_conv4').get_weights()[0])


@pytest.mark.parametrize('suffix', ['.keras', '.h5'])
def test_a_keras_model_nested_in_another_loads_by_its_layers_names(keras, vgg19, suffix,
                                                                    tmp_path):
  """As a fine-tuning script saves it: VGG19 as one layer of a larger model."""
  inputs = keras.Input((32, 32, 3))
  outer = keras.Model(inputs, keras.layers.Activation('linear')(vgg19.keras_model(inputs)))
  path = str(tmp_path / f'finetuned{suffix}')
  outer.save(path)
  model = models.create_model('vgg19', num_classes=NUM_CLASSES, batch_norm=False)
  params, batch_stats, _ = pretrained.load(path, model, *zero_variables(model))
  vgg19.assert_same_logits(model, params, batch_stats)


@pytest.fixture(scope='module')
def vgg19_files(vgg19, tmp_path_factory):
  """The reference VGG19 in the three layouts Keras writes, each in its own directory."""
  return {layout: save(vgg19, layout, tmp_path_factory.mktemp('vgg19'), as_vgg_download)
          for layout in LAYOUTS[:3]}


@pytest.mark.parametrize('layout', LAYOUTS[:3])
@pytest.mark.parametrize('model_name, fields, message', [
    ('vgg19', {}, r"Keras' VGG16 and VGG19 have no BatchNorm; load them into a VGG with "
                  r'--config.model.batch_norm=False\.'),
    ('vgg16', {'batch_norm': False}, r'has 6 weights the model has no place for, e\.g\. '
                                     r'block3_conv4/bias, block3_conv4/kernel, block4_conv4/bias'),
    ('vgg19', {'batch_norm': False, 'width': 32},
     r"block1_conv1/bias has shape \(64,\) but the model's block1_conv1/bias needs \(32,\)"),
    ('resnet50_keras', {}, r"has no 'conv2_block1_1_bn/beta' for the model's "
                           r'stage1_block0/bn1/bias \(64,\)'),
])
def test_a_keras_file_of_another_architecture_is_refused_naming_the_weight(
    vgg19_files, layout, model_name, fields, message):
  model = models.create_model(model_name, num_classes=NUM_CLASSES, **fields)
  assert_load_refused(vgg19_files[layout], model, message)


@pytest.mark.parametrize('layout, error', [
    ('legacy .h5', 'could not read .* as a Keras HDF5 file'),
    ('.weights.h5', 'could not read .* as a Keras HDF5 file'),
    ('.keras', 'could not read .* as a Keras archive file: BadZipFile'),
])
def test_a_truncated_keras_file_is_refused_in_one_line(vgg19_files, layout, error, tmp_path):
  source = vgg19_files[layout]
  path = tmp_path / source.rsplit('/', 1)[-1]
  path.write_bytes(open(source, 'rb').read()[:100_000])
  model = models.create_model('vgg19', num_classes=NUM_CLASSES, batch_norm=False)
  assert_load_refused(str(path), model, error)


def test_weights_without_layer_names_or_layout_are_refused_saying_why(vgg19_files, tmp_path):
  model = models.create_model('vgg19', num_classes=NUM_CLASSES, batch_norm=False)
  variables = zero_variables(model)
  unnamed = tmp_path / 'old.weights.h5'
  unnamed.write_bytes(open(vgg19_files['.weights.h5'], 'rb').read())
  with h5py.File(unnamed, 'r+') as f:
    f.visititems(lambda name, item: item.attrs.pop('name', None) if name.endswith('vars')
                 else None)
  with pytest.raises(UserError, match=r"does not name the layer of its weights layers/conv2d/vars "
                                      r"\(Keras before 3.6 wrote none.*load the model's `.keras`"):
    pretrained.load(str(unnamed), model, *variables)
  with h5py.File(tmp_path / 'other.h5', 'w') as f:
    f['weights'] = np.zeros(3)
  with pytest.raises(UserError, match='other.h5 is in neither Keras weights layout: it has no '
                                      '"layer_names" attribute'):
    pretrained.load(str(tmp_path / 'other.h5'), model, *variables)
