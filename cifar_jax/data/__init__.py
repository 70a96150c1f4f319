"""CIFAR-10 and CIFAR-100 as NumPy arrays, from one of three sources, or your own images.

- 'local': the official "python version" archives, downloaded if missing and
  checked for damage before use.
- 'tfds': a TensorFlow Datasets copy prepared as array_record files.
- 'synthetic': learnable random data of the same shapes, needing no files.
- 'folder': image files in DIR/train/<class>/ and DIR/test/<class>/, any number of classes.
"""
import os

from cifar_jax.data import folder, official, synthetic
from cifar_jax.data.dataset import Dataset, Split
from cifar_jax.data.official import OFFICIAL_URL_BASE
from cifar_jax.errors import check_choice

__all__ = [
    'DATASET_NAMES', 'OFFICIAL_URL_BASE', 'SOURCES', 'Dataset', 'Split', 'default_data_dir',
    'load',
]

DATASET_NAMES = ('cifar10', 'cifar100')
SOURCES = ('local', 'tfds', 'synthetic', 'folder')


def default_data_dir() -> str:
  """Per-user cache: $XDG_CACHE_HOME/cifar_jax, else ~/.cache/cifar_jax."""
  cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(cache, 'cifar_jax')


def load(name: str, source: str, data_dir: str = '', *, download: bool = True,
         url_base: str = OFFICIAL_URL_BASE, synthetic_train_size: int = 2048,
         synthetic_test_size: int = 512, synthetic_seed: int = 0) -> Dataset:
  """Loads a CIFAR dataset into memory.

  Args:
    name: One of DATASET_NAMES; for 'folder', any name (reports show it; the classes are the
      folder's).
    source: One of SOURCES.
    data_dir: Where the data is (or, for 'local', goes); '' means
      default_data_dir(). For 'local', a directory holding the extracted
      archive or the .tar.gz, or the path of the .tar.gz; for 'tfds', the tfds
      data directory (a local path or gs:// bucket); for 'folder', the folder
      holding train/ and test/ (required). Unused by 'synthetic'.
    download: For 'local', whether to download the archive when it is missing.
    url_base: For 'local', the URL of the directory holding the archives.
    synthetic_train_size: For 'synthetic', the number of training examples.
    synthetic_test_size: For 'synthetic', the number of test examples.
    synthetic_seed: For 'synthetic', the seed the data is drawn from.

  Returns:
    The dataset.

  Raises:
    UserError: An unknown name or source, a 'local' data_dir that is a file
      other than a .tar.gz, or data that is missing, damaged or malformed.
  """
  check_choice('config.dataset.source', source, SOURCES)
  if source == 'folder':
    return folder.load(os.path.expanduser(data_dir), name, user_cache_dir=default_data_dir())
  check_choice('config.dataset.name', name, DATASET_NAMES)
  if source == 'synthetic':
    return synthetic.make(name, synthetic_train_size, synthetic_test_size, synthetic_seed)
  data_dir = os.path.expanduser(data_dir or default_data_dir())
  if source == 'tfds':
    # Imported here: tensorflow_datasets is slow to import and only this source needs it.
    from cifar_jax.data import tfds_source
    return tfds_source.load(name, data_dir)
  return official.load(name, data_dir, download_missing=download, url_base=url_base)

