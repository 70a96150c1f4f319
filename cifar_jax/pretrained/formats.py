"""Readers of pretrained-weight files: each returns a flat dict of names to numpy arrays.

None of them executes code stored in the file: `.npz` is read with pickling off, `.safetensors`
is a plain tensor container, `.pth` goes only through PyTorch's weights-only unpickler, and
`.h5` is read as plain HDF5 datasets.
"""
import os
import pickle
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
  """Keras HDF5 weights (`save_weights` or a whole saved model), as 'layer/weight' names.

  E.g. 'conv1_conv/kernel' for the dataset 'conv1_conv/conv1_conv/kernel:0' that Keras'
  `resnet50_weights_tf_dim_ordering_tf_kernels.h5` holds.
  """
  import h5py  # noqa: PLC0415 (only this format needs it)
  with h5py.File(path, 'r') as f:
    group = f['model_weights'] if 'model_weights' in f else f
    if 'layer_names' not in group.attrs:
      raise UserError(f'{path} has no Keras "layer_names" attribute: it is not a Keras weights '
                      'file in the HDF5 layout of `save_weights(..., save_format="h5")`.')
    arrays = {}
    for layer in group.attrs['layer_names']:
      layer = _text(layer)
      for weight in group[layer].attrs.get('weight_names', []):
        weight = _text(weight)
        name = weight.rsplit('/', 1)[-1].removesuffix(':0')
        arrays[f'{layer}/{name}'] = np.asarray(group[layer][weight])
    return arrays


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
}


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
