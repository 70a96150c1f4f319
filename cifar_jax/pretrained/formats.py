"""Readers of pretrained-weight files: each returns a flat dict of names to numpy arrays.

None of them executes code stored in the file: `.npz` is read with pickling off, `.safetensors`
is a plain tensor container, `.pth` goes only through PyTorch's weights-only unpickler, `.h5` is
read as plain HDF5 datasets, and a `.keras` archive's config.json as plain JSON.
"""
import io
import itertools
import json
import os
import pickle
import re
import zipfile

import numpy as np

from cifar_jax.errors import UserError


def read_npz(path: str) -> dict[str, np.ndarray]:
  """A `.npz` archive (the ViT releases: names like 'Transformer/encoder_norm/scale')."""
  with np.load(path, allow_pickle=False) as archive:
    return {name: archive[name] for name in archive.files}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """A `.safetensors` file (e.g. a torchvision or timm state dict), without PyTorch."""
  import safetensors  # noqa: PLC0415 (only this format needs it)
  import safetensors.numpy  # noqa: PLC0415
  try:
    return safetensors.numpy.load_file(path)
  except safetensors.SafetensorError as e:
    raise ValueError(str(e)) from None


def read_torch(path: str) -> dict[str, np.ndarray]:
  """A PyTorch state dict (`.pth`, `.pt`, `.bin`) through PyTorch's weights-only loader.

  Also accepts a training checkpoint that nests the state dict under 'state_dict' or 'model',
  and strips the 'module.' prefix that `DistributedDataParallel` adds.
  """
  try:
    import torch  # noqa: PLC0415 (optional dependency)
  except ImportError:
    raise UserError(f'reading {path} needs PyTorch (`pip install torch`); or convert it to '
                    '.safetensors, which loads without PyTorch.') from None
  state = torch.load(path, map_location='cpu', weights_only=True)
  for wrapper in ('state_dict', 'model'):
    if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
      state = state[wrapper]
  if not isinstance(state, dict):
    raise UserError(f'{path} holds a {type(state).__name__}, not a state dict of tensors.')
  return {name.removeprefix('module.'): _torch_to_numpy(tensor)
          for name, tensor in state.items() if isinstance(tensor, torch.Tensor)}


def _torch_to_numpy(tensor) -> np.ndarray:
  # numpy has no bfloat16: half-precision weights are widened to float32.
  if tensor.is_floating_point():
    tensor = tensor.float()
  return tensor.detach().cpu().numpy()


def read_keras_h5(path: str) -> dict[str, np.ndarray]:
  """Keras HDF5 weights in either layout, as 'layer/weight' names ('conv1_conv/kernel').

  The legacy layout (Keras 1 and 2, the keras.applications downloads, Keras 3's `model.save`
  to `.h5`) has a "layer_names" attribute; Keras 3's `save_weights('x.weights.h5')` has a
  "layers" group of numbered variables instead. Either gives the same names.
  """
  import h5py  # noqa: PLC0415 (only this format needs it)
  with h5py.File(path, 'r') as f:
    group = f['model_weights'] if 'model_weights' in f else f
    if 'layer_names' in group.attrs:
      return _legacy_keras_arrays(group)
    if any(isinstance(f.get(key), h5py.Group) for key in _KERAS3_TOP_GROUPS):
      return _keras3_arrays(f, path, {})
  raise UserError(f'{path} is in neither Keras weights layout: it has no "layer_names" attribute '
                  '(legacy `.h5`) and no "layers" group (Keras 3 `.weights.h5`).')


def read_keras_archive(path: str) -> dict[str, np.ndarray]:
  """A Keras 3 `model.save('x.keras')` archive: its model.weights.h5, with the layers named by
  its config.json where the weights file does not name them itself (Keras before 3.6)."""
  import h5py  # noqa: PLC0415 (only this format needs it)
  with zipfile.ZipFile(path) as archive:
    config = json.loads(archive.read('config.json'))
    weights = io.BytesIO(archive.read('model.weights.h5'))
  if not isinstance(config, dict) or not isinstance(config.get('config'), dict):
    raise ValueError('config.json does not describe a Keras model')
  layers = _keras_config_layers(config['config'], 'layers')
  with h5py.File(weights, 'r') as f:
    return _keras3_arrays(f, path, layers)


