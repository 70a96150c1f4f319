"""The files of a run's workdir that people and the results commands read.

`config.json` (the resolved config), `classes.json` (the class names), `metrics.jsonl` (one
record per evaluation) and `tensorboard/` (the same scalars). Checkpoints are
`cifar_jax.training.checkpoint`'s.
"""
import contextlib
import fcntl
import json
import logging
import os
import socket
import time

import ml_collections
import numpy as np

from cifar_jax import config as config_lib
from cifar_jax import files
from cifar_jax.errors import UserError

log = logging.getLogger(__name__)


LOCK = 'run.lock'


@contextlib.contextmanager
def locked(workdir: str, enabled: bool = True):
  """Holds an exclusive lock on `workdir` (its `run.lock`) while the block runs.

  A second run on a locked workdir raises a UserError at once, naming the holder. The lock is
  the operating system's (`flock`): it goes with the process that held it, however that ends,
  so a stale `run.lock` file never blocks. `enabled=False` (all processes of a job but the
  first) takes none: the job holds it once.
  """
  if not enabled:
    yield
    return
  path = os.path.join(workdir, LOCK)
  with open(path, 'a+') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or 'another process'
      raise UserError(f'{workdir} is in use by another training run ({holder}). Wait for it to '
                      'end, or train in another --workdir.') from None
    f.seek(0)
    f.truncate()
    f.write(f'pid {os.getpid()} on {socket.gethostname()}, since '
            f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n')
    f.flush()
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def write_atomically(path: str, text: str) -> None:
  """Writes `path` through a temporary file and a rename: an interrupted write leaves the
  old file whole."""
  with files.atomic_file(path) as f:
    f.write(text)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  write_atomically(os.path.join(workdir, 'config.json'),
                   config.to_json_best_effort(indent=2, sort_keys=True) + '\n')


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config.json; fields added to the code since it was written take their defaults."""
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  defaults = json.loads(config_lib.base_config().to_json_best_effort())
  defaults['model'] = {k: v for k, v in json.loads(config_lib.model_config('').to_json()).items()
                       if k in config_lib.MODEL_SETTINGS}
  return ml_collections.ConfigDict(_with_defaults(saved, defaults))


def _with_defaults(saved: dict, defaults: dict) -> dict:
  """`saved` with the keys it lacks taken from `defaults`, recursively."""
  merged = dict(saved)
  for key, default in defaults.items():
    if key not in merged:
      merged[key] = default
    elif isinstance(default, dict) and isinstance(merged[key], dict):
      merged[key] = _with_defaults(merged[key], default)
  return merged


def classes_of(dataset) -> dict:
  """A dataset's class names, and CIFAR-100's superclasses with the fine -> coarse map."""
  classes = {'class_names': list(dataset.class_names), 'coarse_class_names': None,
             'fine_to_coarse': None}
  if dataset.coarse_class_names is not None:
    fine_to_coarse = np.zeros(dataset.num_classes, np.int32)
    fine_to_coarse[dataset.train.labels] = dataset.train.coarse_labels
    classes.update(coarse_class_names=list(dataset.coarse_class_names),
                   fine_to_coarse=fine_to_coarse.tolist())
  return classes


def save_classes(classes: dict, workdir: str) -> None:
  """`classes_of(dataset)` beside the config, for commands that predict or plot without the
  dataset at hand."""
  write_atomically(os.path.join(workdir, 'classes.json'), json.dumps(classes, indent=1) + '\n')


def load_classes(workdir: str) -> dict:
  """What `save_classes` wrote: class_names, coarse_class_names, fine_to_coarse."""
  with open(os.path.join(workdir, 'classes.json')) as f:
    return json.load(f)


def _jsonable(value):
  if isinstance(value, (np.ndarray, np.generic)):
    return value.tolist()
  return value


def tensorboard_writer(workdir: str):
  """A tensorboardX writer on `workdir/tensorboard`. Imported here, when first needed: with
  PyTorch installed, importing tensorboardX imports PyTorch (about a second per command)."""
  import tensorboardX  # noqa: PLC0415
  return tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard'))


class MetricsLog:
  """Appends one JSON object per evaluation to `metrics.jsonl` and mirrors scalars to TensorBoard.

  Opening it for a run that resumes at `resume_step` first repairs the file: lines that are
  not whole JSON records (a write cut short, damage) and records after `resume_step` (the
  resumed run redoes those steps and writes them again) move to `metrics.discarded.jsonl`,
  with a warning, so every step appears once and nothing is merged into a torn line.
  TensorBoard files are written by tensorboardX, which needs no TensorFlow.
  """

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0):
    """`enabled=False` (all processes but the first of a multi-process job) writes nothing."""
    self._path = os.path.join(workdir, METRICS)
    self._tensorboard = None
    if enabled:
      _repair(workdir, resume_step)
      self._tensorboard = tensorboard_writer(workdir)

  def write(self, record: dict) -> None:
    if self._tensorboard is None:
      return
    record = {k: _jsonable(v) for k, v in record.items()}
    with open(self._path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for name, value in record.items():
      if name != 'step' and isinstance(value, (int, float)):
        self._tensorboard.add_scalar(name, value, global_step=record['step'])
    self._tensorboard.flush()

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()


METRICS = 'metrics.jsonl'
DISCARDED_METRICS = 'metrics.discarded.jsonl'


def _parse(line: str) -> dict | None:
  """The record on `line`, or None unless it is a whole JSON object with a step."""
  if not line.endswith('\n'):  # Cut short: still being written, or its writer was killed.
    return None
  try:
    record = json.loads(line)
  except ValueError:
    return None
  return record if isinstance(record, dict) and isinstance(record.get('step'), int) else None


def _repair(workdir: str, resume_step: int) -> None:
  """Moves the lines of `metrics.jsonl` that are not records, or are records after
  `resume_step`, to `metrics.discarded.jsonl` (see MetricsLog)."""
  path = os.path.join(workdir, METRICS)
  if not os.path.exists(path):
    return
  with open(path, encoding='utf-8', errors='replace') as f:
    lines = f.readlines()
  kept, dropped = [], []
  for line in lines:
    record = _parse(line)
    (kept if record is not None and record['step'] <= resume_step else dropped).append(line)
  if not dropped:
    return
  with open(os.path.join(workdir, DISCARDED_METRICS), 'a') as f:
    f.writelines(line if line.endswith('\n') else line + '\n' for line in dropped)
  write_atomically(path, ''.join(kept))
  log.warning('%s: moved %d line(s) to %s (not whole records, or after step %d where this '
              'run resumes).', path, len(dropped), DISCARDED_METRICS, resume_step)


def read_metrics(workdir: str) -> list[dict]:
  """The records of `metrics.jsonl`, oldest first, one per step (the last written wins);
  [] when there are none.

  A line still being written by a running job (not yet ending in a newline) is left out, and
  so is a damaged one, with a warning.
  """
  path = os.path.join(workdir, METRICS)
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8', errors='replace') as f:
    lines = f.readlines()
  by_step = {}
  for number, line in enumerate(lines, 1):
    record = _parse(line)
    if record is not None:
      by_step.pop(record['step'], None)  # Re-inserted: keeps the order of writing.
      by_step[record['step']] = record
    elif line.endswith('\n') and line.strip():
      log.warning('%s: line %d is not a JSON record; skipped.', path, number)
  return sorted(by_step.values(), key=lambda r: r['step'])
