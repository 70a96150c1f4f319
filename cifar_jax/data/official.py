"""CIFAR-10/100 in the official "python version" archives: finding, verifying, unpickling,
parsing.

The archives hold Python 2 pickles of dicts: `data` (uint8 [N, 3072]: the red,
green and blue planes of each 32x32 image, row-major), the labels, and a meta
file with the class names.
"""
import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import os
import pickle
import tarfile
import types
import zlib
from typing import Any, NamedTuple

import numpy as np

from cifar_jax import files
from cifar_jax.data import download
from cifar_jax.data.dataset import IMAGE_SHAPE, Dataset, Split
from cifar_jax.errors import UserError

OFFICIAL_URL_BASE = 'https://www.cs.toronto.edu/~kriz/'

# The MD5s published on the download page, keyed by archive name. A local
# archive of one of these names is checked against them on first use.
ARCHIVE_MD5 = types.MappingProxyType({
    'cifar-10-python.tar.gz': 'c58f30108f718f92721af3b95e74349a',
    'cifar-100-python.tar.gz': 'eb9058c3a382ffc7106e4002c42a8d85',
})

_ROW_BYTES = 3 * 32 * 32
_CHUNK_BYTES = 1 << 20

# Unpickling calls whatever the file names, so a planted file could run any
# code. Genuine CIFAR files name only numpy's array reconstruction; Python 3
# re-pickles of them may use the newer module path or, from protocol 5 on,
# `_frombuffer`. All of these only build arrays.
_SAFE_GLOBALS = frozenset({
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.numeric', '_frombuffer'),
    ('numpy._core.numeric', '_frombuffer'),
    ('numpy', 'ndarray'),
    ('numpy', 'dtype'),
})
# Python 3 re-pickles below protocol 3 store each bytes object as a call of
# `_codecs.encode(text, 'latin1')`; it is admitted for that use alone.
_CODECS_ENCODE = ('_codecs', 'encode')


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Where one dataset's files live and which keys hold what."""
  name: str
  title: str
  archive: str
  folder: str
  train_files: tuple[str, ...]
  test_files: tuple[str, ...]
  meta_file: str
  label_key: str
  names_key: str
  num_classes: int
  coarse_label_key: str | None = None
  coarse_names_key: str | None = None
  num_coarse_classes: int = 0

  @property
  def files(self) -> tuple[str, ...]:
    return (*self.train_files, *self.test_files, self.meta_file)


_LAYOUTS = types.MappingProxyType({
    'cifar10': _Layout(
        name='cifar10', title='CIFAR-10', archive='cifar-10-python.tar.gz',
        folder='cifar-10-batches-py',
        train_files=tuple(f'data_batch_{i}' for i in range(1, 6)),
        test_files=('test_batch',), meta_file='batches.meta',
        label_key='labels', names_key='label_names', num_classes=10),
    'cifar100': _Layout(
        name='cifar100', title='CIFAR-100', archive='cifar-100-python.tar.gz',
        folder='cifar-100-python', train_files=('train',), test_files=('test',),
        meta_file='meta', label_key='fine_labels', names_key='fine_label_names',
        num_classes=100, coarse_label_key='coarse_labels',
        coarse_names_key='coarse_label_names', num_coarse_classes=20),
})


class _Member(NamedTuple):
  """The bytes of one file of a dataset copy."""
  label: str  # How error messages name the file.
  data: bytes
  remedy: str  # What to do when the file is damaged.


