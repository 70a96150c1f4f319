"""files.atomic_file: a file is written whole or not at all."""
import os

import pytest

from cifar_jax import files


def test_a_block_that_ends_well_replaces_the_file(tmp_path):
  path = tmp_path / 'out.json'
  path.write_text('old')
  with files.atomic_file(str(path)) as f:
    f.write('new')
    assert path.read_text() == 'old'  # Not before the block ends.
  assert path.read_text() == 'new'
  assert os.listdir(tmp_path) == ['out.json']
  assert (path.stat().st_mode & 0o777) == 0o644


@pytest.mark.parametrize('error', [OSError('No space left on device'), KeyboardInterrupt()])
def test_a_block_cut_short_leaves_the_old_file_and_nothing_else(tmp_path, error):
  path = tmp_path / 'cache.npz'
  path.write_bytes(b'old')
  with pytest.raises(type(error)), files.atomic_file(str(path), binary=True) as f:
    f.write(b'half of the new')
    raise error
  assert path.read_bytes() == b'old'
  assert os.listdir(tmp_path) == ['cache.npz']


def test_a_directory_that_cannot_be_written_is_an_oserror(tmp_path):
  with pytest.raises(OSError), files.atomic_file(str(tmp_path / 'missing' / 'out.json')) as f:
    f.write('never')
