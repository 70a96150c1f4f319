"""Your own images as a dataset: one folder per class, in a train and a test folder.

    DIR/train/<class>/<image>    DIR/test/<class>/<image>

Every file under a class folder (subfolders too; names starting with '.' are skipped) is an
image of that class, in any format and size Pillow reads; files directly in train/ or test/ are
not. The class names are the folder names, sorted by code point, so a class's label is its place
in that order (CIFAR-10's names are already in it).

Each image becomes uint8 32x32 RGB with `images.read_image`: the centre square, shrunk with
Pillow's LANCZOS filter. 32x32 because that is the shape every later stage takes (the
on-device crops, flips and cutout, the model's `input_size` resizing on the device, `predict`);
the centre square because stretching would distort the objects; LANCZOS because it averages
each output pixel over the input pixels it covers (no aliasing), and because `predict` uses the
same function, so an image is seen the same way in training and in prediction.

Decoding thousands of photos takes a while, so it is done once: the arrays are cached beside a
fingerprint of the folder (every file's path, size and modification time, and the decoding
method), in DIR/.cifar_jax_cache/<fingerprint>.npz, or under the per-user cache when DIR cannot
be written. A later run with the same files reads the cache at once; any added, removed,
renamed or rewritten file changes the fingerprint, and the folder is decoded again.

The test images are in the listing's order (class by class); the training images in a fixed
random order (`training_order`), so that the first N are a sample of every class.
"""
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import logging
import os
import sys
import time
import zipfile

import numpy as np
import tqdm

from cifar_jax import files
from cifar_jax.data import images as images_lib
from cifar_jax.data.dataset import Dataset, Split
from cifar_jax.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ('train', 'test')
CACHE_FOLDER = '.cifar_jax_cache'
_LAYOUT = 'DIR/train/<class>/<images> and DIR/test/<class>/<images>'
# Pillow decodes and resizes without holding Python's lock, so threads decode in parallel.
_THREADS = min(16, os.cpu_count() or 1)
# Names in an error message before the rest are only counted.
_NAMED = 5
# Seconds after which a temporary cache file is taken to be left over, not being written.
_STALE_S = 24 * 3600


@dataclasses.dataclass(frozen=True)
class _Listing:
  """The image files of a folder dataset, without their pixels."""
  class_names: tuple[str, ...]
  files: dict  # Split name -> [(path, label)], class by class, each class's files sorted.
  fingerprint: str


def load(data_dir: str, name: str, user_cache_dir: str) -> Dataset:
  """Loads the images under `data_dir` (see the module's docstring), from the cache if current.

  Args:
    data_dir: The folder holding train/ and test/.
    name: What the dataset is called in reports (`config.dataset.name`).
    user_cache_dir: Where the decoded images are cached when `data_dir` cannot be written.

  Raises:
    UserError: a missing train/ or test/ folder, no images at all, classes not the same in
      both, a class without images, fewer than two classes, or a file Pillow cannot read.
  """
  listing = _list(data_dir)
  places = _cache_places(data_dir, user_cache_dir, listing.fingerprint)
  splits = _read_cache(places, listing)
  if splits is None:
    splits = _decode(data_dir, listing)
    _write_cache(places, splits, listing)
  # The training images in a fixed random order, as CIFAR's archives hold theirs, not class by
  # class: batches are drawn by a new permutation each epoch anyway, but whatever takes the
  # first N training images (airbench's patch whitening takes 5,000) must see every class.
  order = training_order(len(splits['train'].labels))
  train = Split(splits['train'].images[order], splits['train'].labels[order], None)
  return Dataset(name=name, train=train, test=splits['test'],
                 class_names=listing.class_names, coarse_class_names=None)


def training_order(count: int) -> np.ndarray:
  """The order of the training images: a permutation of the listing (class by class, each
  class's files sorted) that depends on the number of images only, not on the run's seed."""
  return np.random.default_rng(0).permutation(count)


