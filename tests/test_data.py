"""Tests for cifar_jax.data: the official files, downloading, tfds and synthetic data."""
import builtins
import codecs
import functools
import hashlib
import http.server
import io
import os
import pickle
import socket
import struct
import tarfile
import tempfile
import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cifar_jax import data
from cifar_jax.data import download, official, tfds_source
from cifar_jax.errors import UserError

# Where each dataset's files are inside its archive, written out independently
# of the code under test.
_FOLDER = {'cifar10': 'cifar-10-batches-py', 'cifar100': 'cifar-100-python'}
_ARCHIVE = {'cifar10': 'cifar-10-python.tar.gz', 'cifar100': 'cifar-100-python.tar.gz'}
_TRAIN_FILES = {'cifar10': [f'data_batch_{i}' for i in range(1, 6)], 'cifar100': ['train']}
_TEST_FILE = {'cifar10': 'test_batch', 'cifar100': 'test'}
_META_FILE = {'cifar10': 'batches.meta', 'cifar100': 'meta'}
_NUM_CLASSES = {'cifar10': 10, 'cifar100': 100}
_TRAIN_PER_FILE = 20
# Fewer than in a training file: a partial copy must load as it is.
_TEST_SIZE = 7


# --- Writing small copies in the official format. ---


class _Python2Pickler(pickle._Pickler):
  """Pickles the way Python 2 wrote the official files.

  Byte strings become Python 2 `str` opcodes (Python 3 would pickle them through
  `_codecs.encode`) and numpy's array reconstructor gets its pre-2.0 module
  path, so the files use the same opcodes and globals as the real ones.
  """
  dispatch = dict(pickle._Pickler.dispatch)

  def _save_python2_str(self, obj: bytes) -> None:
    if len(obj) < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
    else:
      self.write(pickle.BINSTRING + struct.pack('<i', len(obj)) + obj)

  dispatch[bytes] = _save_python2_str

  def save_global(self, obj, name=None):
    if getattr(obj, '__name__', None) == '_reconstruct':
      self.write(pickle.GLOBAL + b'numpy.core.multiarray\n_reconstruct\n')
    else:
      super().save_global(obj, name)


def _with_byte_strings(obj):
  """Turns every str in nested dicts and lists into bytes, as in Python 2."""
  if isinstance(obj, dict):
    return {_with_byte_strings(k): _with_byte_strings(v) for k, v in obj.items()}
  if isinstance(obj, list):
    return [_with_byte_strings(v) for v in obj]
  return obj.encode() if isinstance(obj, str) else obj


def _encode(content: dict, style: str) -> bytes:
  """Pickles `content` as Python 2 did ('python2') or as Python 3 re-pickles it."""
  if style == 'python2':
    out = io.BytesIO()
    _Python2Pickler(out, protocol=2).dump(_with_byte_strings(content))
    return out.getvalue()
  return pickle.dumps(content, protocol={'protocol4': 4, 'protocol5': 5}[style])


def _rows(images: np.ndarray) -> np.ndarray:
  """NHWC images to the official [N, 3072] layout: red, green, blue planes."""
  return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _batch_content(name: str, split: data.Split) -> dict:
  content = {
      'data': _rows(split.images),
      'filenames': [f'image_{i}.png' for i in range(len(split.labels))],
      'batch_label': 'a testing batch',
  }
  if name == 'cifar10':
    content['labels'] = split.labels.tolist()
  else:
    content['fine_labels'] = split.labels.tolist()
    content['coarse_labels'] = split.coarse_labels.tolist()
  return content


def _meta_content(expected: data.Dataset) -> dict:
  if expected.name == 'cifar10':
    return {'label_names': list(expected.class_names), 'num_vis': 3072}
  return {'fine_label_names': list(expected.class_names),
          'coarse_label_names': list(expected.coarse_class_names)}


