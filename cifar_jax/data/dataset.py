"""The in-memory form every data source produces."""
import dataclasses

import numpy as np

IMAGE_SHAPE = (32, 32, 3)


def _check_array(what: str, array: np.ndarray, dtype: type, shape: tuple[int, ...]) -> None:
  """Raises ValueError unless `array` has exactly `dtype` and `shape`."""
  if not isinstance(array, np.ndarray) or array.dtype != dtype or array.shape != shape:
    got = f'{array.dtype} {array.shape}' if isinstance(array, np.ndarray) else type(array).__name__
    raise ValueError(f'{what} must be {np.dtype(dtype)} {shape}, got {got}')


@dataclasses.dataclass(frozen=True)
class Split:
  """One split (train or test) of a dataset.

  Attributes:
    images: uint8 [N, 32, 32, 3], channels last.
    labels: int32 [N]; the fine labels for CIFAR-100.
    coarse_labels: int32 [N], the 20 superclasses of CIFAR-100; None for CIFAR-10.
  """
  images: np.ndarray
  labels: np.ndarray
  coarse_labels: np.ndarray | None

  def __post_init__(self):
    # Every source builds Splits, so checking here catches a malformed one where
    # it is made rather than deep inside a compiled training step.
    if not isinstance(self.labels, np.ndarray) or self.labels.ndim != 1:
      raise ValueError(f'labels must be a 1-D array, got {self.labels!r:.80}')
    num = self.labels.shape[0]
    _check_array('labels', self.labels, np.int32, (num,))
    _check_array('images', self.images, np.uint8, (num, *IMAGE_SHAPE))
    if self.coarse_labels is not None:
      _check_array('coarse_labels', self.coarse_labels, np.int32, (num,))


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset with its train and test splits and class names.

  Attributes:
    name: 'cifar10' or 'cifar100'; for the 'folder' source, `config.dataset.name` as given.
    train: The training split.
    test: The test split.
    class_names: One name per class; the index is the label.
    coarse_class_names: The 20 superclass names of CIFAR-100; None for CIFAR-10.
  """
  name: str
  train: Split
  test: Split
  class_names: tuple[str, ...]
  coarse_class_names: tuple[str, ...] | None

  @property
  def num_classes(self) -> int:
    return len(self.class_names)
