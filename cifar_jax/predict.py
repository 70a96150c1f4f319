"""Predicts the class of your own images with a trained workdir's model.

    python -m cifar_jax.predict --workdir=DIR [--checkpoint=best] [--top_k=3] [--json]
        IMAGE_OR_DIR...

Any image Pillow reads (PNG, JPEG, GIF, BMP, WebP, ...) of any size: it is centre-cropped to a
square and resized to 32x32, as CIFAR's images are, by the function that decodes the 'folder'
source's images too (`cifar_jax.data.images`), then goes through the model as the test split
does (with `eval_flip_tta` if the run used it). A directory stands for the files in it (sorted,
not recursive; only its regular files). Prints one line per image, `FILE: class
probability, ...`, or with `--json` one JSON object per image. A file that fails gets one error
line on stderr naming it and the cause (with `--json`, an object with an `error`), and the others
are still predicted; the exit status is then 1. Failures: missing or unreadable, not a regular
file (a FIFO, socket or device is never opened, so it cannot hang the command), not an image, or
more pixels than Pillow decodes (`2 * PIL.Image.MAX_IMAGE_PIXELS`, a possible decompression bomb).
"""
import json
import os
import sys

import jax
import numpy as np
from absl import app, flags

from cifar_jax import cli
from cifar_jax.data.images import read_image
from cifar_jax.errors import UserError
from cifar_jax.results import restore


def define_flags():
  """Defines this command's flags: when it runs, so that its functions import anywhere (a
  notebook may use several commands' functions, whose flags share names)."""
  global _WORKDIR, _CHECKPOINT, _TOP_K, _JSON
  _WORKDIR = flags.DEFINE_string('workdir', None, 'A workdir written by cifar_jax.main.')
  _CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.")
  _TOP_K = flags.DEFINE_integer('top_k', 3, 'Classes to print per image, most probable first.')
  _JSON = flags.DEFINE_bool('json', False, 'One JSON object per image instead of text.')


def expand(paths: list[str]) -> tuple[list[str], dict[str, str]]:
  """The files named, with each directory replaced by the regular files in it (sorted), and an
  error message for each directory that cannot be listed (it stays in the list, in its place)."""
  files, errors = [], {}
  for path in paths:
    if os.path.isdir(path):
      try:
        names = sorted(os.listdir(path))
      except OSError as e:
        files.append(path)
        errors[path] = f'{path}: cannot list this directory ({e.strerror or e})'
        continue
      files += [os.path.join(path, name) for name in names
                if os.path.isfile(os.path.join(path, name))]
    else:
      files.append(path)
  return files, errors


def predict(workdir: str, paths: list[str], which: str = 'best', top_k: int = 3) -> list[dict]:
  """One result per file: {'file', 'predictions': [{'class', 'probability'}...]} or {'file',
  'error'}, in the order given."""
  files, errors = expand(paths)
  if not files:
    raise UserError('no image files given: name image files or directories holding them.')
  images = {}
  for path in files:
    if path in errors:
      continue
    try:
      images[path] = read_image(path)
    except UserError as e:
      errors[path] = str(e)
  trained = restore.from_workdir(workdir, which)
  names = trained.classes['class_names']
  probabilities = (np.asarray(jax.nn.softmax(trained.logits(np.stack(list(images.values())))))
                   if images else [])
  predicted = {}
  for path, probs in zip(images, probabilities, strict=True):
    best = np.argsort(-probs)[:top_k]
    predicted[path] = [{'class': names[i], 'probability': float(probs[i])} for i in best]
  return [{'file': path, 'error': errors[path]} if path in errors
          else {'file': path, 'predictions': predicted[path]} for path in files]


def main(argv):
  if len(argv) < 2:
    raise app.UsageError('name one or more images or directories after the flags.')
  results = cli.run_reporting_user_errors(predict, _WORKDIR.value, argv[1:], _CHECKPOINT.value,
                                          _TOP_K.value)
  for result in results:
    if _JSON.value:
      print(json.dumps(result))
    elif 'error' in result:
      print(f'error: {result["error"]}', file=sys.stderr)
    else:
      print(f'{result["file"]}: ' + ', '.join(f'{p["class"]} {p["probability"]:.3f}'
                                              for p in result['predictions']))
  if any('error' in result for result in results):
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  flags.mark_flag_as_required('workdir')
  app.run(main, flags_parser=cli.flags_parser())