def _random_split(name: str, size: int, rng: np.random.Generator) -> data.Split:
  labels = rng.integers(0, _NUM_CLASSES[name], size).astype(np.int32)
  images = rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8)
  return data.Split(images, labels, labels // 5 if name == 'cifar100' else None)


def _small_copy(name: str, style: str = 'python2', seed: int = 0):
  """Returns ({file name: bytes}, expected Dataset) for a small official-format copy."""
  rng = np.random.default_rng(seed)
  parts = [_random_split(name, _TRAIN_PER_FILE, rng) for _ in _TRAIN_FILES[name]]
  test = _random_split(name, _TEST_SIZE, rng)
  coarse = name == 'cifar100'
  expected = data.Dataset(
      name=name,
      train=data.Split(
          np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
          np.concatenate([p.coarse_labels for p in parts]) if coarse else None),
      test=test,
      class_names=tuple(f'name {i}' for i in range(_NUM_CLASSES[name])),
      coarse_class_names=tuple(f'super {i}' for i in range(20)) if coarse else None)
  files = {f: _encode(_batch_content(name, p), style)
           for f, p in zip(_TRAIN_FILES[name], parts, strict=True)}
  files[_TEST_FILE[name]] = _encode(_batch_content(name, test), style)
  files[_META_FILE[name]] = _encode(_meta_content(expected), style)
  return files, expected


def _write_folder(data_dir, name: str, files: dict[str, bytes]):
  folder = data_dir / _FOLDER[name]
  folder.mkdir(parents=True)
  for file_name, content in files.items():
    (folder / file_name).write_bytes(content)
  return folder


def _archive_bytes(name: str, files: dict[str, bytes]) -> bytes:
  out = io.BytesIO()
  with tarfile.open(fileobj=out, mode='w:gz') as tar:
    for file_name, content in files.items():
      info = tarfile.TarInfo(f'{_FOLDER[name]}/{file_name}')
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))
  return out.getvalue()


@pytest.fixture(autouse=True)
def published_md5(monkeypatch):
  """The MD5s that local archives of the official names must have: a copy of the
  published ones, to which `_write_archive` adds the archives it writes, since no
  synthetic archive can have a published MD5."""
  md5s = dict(official.ARCHIVE_MD5)
  monkeypatch.setattr(official, 'ARCHIVE_MD5', md5s)
  return md5s


def _write_archive(data_dir, name: str, files: dict[str, bytes]):
  """Writes an archive under its official name and publishes its MD5."""
  path = data_dir / _ARCHIVE[name]
  path.write_bytes(_archive_bytes(name, files))
  official.ARCHIVE_MD5[path.name] = _md5(path.read_bytes())
  return path


def _assert_split_equal(got: data.Split, want: data.Split) -> None:
  np.testing.assert_array_equal(got.images, want.images)
  np.testing.assert_array_equal(got.labels, want.labels)
  if want.coarse_labels is None:
    assert got.coarse_labels is None
  else:
    np.testing.assert_array_equal(got.coarse_labels, want.coarse_labels)


def _assert_dataset_equal(got: data.Dataset, want: data.Dataset) -> None:
  assert got.name == want.name
  assert got.class_names == want.class_names
  assert got.coarse_class_names == want.coarse_class_names
  assert got.num_classes == _NUM_CLASSES[want.name]
  for split in (got.train, got.test):
    assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
    assert split.images.flags.c_contiguous
  _assert_split_equal(got.train, want.train)
  _assert_split_equal(got.test, want.test)


def _load_local(data_dir, name: str = 'cifar10', **kwargs) -> data.Dataset:
  return data.load(name, 'local', str(data_dir), **kwargs)


# --- Loading the official files. ---


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
@pytest.mark.parametrize('style', ['python2', 'protocol4', 'protocol5'])
def test_load_extracted_folder(tmp_path, name, style):
  files, expected = _small_copy(name, style)
  _write_folder(tmp_path, name, files)
  _assert_dataset_equal(_load_local(tmp_path, name, download=False), expected)


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_load_directory_holding_archive(tmp_path, name):
  files, expected = _small_copy(name)
  _write_archive(tmp_path, name, files)
  _assert_dataset_equal(_load_local(tmp_path, name, download=False), expected)


def test_load_archive_path(tmp_path):
  files, expected = _small_copy('cifar100', 'protocol5')
  archive = _write_archive(tmp_path, 'cifar100', files)
  _assert_dataset_equal(_load_local(archive, 'cifar100', download=False), expected)


def test_extracted_folder_is_preferred_over_archive(tmp_path):
  files, expected = _small_copy('cifar10', seed=1)
  _write_folder(tmp_path, 'cifar10', files)
  _write_archive(tmp_path, 'cifar10', _small_copy('cifar10', seed=2)[0])
  _assert_dataset_equal(_load_local(tmp_path, download=False), expected)