def _list(data_dir: str) -> _Listing:
  """The classes and image files under `data_dir`, checked for the mistakes `load` names."""
  if not data_dir:
    raise UserError("config.dataset.source='folder' needs --config.dataset.data_dir=DIR, the "
                    f'folder of your images: {_LAYOUT}.')
  if not os.path.isdir(data_dir):
    raise UserError(f'{data_dir} is not a directory: --config.dataset.data_dir must be the folder '
                    f'of your images, {_LAYOUT}.')
  by_split = {}
  for split in SPLITS:
    root = os.path.join(data_dir, split)
    if not os.path.isdir(root):
      raise UserError(f'{data_dir} has no {split}/ folder: the folder source reads {_LAYOUT}.')
    by_split[split] = {entry: _files(os.path.join(root, entry)) for entry in _visible(root)
                       if os.path.isdir(os.path.join(root, entry))}
  if not any(files for classes in by_split.values() for files in classes.values()):
    raise UserError(f'{data_dir} holds no images: put them in {_LAYOUT}, one folder per class.')
  train, test = set(by_split['train']), set(by_split['test'])
  if train != test:
    differences = '; '.join(
        f'only in {split}/: {_names(sorted(only))}'
        for split, only in (('train', train - test), ('test', test - train)) if only)
    raise UserError(f'The class folders of {data_dir}/train and {data_dir}/test differ ('
                    f'{differences}): every class needs a folder in both.')
  empty = [os.path.join(data_dir, split, c) for split in SPLITS
           for c, files in sorted(by_split[split].items()) if not files]
  if empty:
    raise UserError(f'No images in {_names(empty)}: every class needs training and test images '
                    '(or remove its folder from both train/ and test/).')
  class_names = tuple(sorted(train))
  if len(class_names) < 2:
    raise UserError(f'{data_dir} has one class, {class_names[0]}: a classifier needs at least '
                    'two class folders.')
  files = {split: [(path, label) for label, c in enumerate(class_names)
                   for path in by_split[split][c]] for split in SPLITS}
  return _Listing(class_names, files, _fingerprint(data_dir, files))


def _visible(folder: str) -> list[str]:
  """The sorted names in `folder`, without hidden ones (.DS_Store, .cifar_jax_cache, ...)."""
  try:
    return sorted(entry for entry in os.listdir(folder) if not entry.startswith('.'))
  except OSError as e:
    raise UserError(f'Cannot list {folder}: {e.strerror or e}.') from None


def _files(class_folder: str) -> list[str]:
  """The paths of the files under `class_folder`, subfolders included, sorted."""
  found = []
  for folder, subfolders, entries in os.walk(class_folder, onerror=_raise_listing_error):
    subfolders[:] = sorted(entry for entry in subfolders if not entry.startswith('.'))
    found += [os.path.join(folder, entry) for entry in sorted(entries)
              if not entry.startswith('.')]
  return found


def _raise_listing_error(error: OSError):
  raise UserError(f'Cannot list {error.filename}: {error.strerror or error}.')


def _names(items: list[str]) -> str:
  """'a, b, c' (and how many more)."""
  more = f' and {len(items) - _NAMED} more' if len(items) > _NAMED else ''
  return ', '.join(items[:_NAMED]) + more


def _fingerprint(data_dir: str, files: dict) -> str:
  """A hash of the decoding method and each file's path (relative to `data_dir`), size and
  modification time: what changes when the images do."""
  digest = hashlib.sha256(images_lib.METHOD.encode())
  for split in SPLITS:
    for path, label in files[split]:
      try:
        stat = os.stat(path)
        size, mtime = stat.st_size, stat.st_mtime_ns
      except OSError:  # A dangling link: decoding names it.
        size = mtime = -1
      digest.update(f'{os.path.relpath(path, data_dir)}\0{label}\0{size}\0{mtime}\n'.encode())
  return digest.hexdigest()[:32]


def _cache_places(data_dir: str, user_cache_dir: str, fingerprint: str) -> list[tuple[str, str]]:
  """(folder, file name) of the cache, in the order tried: beside the images, then per user.

  The per-user cache serves any number of image folders, so its file names start with a hash of
  the folder's path.
  """
  folder_key = hashlib.sha256(os.path.realpath(data_dir).encode()).hexdigest()[:16]
  return [(os.path.join(data_dir, CACHE_FOLDER), f'{fingerprint}.npz'),
          (os.path.join(user_cache_dir, 'folders'), f'{folder_key}-{fingerprint}.npz')]


