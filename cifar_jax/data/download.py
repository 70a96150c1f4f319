"""Downloads a file over HTTP(S), verifying its MD5 before it is put in place."""
import hashlib
import http.client
import os
import urllib.request

import tqdm

from cifar_jax import files
from cifar_jax.errors import UserError

# Long enough for a slow server, short enough that an offline machine fails
# fast instead of appearing to hang.
DEFAULT_TIMEOUT_S = 30.0
_CHUNK_BYTES = 1 << 20


def fetch(url: str, dest_path: str, md5: str, *, timeout: float = DEFAULT_TIMEOUT_S,
          hint: str = '') -> None:
  """Downloads `url` to `dest_path` with a progress bar, checking its MD5.

  The bytes go to a temporary file next to `dest_path`, which is renamed into
  place only once complete and verified, so an interrupted or corrupted
  download never appears under `dest_path`.

  Args:
    url: What to download.
    dest_path: Where the verified file goes; its directory is created if needed.
    md5: The expected MD5 hex digest.
    timeout: Seconds to wait for the connection and for each read.
    hint: Appended to every error message, e.g. how to get the file otherwise.

  Raises:
    UserError: The download failed, was cut short or has the wrong MD5; nothing
      is left behind.
  """
  dest_dir = os.path.dirname(os.path.abspath(dest_path))
  label = os.path.basename(dest_path)
  try:
    os.makedirs(dest_dir, exist_ok=True)
    with files.atomic_file(dest_path, binary=True) as out:  # Whole and verified, or nothing.
      digest = _download(url, out, timeout, label, hint)
      if digest != md5.lower():
        raise UserError(
            f'The download from {url} is corrupt: its MD5 is {digest}, expected {md5}. '
            f'Nothing was saved; try again.{_suffix(hint)}')
  except OSError as e:
    raise UserError(f'Cannot write the download of {url} to {dest_dir}: {e}.{_suffix(hint)}') from e


def _download(url: str, out, timeout: float, label: str, hint: str) -> str:
  """Streams `url` into the binary file `out`; returns the MD5 hex digest."""
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response:
      return _copy(response, out, label)
  # URLError, HTTPError, timeouts and refused or reset connections are all
  # OSErrors; a malformed response is an HTTPException.
  except (OSError, http.client.HTTPException) as e:
    raise UserError(f'Could not download {url}: {e}.{_suffix(hint)}') from e


def _copy(response, out, label: str) -> str:
  """Copies the body of `response` into `out`; returns its MD5 hex digest."""
  length = response.headers.get('Content-Length')
  expected = int(length) if length and length.isdigit() else None
  md5 = hashlib.md5()
  received = 0
  with tqdm.tqdm(total=expected, unit='B', unit_scale=True, unit_divisor=1024,
                 desc=label) as progress:
    while chunk := response.read(_CHUNK_BYTES):
      md5.update(chunk)
      out.write(chunk)
      received += len(chunk)
      progress.update(len(chunk))
  # urllib returns a short body without complaint when the server closes early.
  if expected is not None and received != expected:
    raise ConnectionError(f'the connection closed after {received} of {expected} bytes')
  return md5.hexdigest()


def _suffix(hint: str) -> str:
  return f'\n{hint}' if hint else ''