def test_pixel_layout(tmp_path):
  files, _ = _small_copy('cifar10')
  # Red = row, green = column, blue = 200, each plane stored row-major.
  rows, cols = np.indices((32, 32))
  row = np.concatenate([rows.ravel(), cols.ravel(), np.full(1024, 200)]).astype(np.uint8)
  content = {'data': row[None], 'labels': [3], 'filenames': ['x.png'], 'batch_label': 'b'}
  files['test_batch'] = _encode(content, 'python2')
  _write_folder(tmp_path, 'cifar10', files)
  image = _load_local(tmp_path, download=False).test.images[0]
  assert image.shape == (32, 32, 3)
  np.testing.assert_array_equal(image[..., 0], rows)
  np.testing.assert_array_equal(image[..., 1], cols)
  np.testing.assert_array_equal(image[..., 2], 200)
  assert image[5, 9].tolist() == [5, 9, 200]


def test_cifar100_coarse_labels_and_names(tmp_path):
  files, expected = _small_copy('cifar100')
  _write_folder(tmp_path, 'cifar100', files)
  dataset = _load_local(tmp_path, 'cifar100', download=False)
  assert dataset.num_classes == 100
  assert len(dataset.coarse_class_names) == 20
  assert dataset.coarse_class_names[3] == 'super 3'
  assert dataset.class_names[42] == 'name 42'
  assert dataset.train.coarse_labels.dtype == np.int32
  np.testing.assert_array_equal(dataset.train.coarse_labels, expected.train.labels // 5)


@pytest.mark.parametrize('protocol', range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_load_files_repickled_at_any_protocol(tmp_path, name, protocol):
  # How Python 3 re-writes a genuine file: read with encoding='bytes', so its
  # keys and strings stay bytes, and dumped again.
  files, expected = _small_copy(name)
  files = {file_name: pickle.dumps(pickle.loads(content, encoding='bytes'), protocol=protocol)
           for file_name, content in files.items()}
  # Below protocol 3 bytes go through `_codecs.encode`, the case this test is for.
  assert (b'_codecs' in files[_TEST_FILE[name]]) == (protocol < 3)
  _write_folder(tmp_path, name, files)
  _assert_dataset_equal(_load_local(tmp_path, name, download=False), expected)


# --- Damaged and missing data. ---


def _damaged_batch(content_change):
  """Returns a function replacing the test batch by one changed by `content_change`."""
  def damage(files):
    _, expected = _small_copy('cifar10')
    content = _batch_content('cifar10', expected.test)
    content_change(content)
    files['test_batch'] = _encode(content, 'python2')
  return damage


def _truncate(files):
  files['test_batch'] = files['test_batch'][:len(files['test_batch']) // 2]


@pytest.mark.parametrize('damage, problem', [
    (_truncate, 'truncated or corrupt'),
    (_damaged_batch(lambda c: c.update(data=c['data'][:, :3000])), "'data' should be uint8"),
    (_damaged_batch(lambda c: c.update(data=c['data'].astype(np.int64))), "'data' should be"),
    (_damaged_batch(lambda c: c.update(labels=c['labels'][:-1])), "'labels' should be 7"),
    (_damaged_batch(lambda c: c.update(labels=[10] * 7)), 'outside [0, 10)'),
    (_damaged_batch(lambda c: c.pop('labels')), "no 'labels' entry"),
])
def test_damaged_file_names_the_file(tmp_path, damage, problem):
  files, _ = _small_copy('cifar10')
  damage(files)
  folder = _write_folder(tmp_path, 'cifar10', files)
  with pytest.raises(UserError) as error:
    _load_local(tmp_path, download=False)
  message = str(error.value)
  assert str(folder / 'test_batch') in message
  assert problem in message


def test_missing_file_in_folder(tmp_path):
  files, _ = _small_copy('cifar100')
  del files['meta']
  folder = _write_folder(tmp_path, 'cifar100', files)
  with pytest.raises(UserError) as error:
    _load_local(tmp_path, 'cifar100', download=False)
  assert f'Cannot read {folder / "meta"}' in str(error.value)


@pytest.mark.parametrize('corrupt', [
    lambda archive: archive[:len(archive) // 2],
    lambda archive: archive[:100] + bytes(200) + archive[300:],
    lambda archive: b'not a gzip file at all',
])
def test_corrupt_archive_names_the_archive(tmp_path, corrupt):
  files, _ = _small_copy('cifar10')
  archive = tmp_path / _ARCHIVE['cifar10']
  archive.write_bytes(corrupt(_archive_bytes('cifar10', files)))
  with pytest.raises(UserError) as error:
    _load_local(tmp_path, download=False)
  assert str(archive) in str(error.value)
  assert 'fresh copy' in str(error.value)


def test_archive_of_the_other_dataset(tmp_path):
  archive = _write_archive(tmp_path, 'cifar100', _small_copy('cifar100')[0])
  with pytest.raises(UserError, match='lacks cifar-10-batches-py/batches.meta'):
    _load_local(archive, 'cifar10', download=False)


def _with_readme(name: str = 'cifar10'):
  """`_small_copy`, followed in an archive by 256 KiB that the loader does not read."""
  files, expected = _small_copy(name)
  files['readme.html'] = np.random.default_rng(0).bytes(256 << 10)
  return files, expected


def _flip_bit(content: bytes, position: int) -> bytes:
  return content[:position] + bytes([content[position] ^ 0x10]) + content[position + 1:]


# Where in a `_with_readme` archive of `size` bytes a bit flips.
_FLIP_AT = {
    'gzip magic number': lambda size: 1,
    'gzip header time': lambda size: 5,  # Outside what gzip's CRC covers.
    'a wanted member': lambda size: size // 4,
    'after the last wanted member': lambda size: size - (100 << 10),
    'gzip CRC': lambda size: size - 8,
    'gzip length': lambda size: size - 1,
}


@pytest.mark.parametrize('where', list(_FLIP_AT))
def test_bit_flip_in_official_archive_fails_md5(tmp_path, where):
  archive = _write_archive(tmp_path, 'cifar10', _with_readme()[0])
  intact = archive.read_bytes()
  archive.write_bytes(_flip_bit(intact, _FLIP_AT[where](len(intact))))
  with pytest.raises(UserError) as error:
    _load_local(tmp_path, download=False)
  message = str(error.value)
  assert message.startswith(f'{archive} is damaged (MD5 mismatch)')
  assert f'Delete {archive} so that the next run downloads a fresh copy' in message
  assert '\n' not in message


@pytest.mark.parametrize('where', [where for where in _FLIP_AT if where != 'gzip header time'])
def test_bit_flip_in_any_archive_fails_gzip_check(tmp_path, where):
  files, expected = _with_readme()
  intact = _archive_bytes('cifar10', files)
  archive = tmp_path / 'my-copy.tar.gz'  # No published MD5: gzip's CRC alone catches it.
  archive.write_bytes(intact)
  _assert_dataset_equal(_load_local(archive, download=False), expected)
  archive.write_bytes(_flip_bit(intact, _FLIP_AT[where](len(intact))))
  with pytest.raises(UserError) as error:
    _load_local(archive, download=False)
  message = str(error.value)
  assert message.startswith(f'{archive} is damaged')
  # The user named this file: it is theirs to replace, not ours to advise deleting.
  assert message.endswith(
      f'Replace {archive} with a fresh copy of https://www.cs.toronto.edu/~kriz/'
      'cifar-10-python.tar.gz.')
  assert 'Delete' not in message and '\n' not in message


@pytest.fixture
def md5_runs(monkeypatch):
  """The files hashed, in order."""
  runs = []
  file_digest = hashlib.file_digest
  def spy(f, digest):
    runs.append(f.name)
    return file_digest(f, digest)
  monkeypatch.setattr(hashlib, 'file_digest', spy)
  return runs


def test_md5_is_checked_once_per_version_of_archive(tmp_path, md5_runs):
  files, expected = _with_readme()
  archive = _write_archive(tmp_path, 'cifar10', files)
  seal = tmp_path / '.cifar-10-python.tar.gz.md5-checked'
  for _ in range(2):
    _assert_dataset_equal(_load_local(tmp_path, download=False), expected)
  assert md5_runs == [str(archive)] and seal.exists()

  # Damage that leaves size and time alone, as a failing disk does, still
  # fails gzip's check.
  intact, stat = archive.read_bytes(), archive.stat()
  archive.write_bytes(_flip_bit(intact, len(intact) - (100 << 10)))
  os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  with pytest.raises(UserError, match='is damaged'):
    _load_local(tmp_path, download=False)
  assert len(md5_runs) == 1

  # A new modification time, or a garbled record, means hashing again.
  archive.write_bytes(intact)
  os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  _assert_dataset_equal(_load_local(tmp_path, download=False), expected)
  seal.write_text('{')
  _assert_dataset_equal(_load_local(tmp_path, download=False), expected)
  assert len(md5_runs) == 3
  _load_local(tmp_path, download=False)
  assert len(md5_runs) == 3


def test_md5_record_is_optional(tmp_path, monkeypatch, md5_runs):
  # As in a read-only directory (the tests may run as root, who can write anywhere).
  def refuse(*args, **kwargs):
    raise PermissionError(13, 'Permission denied')
  monkeypatch.setattr(tempfile, 'mkstemp', refuse)
  files, expected = _small_copy('cifar10')
  _write_archive(tmp_path, 'cifar10', files)
  for _ in range(2):
    _assert_dataset_equal(_load_local(tmp_path, download=False), expected)
  assert len(md5_runs) == 2
  assert os.listdir(tmp_path) == ['cifar-10-python.tar.gz']


def test_missing_data_without_download_gives_advice(tmp_path):
  with pytest.raises(UserError) as error:
    _load_local(tmp_path, download=False)
  message = str(error.value)
  assert str(tmp_path / 'cifar-10-batches-py') in message
  assert str(tmp_path / 'cifar-10-python.tar.gz') in message
  assert 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz' in message
  assert '--config.dataset.data_dir=' in message
  assert '--config.dataset.source=tfds' in message


def test_missing_archive_path(tmp_path):
  with pytest.raises(UserError, match='does not exist'):
    _load_local(tmp_path / 'cifar-10-python.tar.gz')


@pytest.mark.parametrize('file_name', ['hostname', 'cifar-10-batches-py'])
def test_data_dir_that_is_a_file(tmp_path, file_name):
  path = tmp_path / file_name
  path.write_text('my-host\n')
  with pytest.raises(UserError) as error:
    _load_local(path, download=False)
  message = str(error.value)
  assert message == (f'data_dir {path} is not a directory: --config.dataset.data_dir must be '
                     'a directory (or the path of a .tar.gz archive of CIFAR-10).')


def test_damaged_file_the_user_named_is_not_to_be_deleted(tmp_path):
  path = tmp_path / 'my-backup.tar.gz'
  path.write_text('not an archive')
  with pytest.raises(UserError) as error:
    _load_local(path, download=False)
  message = str(error.value)
  assert message.endswith(
      f'Replace {path} with a fresh copy of https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz.')
  assert 'Delete' not in message


# --- A planted pickle must not run code. ---


class _RunsOnLoad:
  """Unpickling this calls `func(*args)`, as a malicious pickle would."""

  def __init__(self, func, *args):
    self.func = func
    self.args = args

  def __reduce__(self):
    return self.func, self.args


def _payloads(marker):
  return {
      'os.system': _RunsOnLoad(os.system, f'touch {marker}'),
      'exec': _RunsOnLoad(builtins.exec, f'open({str(marker)!r}, "w").close()'),
      'eval': _RunsOnLoad(builtins.eval, f'open({str(marker)!r}, "w").close()'),
  }


# Protocols 0-2 store bytes through `_codecs.encode`, which the loader admits for that alone.
@pytest.mark.parametrize('protocol', [0, 2, 5])
@pytest.mark.parametrize('payload', ['os.system', 'exec', 'eval'])
@pytest.mark.parametrize('where', ['folder', 'archive'])
def test_planted_pickle_is_refused(tmp_path, payload, where, protocol):
  # The payload really runs code under a plain unpickler, so the test below is not vacuous.
  proof = tmp_path / 'proof'
  pickle.loads(pickle.dumps({b'data': _payloads(proof)[payload]}, protocol=protocol))
  assert proof.exists()

  marker = tmp_path / 'marker'
  files, _ = _small_copy('cifar10')
  files['test_batch'] = pickle.dumps({b'data': _payloads(marker)[payload]}, protocol=protocol)
  data_dir = tmp_path / 'data'
  data_dir.mkdir()
  (_write_folder if where == 'folder' else _write_archive)(data_dir, 'cifar10', files)
  with pytest.raises(UserError) as error:
    _load_local(data_dir, download=False)
  assert 'Refusing to load' in str(error.value)
  assert 'test_batch' in str(error.value)
  assert not marker.exists()


def test_codecs_encode_is_admitted_only_to_store_bytes(tmp_path):
  files, _ = _small_copy('cifar10')
  files['test_batch'] = pickle.dumps(
      {b'data': _RunsOnLoad(codecs.encode, 'payload', 'rot13')}, protocol=2)
  _write_folder(tmp_path, 'cifar10', files)
  with pytest.raises(UserError, match=r"Refusing to load _codecs.encode of a str to 'rot13'"):
    _load_local(tmp_path, download=False)


# --- Downloading. ---


class _Handler(http.server.BaseHTTPRequestHandler):
  """Serves `server.routes`: path -> (body, Content-Length to announce)."""

  def do_GET(self):
    if self.path not in self.server.routes:
      self.send_error(404)
      return
    body, length = self.server.routes[self.path]
    self.send_response(200)
    self.send_header('Content-Length', str(length))
    self.end_headers()
    # With HTTP/1.0 the connection closes after this, cutting short any body
    # shorter than announced.
    self.wfile.write(body)

  def log_message(self, *args):
    del args  # Keep test output free of request logs.


@pytest.fixture
def server():
  """An HTTP server on a free loopback port, serving from memory."""
  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
  httpd.routes = {}
  # A short poll interval makes shutdown quick.
  thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
  thread.start()
  yield httpd
  httpd.shutdown()
  httpd.server_close()
  thread.join()


def _serve(httpd, path: str, body: bytes, length: int | None = None) -> str:
  httpd.routes[path] = (body, len(body) if length is None else length)
  return f'http://127.0.0.1:{httpd.server_port}{path}'


def _md5(content: bytes) -> str:
  return hashlib.md5(content).hexdigest()


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_fetch_verifies_and_puts_file_in_place(tmp_path, server):
  body = os.urandom(3 << 20)  # Several read chunks.
  url = _serve(server, '/file.bin', body)
  dest = tmp_path / 'sub' / 'file.bin'
  download.fetch(url, str(dest), _md5(body))
  assert dest.read_bytes() == body
  assert os.listdir(dest.parent) == ['file.bin']


@pytest.mark.parametrize('served, length, problem', [
    (b'corrupted payload', None, 'expected'),
    (b'the first half', 1000, 'closed after 14 of 1000 bytes'),
])
def test_fetch_failure_leaves_nothing_behind(tmp_path, server, served, length, problem):
  url = _serve(server, '/file.bin', served, length)
  with pytest.raises(UserError, match=problem) as error:
    download.fetch(url, str(tmp_path / 'file.bin'), _md5(b'the real payload'), hint='HINT')
  assert url in str(error.value)
  assert str(error.value).endswith('HINT')
  assert os.listdir(tmp_path) == []


def test_fetch_http_error(tmp_path, server):
  url = f'http://127.0.0.1:{server.server_port}/absent'
  with pytest.raises(UserError, match='404'):
    download.fetch(url, str(tmp_path / 'file.bin'), _md5(b'x'))
  assert os.listdir(tmp_path) == []


def test_fetch_refused_connection_fails_fast(tmp_path):
  start = time.monotonic()
  with pytest.raises(UserError, match='Could not download'):
    download.fetch(f'http://127.0.0.1:{_closed_port()}/f', str(tmp_path / 'f'), _md5(b''))
  assert time.monotonic() - start < 5
  assert os.listdir(tmp_path) == []


def test_fetch_silent_server_times_out(tmp_path):
  # Connections complete in the listen backlog, but no reply ever comes.
  with socket.create_server(('127.0.0.1', 0)) as silent:
    url = f'http://127.0.0.1:{silent.getsockname()[1]}/f'
    start = time.monotonic()
    with pytest.raises(UserError, match='timed out'):
      download.fetch(url, str(tmp_path / 'f'), _md5(b''), timeout=0.5)
    assert time.monotonic() - start < 5
  assert os.listdir(tmp_path) == []


def test_fetch_unwritable_destination(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_bytes(b'')
  with pytest.raises(UserError, match='Cannot write'):
    download.fetch('http://127.0.0.1:1/x', str(blocker / 'x'), _md5(b''))


def test_load_downloads_missing_archive(tmp_path, server, monkeypatch):
  files, expected = _small_copy('cifar10')
  archive = _archive_bytes('cifar10', files)
  _serve(server, '/mirror/cifar-10-python.tar.gz', archive)
  monkeypatch.setattr(official, 'ARCHIVE_MD5', {'cifar-10-python.tar.gz': _md5(archive)})
  data_dir = tmp_path / 'new'
  url_base = f'http://127.0.0.1:{server.server_port}/mirror/'
  _assert_dataset_equal(_load_local(data_dir, url_base=url_base), expected)
  # Beside the archive, the record that it passed its MD5 check.
  assert sorted(os.listdir(data_dir)) == [
      '.cifar-10-python.tar.gz.md5-checked', 'cifar-10-python.tar.gz']
  assert (data_dir / 'cifar-10-python.tar.gz').read_bytes() == archive
  # The next load reads the downloaded copy, even with the server gone.
  server.routes.clear()
  _assert_dataset_equal(_load_local(data_dir, url_base=url_base), expected)


def test_load_rejects_archive_with_wrong_md5(tmp_path, server):
  # Not the published archive, so it fails the published MD5.
  archive = _archive_bytes('cifar10', _small_copy('cifar10')[0])
  _serve(server, '/cifar-10-python.tar.gz', archive)
  with pytest.raises(UserError) as error:
    _load_local(tmp_path, url_base=f'http://127.0.0.1:{server.server_port}')
  assert 'c58f30108f718f92721af3b95e74349a' in str(error.value)
  assert _md5(archive) in str(error.value)
  assert os.listdir(tmp_path) == []


def test_load_offline_gives_advice(tmp_path):
  url_base = f'http://127.0.0.1:{_closed_port()}/'
  with pytest.raises(UserError) as error:
    _load_local(tmp_path, 'cifar100', url_base=url_base)
  message = str(error.value)
  assert f'Could not download {url_base}cifar-100-python.tar.gz' in message
  assert str(tmp_path / 'cifar-100-python') in message
  assert '--config.dataset.data_dir=' in message
  assert '--config.dataset.source=tfds' in message
  assert os.listdir(tmp_path) == []


# --- Synthetic data. ---


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_synthetic_shapes_and_names(name):
  dataset = data.load(name, 'synthetic', synthetic_train_size=300, synthetic_test_size=120)
  assert dataset.num_classes == _NUM_CLASSES[name]
  assert dataset.train.images.shape == (300, 32, 32, 3)
  assert dataset.test.images.shape == (120, 32, 32, 3)
  for split in (dataset.train, dataset.test):
    assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
    assert 0 <= split.labels.min() and split.labels.max() < dataset.num_classes
  if name == 'cifar10':
    assert dataset.class_names[0] == 'airplane' and dataset.class_names[9] == 'truck'
    assert dataset.train.coarse_labels is None and dataset.coarse_class_names is None
  else:
    assert dataset.class_names[7] == 'class_007' and len(dataset.coarse_class_names) == 20
    np.testing.assert_array_equal(dataset.train.coarse_labels, dataset.train.labels // 5)


def test_synthetic_is_deterministic():
  first = data.load('cifar10', 'synthetic', synthetic_train_size=64, synthetic_seed=3)
  again = data.load('cifar10', 'synthetic', synthetic_train_size=64, synthetic_seed=3)
  other = data.load('cifar10', 'synthetic', synthetic_train_size=64, synthetic_seed=4)
  _assert_split_equal(first.train, again.train)
  _assert_split_equal(first.test, again.test)
  assert not np.array_equal(first.train.images, other.train.images)


def test_synthetic_is_learnable():
  dataset = data.load('cifar100', 'synthetic')
  train, test = dataset.train, dataset.test
  # Classifying by the nearest class mean of the training images is nearly
  # perfect, so a network has a clear signal to learn.
  means = np.stack([train.images[train.labels == c].mean(0).ravel() for c in range(100)])
  images = test.images.reshape(len(test.images), -1).astype(np.float64)
  # Squared distances, less the |image|^2 term that is the same for every class.
  distances = (means ** 2).sum(1)[None] - 2 * images @ means.T
  assert (distances.argmin(1) == test.labels).mean() > 0.95


def test_synthetic_rejects_empty_split():
  with pytest.raises(UserError, match='synthetic_test_size'):
    data.load('cifar10', 'synthetic', synthetic_test_size=0)


# --- Dispatch and defaults. ---


def test_unknown_name_and_source():
  with pytest.raises(UserError, match='cifar10, cifar100'):
    data.load('mnist', 'local')
  with pytest.raises(UserError, match='local, tfds, synthetic'):
    data.load('cifar10', 'web')


def test_default_data_dir(monkeypatch, tmp_path):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert data.default_data_dir() == str(tmp_path / 'xdg' / 'cifar_jax')
  monkeypatch.delenv('XDG_CACHE_HOME')
  monkeypatch.setenv('HOME', str(tmp_path))
  assert data.default_data_dir() == str(tmp_path / '.cache' / 'cifar_jax')


def test_empty_data_dir_means_default(monkeypatch, tmp_path):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  files, expected = _small_copy('cifar10')
  (tmp_path / 'cifar_jax').mkdir()
  _write_archive(tmp_path / 'cifar_jax', 'cifar10', files)
  _assert_dataset_equal(data.load('cifar10', 'local', download=False), expected)


# --- tfds. ---


class _MockSourceWithBatchedReads(tfds.testing.PickableDataSourceMock):
  """tfds' mock array_record reader, with batched reads that work.

  `mock_data` assigns the mock's `__getitems__` as a plain attribute, which,
  unlike `__getitem__`, MagicMock does not bind to the instance, so every
  batched read fails with a TypeError (tfds 4.9.10). Binding it here fixes that.
  """

  def __setattr__(self, name, value):
    if name == '__getitems__':
      value = functools.partial(value, self)
    super().__setattr__(name, value)


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_tfds_under_mock_data(tmp_path, monkeypatch, name):
  monkeypatch.setattr(tfds_source, '_CHUNK', 4)  # Several batched reads per split.
  with tfds.testing.mock_data(
      num_examples=9, mock_array_record_data_source=_MockSourceWithBatchedReads()):
    dataset = data.load(name, 'tfds', str(tmp_path))
    again = data.load(name, 'tfds', str(tmp_path))
  assert dataset.num_classes == _NUM_CLASSES[name]
  for split in (dataset.train, dataset.test):
    assert split.images.shape == (9, 32, 32, 3) and split.images.dtype == np.uint8
    assert split.labels.dtype == np.int32
    assert 0 <= split.labels.min() and split.labels.max() < dataset.num_classes
    assert split.images.std() > 0  # Really filled in, not left as allocated.
  _assert_split_equal(dataset.train, again.train)
  if name == 'cifar100':
    assert len(dataset.coarse_class_names) == 20
    assert dataset.train.coarse_labels.max() < 20
  else:
    assert dataset.train.coarse_labels is None and dataset.coarse_class_names is None


def test_tfds_not_prepared_gives_recipe(tmp_path):
  with pytest.raises(UserError) as error:
    data.load('cifar100', 'tfds', str(tmp_path))
  message = str(error.value)
  assert 'pip install -e ".[tfds-build]"' in message
  assert f'tfds build cifar100 --file_format=array_record --data_dir={tmp_path}' in message
  assert f'--config.dataset.data_dir={tmp_path}' in message


class Cifar100(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes a tiny copy that tfds' own `cifar100` builder reads back.

  It has that builder's name, version and features; writing array_record files
  of images encoded by Pillow needs no TensorFlow, unlike `tfds build`.
  """
  VERSION = tfds.builder_cls('cifar100').VERSION

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'id': tfds.features.Text(),
        'image': tfds.features.Image(shape=(32, 32, 3)),
        'label': tfds.features.ClassLabel(names=[f'fine {i}' for i in range(100)]),
        'coarse_label': tfds.features.ClassLabel(names=[f'coarse {i}' for i in range(20)]),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(12), 'test': self._generate_examples(5)}

  def _generate_examples(self, size):
    image_lib = pytest.importorskip('PIL.Image')
    for i in range(size):
      label = 7 * i + size
      # Every pixel holds the label, so images still match labels after tfds
      # shuffles the records.
      image = image_lib.fromarray(np.full((32, 32, 3), label, np.uint8))
      yield i, {'id': str(i), 'image': image, 'label': label, 'coarse_label': label // 5}


def test_tfds_reads_prepared_array_record_copy(tmp_path, monkeypatch):
  pytest.importorskip('PIL.Image')
  Cifar100(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  monkeypatch.setattr(tfds_source, '_CHUNK', 5)  # Several batched reads per split.
  dataset = data.load('cifar100', 'tfds', str(tmp_path))
  assert dataset.class_names[42] == 'fine 42' and len(dataset.class_names) == 100
  assert dataset.coarse_class_names[19] == 'coarse 19'
  for split, size in ((dataset.train, 12), (dataset.test, 5)):
    assert sorted(split.labels.tolist()) == [7 * i + size for i in range(size)]
    np.testing.assert_array_equal(
        split.images, np.broadcast_to(split.labels[:, None, None, None], split.images.shape))
    np.testing.assert_array_equal(split.coarse_labels, split.labels // 5)