def _legacy_keras_arrays(group) -> dict[str, np.ndarray]:
  """The legacy layout's arrays: each layer's group lists its weights in "weight_names"."""
  arrays = {}
  for layer in group.attrs['layer_names']:
    layer = _text(layer)
    weights = [_text(w) for w in group[layer].attrs.get('weight_names', [])]
    # A nested model is one "layer" whose weights carry its own layers' names, e.g.
    # 'block1_conv1/kernel' in the group 'vgg19': those names are kept.
    scopes = {w.removesuffix(':0').split('/')[-2] for w in weights if '/' in w}
    nested = len(scopes) > 1
    for weight in weights:
      parts = weight.removesuffix(':0').split('/')
      owner = parts[-2] if nested else layer
      arrays[f'{owner}/{_keras1_name(owner, parts[-1])}'] = np.asarray(group[layer][weight])
  return arrays


# Keras 1 named a layer's weights '<layer>_W' and '<layer>_b' (with a TensorFlow suffix such as
# '_1'), as in Keras applications' VGG16/VGG19 downloads: 'block1_conv1_W_1:0'.
_KERAS1_NAMES = {'W': 'kernel', 'b': 'bias'}


def _keras1_name(layer: str, weight: str) -> str:
  match = re.fullmatch(re.escape(layer) + r'_(W|b)(?:_\d+)?', weight)
  return _KERAS1_NAMES[match.group(1)] if match else weight


# Where Keras 3 (and tf.keras 2.13+'s new format) keep a model's layers, and its own variables.
_KERAS3_TOP_GROUPS = ('layers', '_layer_checkpoint_dependencies', 'vars')

# The variables Keras 3 saves for each layer class (its group's name is the class in snake case,
# numbered after the first: 'conv2d_3'), in the order it numbers them, named as the legacy layout
# names them; an optional one comes with the config flag that creates it. DepthwiseConv2D's
# kernel is 'kernel' inside Keras 3 but 'depthwise_kernel' in the legacy downloads.
_CONV = (('kernel', None), ('bias', 'use_bias'))
_KERAS3_VARIABLES = {
    **dict.fromkeys(('conv1d', 'conv2d', 'conv3d', 'conv1d_transpose', 'conv2d_transpose',
                     'conv3d_transpose', 'dense'), _CONV),
    'depthwise_conv1d': (('depthwise_kernel', None), ('bias', 'use_bias')),
    'depthwise_conv2d': (('depthwise_kernel', None), ('bias', 'use_bias')),
    'separable_conv1d': (('depthwise_kernel', None), ('pointwise_kernel', None),
                         ('bias', 'use_bias')),
    'separable_conv2d': (('depthwise_kernel', None), ('pointwise_kernel', None),
                         ('bias', 'use_bias')),
    'batch_normalization': (('gamma', 'scale'), ('beta', 'center'), ('moving_mean', None),
                            ('moving_variance', None)),
    'layer_normalization': (('gamma', 'scale'), ('beta', 'center')),
    'normalization': (('mean', None), ('variance', None), ('count', None)),
    'embedding': (('embeddings', None),),
}


def _keras3_arrays(f, path: str, layers: dict) -> dict[str, np.ndarray]:
  """The arrays of a Keras 3 weights file, whose layers nest in groups of numbered 'vars'.

  `layers`: (name, class, config) of each layer group, from a `.keras` archive's config.json,
  for files whose 'vars' groups carry no "name" attribute.
  """
  arrays = {}
  for group_path, variables in _keras3_variable_groups(f):
    values = [variables[str(i)] for i in range(len(variables))]
    if not values:
      continue
    # tf.keras 2.13 saved a Functional model's layers under this name; Keras 3 reads it so too.
    key = group_path.replace('_layer_checkpoint_dependencies', 'layers')
    name, kind, config = layers.get(key, (None, re.sub(r'_\d+$', '', key.rsplit('/', 1)[-1]),
                                          None))
    name = _text(variables.attrs['name']) if 'name' in variables.attrs else name
    if name is None:
      raise UserError(f'{path} does not name the layer of its weights {group_path}/vars (Keras '
                      'before 3.6 wrote none to `.weights.h5`): load the model\'s `.keras` file, '
                      'whose config.json names them, or save the weights with Keras 3.6 or newer.')
    for variable, value in zip(_keras3_names(kind, config, values), values, strict=True):
      if f'{name}/{variable}' in arrays:
        raise UserError(f'{path} has two layers named {name!r}.')
      arrays[f'{name}/{variable}'] = _keras3_value(value)
  return arrays


def _keras3_variable_groups(f):
  """(path, group) of every 'vars' group of the model: its own and its layers', at any depth.

  The optimizer's variables, saved beside the layers by `model.save`, are left out.
  """
  import h5py  # noqa: PLC0415

  def walk(group, prefix):
    for key, item in group.items():
      if not isinstance(item, h5py.Group):
        continue
      if key == 'vars':
        yield prefix, item
      else:
        yield from walk(item, f'{prefix}/{key}' if prefix else key)

  for key in _KERAS3_TOP_GROUPS:
    if key == 'vars' and isinstance(f.get('vars'), h5py.Group):
      yield '', f['vars']
    elif isinstance(f.get(key), h5py.Group):
      yield from walk(f[key], key)


