"""Random stand-in data with the shapes of CIFAR, for runs without the real data.

Each class has a fixed random template image and every example is its class
template plus noise, so a small network learns it within a hundred steps or
so: a run on this data checks that training works end to end, not how well a
model does on CIFAR.
"""
import numpy as np

from cifar_jax.data.dataset import IMAGE_SHAPE, Dataset, Split
from cifar_jax.errors import UserError

CIFAR10_CLASS_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
                       'horse', 'ship', 'truck')
_CIFAR100_FINE_PER_COARSE = 5
_NUM_CLASSES = {'cifar10': 10, 'cifar100': 100}
# Templates are a coarse grid of random colours: patterns this coarse are learnt
# quickly, even for 100 classes with a few examples each and under random crops
# and flips, where per-pixel random templates are not.
_TEMPLATE_GRID = 2
# Small next to the spread of the uniform colours (about 74), so classes stay
# easy to tell apart, yet large enough that no two examples are alike.
_NOISE_STD = 32.0


def make(name: str, train_size: int, test_size: int, seed: int) -> Dataset:
  """Makes a synthetic dataset shaped like `name`, fully determined by `seed`.

  Args:
    name: 'cifar10' or 'cifar100'.
    train_size: Number of training examples.
    test_size: Number of test examples.
    seed: Seed of all the randomness.

  Returns:
    The dataset; train and test share the class templates.

  Raises:
    UserError: A size is not positive.
  """
  for what, size in (('synthetic_train_size', train_size), ('synthetic_test_size', test_size)):
    if size < 1:
      raise UserError(f'{what} must be at least 1, got {size}.')
  num_classes = _NUM_CLASSES[name]
  rng = np.random.default_rng(seed)
  templates = _templates(rng, num_classes)
  train = _split(rng, templates, train_size, coarse=name == 'cifar100')
  test = _split(rng, templates, test_size, coarse=name == 'cifar100')
  if name == 'cifar10':
    return Dataset(name, train, test, CIFAR10_CLASS_NAMES, None)
  num_coarse = num_classes // _CIFAR100_FINE_PER_COARSE
  return Dataset(
      name, train, test,
      class_names=tuple(f'class_{i:03d}' for i in range(num_classes)),
      coarse_class_names=tuple(f'superclass_{i:02d}' for i in range(num_coarse)))


def _templates(rng: np.random.Generator, num_classes: int) -> np.ndarray:
  """Draws one float32 [32, 32, 3] template per class."""
  cells = rng.uniform(0, 255, size=(num_classes, _TEMPLATE_GRID, _TEMPLATE_GRID, 3))
  cell_size = IMAGE_SHAPE[0] // _TEMPLATE_GRID
  return np.repeat(np.repeat(cells, cell_size, axis=1), cell_size, axis=2).astype(np.float32)


def _split(rng: np.random.Generator, templates: np.ndarray, size: int, coarse: bool) -> Split:
  """Draws `size` examples spread evenly over the classes, in random order."""
  num_classes = len(templates)
  labels = rng.permutation(np.arange(size) % num_classes).astype(np.int32)
  noise = rng.standard_normal((size, *IMAGE_SHAPE), dtype=np.float32) * _NOISE_STD
  images = np.clip(np.rint(templates[labels] + noise), 0, 255).astype(np.uint8)
  coarse_labels = labels // _CIFAR100_FINE_PER_COARSE if coarse else None
  return Split(images, labels, coarse_labels)
