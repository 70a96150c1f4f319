"""Files written whole or not at all."""
import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_file(path: str, binary: bool = False):
  """A file open for writing that becomes `path` only if the block ends without an exception.

  It is written as a temporary file beside `path` (`.NAME.XXXX.part`) and renamed over it at the
  end, so an error, a full disk or Ctrl-C leaves the old `path` (or none) and no partial file; a
  process killed outright leaves only the temporary file, which nothing reads.

  Raises:
    OSError: the temporary file cannot be made (a read-only or missing directory), or writing
      or renaming it failed.
  """
  folder = os.path.dirname(os.path.abspath(path))
  fd, temporary = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.',
                                   suffix='.part')
  try:
    with os.fdopen(fd, 'wb' if binary else 'w') as f:
      yield f
    os.chmod(temporary, 0o644)  # mkstemp's 0o600 would hide a shared folder's file from others.
    os.replace(temporary, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(temporary)
    raise
