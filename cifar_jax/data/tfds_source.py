"""CIFAR-10/100 from a TensorFlow Datasets copy prepared as array_record files.

`tfds.data_source` reads such a copy with NumPy alone; only building it, once,
needs TensorFlow.
"""
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from cifar_jax.data.dataset import IMAGE_SHAPE, Dataset, Split
from cifar_jax.errors import UserError

# Records fetched per call: batched reads are much faster than one at a time,
# and this many decoded images take only a few MiB.
_CHUNK = 2048


def load(name: str, data_dir: str) -> Dataset:
  """Loads dataset `name` from the tfds copy under `data_dir`.

  Args:
    name: 'cifar10' or 'cifar100'.
    data_dir: The tfds data directory: a local path or a gs:// bucket.

  Returns:
    The dataset.

  Raises:
    UserError: The dataset is not prepared there as array_record files.
  """
  train = _open(name, data_dir, 'train')
  test = _open(name, data_dir, 'test')
  features = train.dataset_info.features
  coarse = name == 'cifar100'
  return Dataset(
      name=name,
      train=_read_all(train, coarse),
      test=_read_all(test, coarse),
      class_names=tuple(features['label'].names),
      coarse_class_names=tuple(features['coarse_label'].names) if coarse else None)


def _open(name: str, data_dir: str, split: str) -> Sequence[Any]:
  """Opens one split for random access, without ever trying to build it."""
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  # A missing copy and one built in another file format both surface as
  # NotImplementedError or ValueError; an unreachable bucket as OSError.
  except (NotImplementedError, ValueError, OSError) as e:
    raise UserError(
        f'Found no {name} dataset prepared as array_record files in {data_dir}.\n'
        'To prepare it once (building needs TensorFlow):\n'
        '  pip install -e ".[tfds-build]"\n'
        f'  tfds build {name} --file_format=array_record --data_dir={data_dir}\n'
        f'then pass --config.dataset.data_dir={data_dir} (the directory given to '
        f'--data_dir) to read it.\nDetails from tfds: {e}') from e


def _read_all(source: Sequence[Any], coarse: bool) -> Split:
  """Reads every record of `source` into arrays."""
  num = len(source)
  images = np.empty((num, *IMAGE_SHAPE), np.uint8)
  labels = np.empty(num, np.int32)
  coarse_labels = np.empty(num, np.int32) if coarse else None
  for start in range(0, num, _CHUNK):
    keys = list(range(start, min(start + _CHUNK, num)))
    for i, record in zip(keys, _read_batch(source, keys), strict=True):
      images[i] = record['image']
      labels[i] = record['label']
      if coarse_labels is not None:
        coarse_labels[i] = record['coarse_label']
  return Split(images, labels, coarse_labels)


def _read_batch(source: Sequence[Any], keys: list[int]) -> Sequence[dict[str, Any]]:
  """Reads and decodes the records at `keys` in one batched read."""
  try:
    return source.__getitems__(keys)
  # tfds decodes the stored PNGs with OpenCV or Pillow, whichever is installed.
  except ImportError as e:
    raise UserError(f'Reading the tfds copy needs Pillow: pip install pillow ({e})') from e