def _read_cache(places: list[tuple[str, str]], listing: _Listing) -> dict | None:
  """The splits from the first cache in `places` that holds this listing's images, or None."""
  for folder, name in places:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
      continue
    try:
      with np.load(path, allow_pickle=False) as cached:
        names = tuple(str(n) for n in cached['class_names'])
        splits = {split: Split(cached[f'{split}_images'], cached[f'{split}_labels'], None)
                  for split in SPLITS}
      if names == listing.class_names and all(
          len(splits[s].labels) == len(listing.files[s]) for s in SPLITS):
        log.info('Read the decoded images of the folder from %s.', path)
        return splits
    # A cache cut short or damaged is decoded again and rewritten.
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
      pass
    log.warning('%s is damaged; decoding the images again.', path)
  return None


def _decode(data_dir: str, listing: _Listing) -> dict:
  """Every image of the listing as uint8 [32, 32, 3] arrays, split by split.

  Raises:
    UserError: naming the first file that cannot be read, and how many others cannot.
  """
  paths = [path for split in SPLITS for path, _ in listing.files[split]]
  log.info('Decoding the %d images in %s (once: later runs read them from a cache).', len(paths),
           data_dir)
  decoded, failures = [], []
  # The bar redraws itself in a terminal only, as the training loop's does.
  with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool, tqdm.tqdm(
      total=len(paths), desc='Decoding images', unit='image', leave=False,
      disable=not sys.stderr.isatty()) as progress:
    for image, failure in pool.map(_read, paths):
      decoded.append(image)
      if failure:
        failures.append(failure)
      progress.update()
  if failures:
    others = (f' (and {len(failures) - 1} more unreadable file(s))' if len(failures) > 1 else '')
    raise UserError(f'{failures[0]}{others}. Remove or replace it in {data_dir}.')
  splits, start = {}, 0
  for split in SPLITS:
    count = len(listing.files[split])
    labels = np.array([label for _, label in listing.files[split]], np.int32)
    splits[split] = Split(np.stack(decoded[start:start + count]), labels, None)
    start += count
  return splits


def _read(path: str) -> tuple[np.ndarray | None, str | None]:
  try:
    return images_lib.read_image(path), None
  except UserError as e:
    return None, str(e)


def _write_cache(places: list[tuple[str, str]], splits: dict, listing: _Listing) -> None:
  """Writes the splits to the first place that can be written, whole or not at all
  (`files.atomic_file`), and removes that place's older caches."""
  arrays = {'class_names': np.array(listing.class_names)}
  for split in SPLITS:
    arrays[f'{split}_images'] = splits[split].images
    arrays[f'{split}_labels'] = splits[split].labels
  for folder, name in places:
    try:
      os.makedirs(folder, exist_ok=True)
      with files.atomic_file(os.path.join(folder, name), binary=True) as f:
        np.savez(f, **arrays)
    except OSError:  # Read-only or a full disk: the next place, or no cache.
      continue
    _remove_older(folder, name)
    log.info('Cached the decoded images in %s.', os.path.join(folder, name))
    return
  log.warning('Could not write a cache of the decoded images in %s; the next run decodes them '
              'again.', ' or '.join(folder for folder, _ in places))


def _remove_older(folder: str, name: str) -> None:
  """Removes from `folder` the caches of earlier versions of the same image folder, and
  temporary files more than a day old (left by a process killed while writing)."""
  prefix = name.rsplit('-', 1)[0] + '-' if '-' in name else ''
  for entry in os.listdir(folder):
    path = os.path.join(folder, entry)
    with contextlib.suppress(OSError):
      if entry != name and entry.startswith(prefix) and entry.endswith('.npz'):
        os.remove(path)
      elif entry.endswith('.part') and time.time() - os.stat(path).st_mtime > _STALE_S:
        os.remove(path)
