"""Image files of any size or format Pillow reads, made into CIFAR-sized uint8 arrays.

One function decodes every image that does not come from a CIFAR copy: the images `predict`
classifies and the training and test images of the 'folder' source. So a photo goes through the
same pixels-to-array steps whether a model was trained on it or is asked about it.
"""
import os
import stat
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from cifar_jax.data.dataset import IMAGE_SHAPE
from cifar_jax.errors import UserError

IMAGE_SIZE = IMAGE_SHAPE[0]
# Bumped whenever `read_image` would give other pixels for the same file: caches of decoded
# images (`folder.py`) carry it, so they are rebuilt rather than mixed with new ones.
METHOD = 'centre square, Pillow LANCZOS to 32x32, RGB; v1'

# What a path is when it is not a regular file, for its error message.
_NOT_REGULAR = ((stat.S_ISDIR, 'a directory'), (stat.S_ISFIFO, 'a FIFO'),
                (stat.S_ISSOCK, 'a socket'), (stat.S_ISCHR, 'a character device'),
                (stat.S_ISBLK, 'a block device'))


def open_regular_file(path: str):
  """`path` opened for binary reading, if it is a regular file.

  Checked with `os.stat` first: opening a FIFO waits for a writer, forever, and opening a device
  may have effects. Opened non-blocking, so a file swapped for a FIFO since cannot hang either.

  Raises:
    UserError: if `path` is missing, cannot be opened or is not a regular file.
  """
  try:
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
      return os.fdopen(os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0)), 'rb')
  except FileNotFoundError:
    raise UserError(f'{path}: no such file') from None
  except OSError as e:
    raise UserError(f'{path}: cannot be read ({e.strerror or e})') from None
  kind = next((name for test, name in _NOT_REGULAR if test(mode)), 'not a file')
  raise UserError(f'{path}: not a regular file ({kind}); name image files or directories.')


def read_image(path: str) -> np.ndarray:
  """uint8 [32, 32, 3]: the centre square of the image, resized with antialiasing.

  The largest centred square is cut out, so nothing is stretched (CIFAR's images keep their
  objects' proportions too), and shrunk with Pillow's LANCZOS filter, which averages over the
  pixels each output pixel covers instead of picking some of them. An image already 32x32 is
  kept exactly as stored.

  Raises:
    UserError: if the file is missing, unreadable or not a regular file, is not an image Pillow
      can decode, or has more pixels than Pillow decodes (a possible decompression bomb).
  """
  with open_regular_file(path) as file:
    try:
      with warnings.catch_warnings():
        # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that (the error below):
        # the pixels decoded are bounded either way, and a large photo is still an image.
        warnings.simplefilter('ignore', Image.DecompressionBombWarning)
        with Image.open(file) as image:
          image = image.convert('RGB')
    except UnidentifiedImageError:
      raise UserError(f'{path}: not an image Pillow can read (no format it knows)') from None
    except Image.DecompressionBombError as e:
      raise UserError(f'{path}: refused as a possible decompression bomb ({e})') from None
    except Exception as e:  # noqa: BLE001 (malformed files raise many types from Pillow's decoders)
      raise UserError(f'{path}: not an image Pillow can read ({type(e).__name__}: {e})') from None
  side = min(image.size)
  left, top = (image.width - side) // 2, (image.height - side) // 2
  image = image.crop((left, top, left + side, top + side))
  return np.asarray(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS), np.uint8)