def load(name: str, data_dir: str, *, download_missing: bool, url_base: str) -> Dataset:
  """Loads dataset `name` from the official files in `data_dir`.

  An archive is read to its end, so that gzip's checksum catches damage
  anywhere in it; one under an official name is also checked against the
  published MD5, once: a hidden file beside it remembers that it passed.

  Args:
    name: 'cifar10' or 'cifar100'.
    data_dir: A directory holding the extracted folder or the .tar.gz archive,
      or the path of the archive itself.
    download_missing: Whether to download the archive into `data_dir` when
      neither is there.
    url_base: The URL of the directory the archive is downloaded from.

  Returns:
    The dataset.

  Raises:
    UserError: `data_dir` is neither a directory nor a .tar.gz file, or the
      data is missing, cannot be downloaded, is damaged or is malformed.
  """
  layout = _LAYOUTS[name]
  url = f"{url_base.rstrip('/')}/{layout.archive}"
  if os.path.exists(data_dir) and not os.path.isdir(data_dir) and not data_dir.endswith('.tar.gz'):
    raise UserError(
        f'data_dir {data_dir} is not a directory: --config.dataset.data_dir must be a '
        f'directory (or the path of a .tar.gz archive of {layout.title}).')
  path = _find(layout, data_dir)
  if path is None:
    path = _obtain(layout, data_dir, download_missing, url)
  remedy = _remedy(layout, path, url, given=path == data_dir)
  if os.path.isfile(path):
    members = _read_archive(layout, path, remedy)
  else:
    members = _read_folder(layout, path, remedy)
  return _parse(layout, members)


def _find(layout: _Layout, data_dir: str) -> str | None:
  """Returns the path of the copy of the dataset in `data_dir`, if any."""
  if os.path.isfile(data_dir):
    return data_dir
  # The extracted folder comes first: reading it needs no decompression.
  folder, archive = os.path.join(data_dir, layout.folder), os.path.join(data_dir, layout.archive)
  if os.path.isdir(folder):
    return folder
  return archive if os.path.exists(archive) else None


def _obtain(layout: _Layout, data_dir: str, download_missing: bool, url: str) -> str:
  """Downloads the archive from `url` into `data_dir` if allowed; returns its path."""
  if data_dir.endswith('.tar.gz'):
    raise UserError(
        f'{data_dir} does not exist. Download {url} to that path by hand, or pass '
        '--config.dataset.data_dir=DIR for the directory to download it into.')
  advice = _missing_advice(layout, data_dir, url)
  if not download_missing:
    raise UserError(f'{layout.title} was not found and downloading is off.\n{advice}')
  path = os.path.join(data_dir, layout.archive)
  download.fetch(url, path, ARCHIVE_MD5[layout.archive], hint=advice)
  return path


def _missing_advice(layout: _Layout, data_dir: str, url: str) -> str:
  return (
      f'Looked for {os.path.join(data_dir, layout.folder)}{os.sep} (the extracted archive) '
      f'and {os.path.join(data_dir, layout.archive)}.\n'
      f'To fix this, download {url} by hand and put it in {data_dir} (extracting it is '
      'optional), or pass --config.dataset.data_dir=PATH for a directory PATH that holds '
      'it, or use --config.dataset.source=tfds.')


def _remedy(layout: _Layout, path: str, url: str, given: bool) -> str:
  """What to do about a damaged copy at `path`.

  Deleting is advised only for the official folder or archive that `_find`
  looks for in the data directory, never for a file the user named itself.
  """
  if given:
    return f'Replace {path} with a fresh copy of {url}.'
  if os.path.isdir(path):
    return (f'Delete {path} so that the next run reads {layout.archive} or downloads a fresh '
            'copy of it, or extract a fresh copy there yourself.')
  return (f'Delete {path} so that the next run downloads a fresh copy, or put a fresh copy '
          f'of {url} there yourself.')


def _read_folder(layout: _Layout, folder: str, remedy: str) -> dict[str, _Member]:
  """Reads the dataset's files from the extracted folder."""
  members = {}
  for file_name in layout.files:
    path = os.path.join(folder, file_name)
    try:
      with open(path, 'rb') as f:
        members[file_name] = _Member(path, f.read(), remedy)
    except OSError as e:
      raise UserError(f'Cannot read {path}: {e}. {remedy}') from e
  return members