def _keras3_names(kind: str, config: dict | None, values) -> list[str]:
  """The legacy names of a layer's numbered variables; the numbers themselves ('0', '1', ...)
  for a layer class, or a set of optional variables, that cannot be told apart."""
  spec = _KERAS3_VARIABLES.get(kind)
  if spec is not None and config is not None:
    names = [name for name, flag in spec if flag is None or config.get(flag, True)]
    if len(names) == len(values):
      return names
  elif spec is not None:
    # Without the config: the optional variables whose absence leaves this many, if only one set.
    optional = [name for name, flag in spec if flag]
    fits = [[name for name, _ in spec if name not in dropped]
            for size in range(len(optional) + 1)
            for dropped in itertools.combinations(optional, size)]
    fits = [names for names in fits if len(names) == len(values)]
    if len(fits) == 1:
      return fits[0]
  return [str(i) for i in range(len(values))]


def _keras3_value(dataset) -> np.ndarray:
  # Keras 3 stores bfloat16 variables as raw 2-byte values marked by a "dtype" attribute; numpy
  # has no bfloat16, so they are widened to float32 (ml_dtypes comes with JAX).
  if dataset.attrs.get('dtype') == 'bfloat16':
    import ml_dtypes  # noqa: PLC0415
    return np.asarray(dataset).view(ml_dtypes.bfloat16).astype(np.float32)
  return np.asarray(dataset)


def _keras_config_layers(config: dict, prefix: str) -> dict:
  """(name, class, config) of each layer of a Keras model config, by the group path Keras 3
  saves its variables under: 'layers/' and the class in snake case, numbered after the first
  of its class ('layers/conv2d_1'), with nested models' layers under their own 'layers/'."""
  layers, used = {}, {}
  for layer in config.get('layers', []):
    # A registered class is 'package>ClassName'; Keras 3 names the group by the class alone.
    kind = _snake_case(layer.get('class_name', '').rsplit('>', 1)[-1])
    count = used[kind] = used.get(kind, -1) + 1
    key = f'{prefix}/{kind}' + (f'_{count}' if count else '')
    layer_config = layer.get('config', {})
    layers[key] = (layer_config.get('name'), kind, layer_config)
    layers.update(_keras_config_layers(layer_config, f'{key}/layers'))
  return layers


def _snake_case(name: str) -> str:
  """Keras' `to_snake_case`: 'BatchNormalization' -> 'batch_normalization', 'Conv2D' -> 'conv2d'."""
  name = re.sub(r'\W+', '', name)
  name = re.sub('(.)([A-Z][a-z]+)', r'\1_\2', name)
  return re.sub('([a-z])([A-Z])', r'\1_\2', name).lower()


def _text(name) -> str:
  return name.decode() if isinstance(name, bytes) else str(name)


# File extension -> (format name, reader).
READERS = {
    '.npz': ('ViT .npz', read_npz),
    '.safetensors': ('safetensors', read_safetensors),
    '.pth': ('PyTorch', read_torch),
    '.pt': ('PyTorch', read_torch),
    '.bin': ('PyTorch', read_torch),
    '.h5': ('Keras HDF5', read_keras_h5),
    '.keras': ('Keras archive', read_keras_archive),
}

# The format names of Keras files, whatever their layout: they hold the same 'layer/weight' names.
KERAS = ('Keras HDF5', 'Keras archive')


def read(path: str) -> tuple[str, dict[str, np.ndarray]]:
  """The format name and arrays of the file at `path`, chosen by its extension.

  Raises:
    UserError: for a missing file, an unknown extension, or a file its reader cannot parse.
  """
  if not os.path.isfile(path):
    raise UserError(f'config.model.init_from={path}: no such file.')
  extension = os.path.splitext(path)[1].lower()
  if extension not in READERS:
    raise UserError(f'config.model.init_from={path}: unknown extension {extension!r}; '
                    f'pretrained weights are read from {", ".join(READERS)} files.')
  format_name, reader = READERS[extension]
  try:
    return format_name, reader(path)
  except UserError:
    raise
  except (OSError, ValueError, KeyError, zipfile.BadZipFile, pickle.UnpicklingError,
          RuntimeError) as e:
    # Includes a .pth whose pickle asks for anything but tensors (weights-only refuses it) and
    # a .npz holding pickled objects.
    raise UserError(f'could not read {path} as a {format_name} file: '
                    f'{type(e).__name__}: {e}') from None
