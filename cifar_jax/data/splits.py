"""The splits a run trains and evaluates on, as host arrays."""
import ml_collections
import numpy as np

from cifar_jax.data import dataset as dataset_lib
from cifar_jax.data import load
from cifar_jax.errors import UserError


def load_splits(config: ml_collections.ConfigDict) -> tuple[dataset_lib.Dataset, dict]:
  """The dataset and its splits on the host: name -> (uint8 images, int32 labels).

  Names are 'train', 'test' and, when `dataset.validation_size` is set, 'val':
  examples held out of 'train'.
  """
  d = config.dataset
  dataset = load(d.name, d.source, d.data_dir, download=d.download,
                 synthetic_train_size=d.synthetic_train_size,
                 synthetic_test_size=d.synthetic_test_size, synthetic_seed=config.seed)
  splits = {'train': (dataset.train.images, dataset.train.labels.astype(np.int32)),
            'test': (dataset.test.images, dataset.test.labels.astype(np.int32))}
  if d.validation_size:
    images, labels = splits['train']
    if not 0 < d.validation_size < len(labels):
      raise UserError(f'config.dataset.validation_size={d.validation_size} must be between 0 and '
                      f'the {len(labels)} training examples.')
    # A fixed split (by seed), so resumed and repeated runs hold out the same examples.
    order = np.random.default_rng(config.seed).permutation(len(labels))
    held, kept = order[:d.validation_size], np.sort(order[d.validation_size:])
    splits['val'] = (images[held], labels[held])
    splits['train'] = (images[kept], labels[kept])
  return dataset, splits