def _read_archive(layout: _Layout, archive: str, remedy: str) -> dict[str, _Member]:
  """Reads the dataset's files from the archive without extracting it."""
  wanted = {f'{layout.folder}/{file_name}': file_name for file_name in layout.files}
  members = {}
  try:
    _check_md5(archive, remedy)
    # Streaming reads the archive once; random access would decompress it
    # from the start again for every member. gzip checks its CRC only at the
    # end of the stream, so reading goes on to there after the last member.
    with gzip.open(archive) as stream, tarfile.open(fileobj=stream, mode='r|') as tar:
      for info in tar:
        file_name = wanted.get(info.name)
        if file_name is not None and info.isfile():
          data = tar.extractfile(info).read()
          members[file_name] = _Member(f'{archive}:{info.name}', data, remedy)
      while stream.read(_CHUNK_BYTES):
        pass
  # A damaged archive fails in the tar layer, the gzip layer or in zlib.
  except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    raise UserError(
        f'{archive} is damaged or not a {layout.title} archive: {e}. {remedy}') from e
  missing = sorted(name for name, file_name in wanted.items() if file_name not in members)
  if missing:
    raise UserError(
        f'{archive} lacks {", ".join(missing)}; it is not a complete copy of the '
        f'{layout.title} python version. {remedy}')
  return members


def _check_md5(archive: str, remedy: str) -> None:
  """Checks an archive of an official name against the published MD5.

  A file of the same size and modification time as one that passed is not
  hashed again: the seal beside it records them.
  """
  expected = ARCHIVE_MD5.get(os.path.basename(archive))
  if expected is None:
    return
  stat = os.stat(archive)
  seal = {'size': stat.st_size, 'mtime_ns': stat.st_mtime_ns, 'md5': expected}
  seal_path = _seal_path(archive)
  with contextlib.suppress(OSError, ValueError):  # Absent, unreadable or garbled: hash again.
    with open(seal_path) as f:
      if json.load(f) == seal:
        return
  with open(archive, 'rb') as f:
    digest = hashlib.file_digest(f, 'md5').hexdigest()
  if digest != expected:
    raise UserError(
        f'{archive} is damaged (MD5 mismatch): its MD5 is {digest}, the published one is '
        f'{expected}. {remedy}')
  _write_atomically(seal_path, json.dumps(seal))


def _seal_path(archive: str) -> str:
  """Where the record that `archive` passed its MD5 check goes: a hidden file beside it."""
  folder, name = os.path.split(archive)
  return os.path.join(folder, f'.{name}.md5-checked')


def _write_atomically(path: str, text: str) -> None:
  """Writes `text` to `path` whole; skips it where the directory is read-only."""
  with contextlib.suppress(OSError):  # Only costs hashing the archive again next time.
    with files.atomic_file(path) as f:
      f.write(text)


def _parse(layout: _Layout, members: dict[str, _Member]) -> Dataset:
  """Builds the dataset from the bytes of its files."""
  meta_member = members[layout.meta_file]
  meta = _unpickle_dict(layout, meta_member)
  coarse_names = None
  if layout.coarse_names_key is not None:
    coarse_names = _names(
        layout, meta_member, meta, layout.coarse_names_key, layout.num_coarse_classes)
  return Dataset(
      name=layout.name,
      train=_concat([_batch(layout, members[f]) for f in layout.train_files]),
      test=_concat([_batch(layout, members[f]) for f in layout.test_files]),
      class_names=_names(layout, meta_member, meta, layout.names_key, layout.num_classes),
      coarse_class_names=coarse_names)


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickles plain data and numpy arrays, and refuses anything else."""

  def __init__(self, file: io.BytesIO, label: str, remedy: str):
    # Python 2 `str` objects come back as bytes: decoding them as text would
    # corrupt the raw pixel buffers inside the arrays.
    super().__init__(file, encoding='bytes')
    self._label = label
    self._remedy = remedy

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) == _CODECS_ENCODE:
      return self._latin1_bytes
    if (module, name) not in _SAFE_GLOBALS:
      raise self._refusal(f'{module}.{name}')
    return super().find_class(module, name)

  def _latin1_bytes(self, text: str, encoding: str) -> bytes:
    """`_codecs.encode`, limited to the one use pickle makes of it."""
    if not isinstance(text, str) or encoding != 'latin1':
      raise self._refusal(f'_codecs.encode of a {type(text).__name__} to {encoding!r}')
    return text.encode('latin1')

  def _refusal(self, what: str) -> UserError:
    return UserError(
        f'Refusing to load {what} from {self._label}: CIFAR files hold only '
        'arrays, lists, strings and numbers, so this is not a genuine CIFAR file and '
        f'loading it could run arbitrary code. {self._remedy}')


def _unpickle_dict(layout: _Layout, member: _Member) -> dict[Any, Any]:
  """Safely unpickles `member`, which must hold a dict; keys become str."""
  try:
    obj = _RestrictedUnpickler(io.BytesIO(member.data), member.label, member.remedy).load()
  except UserError:
    raise
  # Damaged pickle data can fail in any number of ways, all meaning the same.
  except Exception as e:
    raise UserError(
        f'{member.label} is truncated or corrupt: unpickling it failed with '
        f'{type(e).__name__}: {e}. {member.remedy}') from e
  if not isinstance(obj, dict):
    raise _invalid(layout, member, f'it holds a {type(obj).__name__}, not a dict')
  return {_as_str(key): value for key, value in obj.items()}


def _as_str(value: Any) -> Any:
  """Decodes bytes (Python 2 `str`) to str; returns anything else unchanged."""
  return value.decode('utf-8', errors='replace') if isinstance(value, bytes) else value


def _invalid(layout: _Layout, member: _Member, problem: str) -> UserError:
  return UserError(
      f'{member.label} is not a valid {layout.title} file: {problem}. '
      f'{member.remedy}')


def _entry(layout: _Layout, member: _Member, content: dict[Any, Any], key: str) -> Any:
  if key not in content:
    raise _invalid(layout, member, f'it has no {key!r} entry')
  return content[key]


def _names(layout: _Layout, member: _Member, meta: dict[Any, Any], key: str,
           count: int) -> tuple[str, ...]:
  """Returns the `count` class names stored under `key`."""
  names = _entry(layout, member, meta, key)
  if (not isinstance(names, (list, tuple)) or len(names) != count
      or not all(isinstance(n, (str, bytes)) for n in names)):
    raise _invalid(layout, member, f'{key!r} should be a list of {count} strings')
  return tuple(_as_str(n) for n in names)


def _batch(layout: _Layout, member: _Member) -> Split:
  """Parses one file of examples."""
  content = _unpickle_dict(layout, member)
  data = _entry(layout, member, content, 'data')
  if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
          and data.shape[1] == _ROW_BYTES):
    got = f'{data.dtype} {data.shape}' if isinstance(data, np.ndarray) else type(data).__name__
    raise _invalid(layout, member, f"'data' should be uint8 [N, {_ROW_BYTES}], got {got}")
  labels = _labels(layout, member, content, layout.label_key, len(data), layout.num_classes)
  coarse = None
  if layout.coarse_label_key is not None:
    coarse = _labels(
        layout, member, content, layout.coarse_label_key, len(data), layout.num_coarse_classes)
  # Each row is three planes (red, green, blue) of 32 rows of 32 pixels.
  planes = data.reshape(-1, IMAGE_SHAPE[2], *IMAGE_SHAPE[:2])
  return Split(np.ascontiguousarray(planes.transpose(0, 2, 3, 1)), labels, coarse)


def _labels(layout: _Layout, member: _Member, content: dict[Any, Any], key: str, count: int,
            num_classes: int) -> np.ndarray:
  """Returns the `count` labels in [0, num_classes) stored under `key`, as int32."""
  raw = _entry(layout, member, content, key)
  problem = f'{key!r} should be {count} integers, one per image'
  try:
    labels = np.asarray(raw)
  except ValueError as e:  # A ragged nested list.
    raise _invalid(layout, member, problem) from e
  if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
    raise _invalid(layout, member, problem)
  if count and (labels.min() < 0 or labels.max() >= num_classes):
    raise _invalid(
        layout, member, f'{key!r} has values in [{labels.min()}, {labels.max()}], '
        f'outside [0, {num_classes})')
  return labels.astype(np.int32)


def _concat(parts: list[Split]) -> Split:
  """Joins the splits read from several files."""
  coarse = None
  if parts[0].coarse_labels is not None:
    coarse = np.concatenate([p.coarse_labels for p in parts])
  return Split(
      images=np.concatenate([p.images for p in parts]),
      labels=np.concatenate([p.labels for p in parts]),
      coarse_labels=coarse)
