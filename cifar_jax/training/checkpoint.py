"""Checkpoints of the whole train state with orbax: the latest few and the best.

Saves are atomic (orbax writes to a temporary directory and renames it), so an
interrupted save never leaves a checkpoint that looks complete. Restoring takes
the shardings from the state it restores into, so a checkpoint written on N
devices restores on M.

Integrity: once a save is on disk, the SHA-256 of each of its files goes into its
`checksums.json`, and restoring checks them first. A damaged checkpoint (a file changed,
cut short or missing, or a checkpoint without checksums that cannot be read or holds
non-finite numbers) is named in one line; resuming moves it to `WORKDIR/checkpoints_damaged/`
(nothing is deleted) and falls back to the newest intact one.
"""
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from cifar_jax.errors import UserError

# Checkpoint metric ranked to pick the best checkpoint; higher is better.
SCORE = 'score'
# Each checkpoint's file -> SHA-256, written once the checkpoint is complete.
CHECKSUMS = 'checksums.json'
DAMAGED_DIR = 'checkpoints_damaged'

log = logging.getLogger(__name__)


class Checkpoints:
  """The checkpoints in `WORKDIR/checkpoints`: the latest `keep_latest` and the best by score."""

  def __init__(self, workdir: str, keep_latest: int = 2, read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self._damaged_directory = os.path.join(os.path.abspath(workdir), DAMAGED_DIR)
    self._unsealed = []  # Steps saved by this process whose checksums are not written yet.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy([
            policies.LatestN(n=keep_latest),
            policies.BestN(get_metric_fn=lambda m: m[SCORE], reverse=False, n=1),
        ]),
        # Also makes orbax store each checkpoint's metrics and rank by them.
        best_fn=lambda m: m[SCORE], best_mode='max',
        read_only=read_only, create=not read_only,
        # Read-only, nothing is ever saved (orbax warns unless this says so).
        save_interval_steps=0 if read_only else 1)
    logging.getLogger('absl').addFilter(_not_from_orbax)  # Until close().
    sys.excepthook, sys.unraisablehook = _without_closed_loop_noise, _unraisable_without_noise
    if not read_only:
      # Before orbax opens the directory: it reads every checkpoint's metrics as it does.
      self._set_aside_failing_checksums()
    with _without_read_only_notice():
      try:
        self._manager = ocp.CheckpointManager(
            self.directory, item_handlers=ocp.StandardCheckpointHandler(), options=options)
      except (OSError, ValueError) as e:  # Unreadable metadata: the JSON or its bytes.
        raise UserError(
            f'cannot open the checkpoints in {self.directory} ({_first_line(e)}): one of '
            f'them is damaged. Move the damaged step directory to {self._damaged_directory} '
            'and run again.') from None

  def _set_aside_failing_checksums(self) -> None:
    """Moves the checkpoints that fail their checksums aside; raises a UserError, changing
    nothing, when no checkpoint passes."""
    if not os.path.isdir(self.directory):
      return
    steps = sorted((int(n) for n in os.listdir(self.directory) if n.isdigit()), reverse=True)
    damaged = []
    for step in steps:
      problem = verify_checksums(self.step_directory(step))
      if problem:
        damaged.append(Damaged(step, problem))
        log.warning('%s', damaged[-1])
    if damaged and len(damaged) == len(steps):
      raise self._none_intact(damaged)
    self._move_aside([e.step for e in damaged])

  def save(self, state, score: float) -> None:
    """Starts saving `state` under its step; writing finishes in the background."""
    step = int(state.step)
    self._seal()  # The previous save is on disk by now (orbax waits for it in any case).
    self._manager.save(step, args=ocp.args.StandardSave(state),
                       metrics={SCORE: float(score)})
    self._unsealed.append(step)

  def _seal(self) -> None:
    """Waits for the saves in flight, then writes the checksums of each (process 0 alone:
    the files of all processes are in the shared directory by then)."""
    steps, self._unsealed = self._unsealed, []
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 (a full disk, lost permissions: whatever the OS says)
      latest = [s for s in self._manager.all_steps() if s not in steps]
      kept = (f'the last complete checkpoint (step {max(latest)}) is intact' if latest
              else 'no checkpoint was complete')
      raise UserError(f'saving checkpoint {", ".join(map(str, steps))} in {self.directory} '
                      f'failed: {_os_cause(e)}. Nothing was saved; {kept}. Free space (or '
                      'fix permissions) and run the same command to resume.') from None
    if jax.process_index() == 0:
      for step in steps:
        if step in self._manager.all_steps():  # Not already removed by the retention policy.
          write_checksums(self.step_directory(step))

  def step_directory(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The saved step with the highest score (None when nothing is saved)."""
    return self._manager.best_step()

  def restore(self, target, step: int):
    """The checkpoint at `step`, laid out like `target` (arrays or ShapeDtypeStructs).

    Raises:
      Damaged: when the checkpoint fails its checksums or cannot be read.
      UserError: when it is intact but holds another model or optimiser than `target`'s.
    """
    self._verify(step)
    tree = self._read_metadata(step)
    if _shapes(tree) != _shapes(target):
      raise UserError(
          f'checkpoint {step} in {self.directory} does not match the model and optimiser '
          'the config describes. Was it written with another config? Resume with that '
          'config, or train this one in a new --workdir.')
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    newer = _fields_newer_than(tree, target)
    if newer:  # Restored as the saved fields alone, the newer ones keep `target`'s.
      abstract = {name: value for name, value in vars(abstract).items() if name not in newer}
    try:
      restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # noqa: BLE001 (tensorstore raises many kinds for bad files)
      raise Damaged(step, 'unreadable', e) from None
    return target.replace(**restored) if newer else restored

  def restore_latest_intact(self, target):
    """The newest checkpoint that passes its checksums and holds finite numbers, laid out
    like `target`, with its step; `(target, None)` when there are no checkpoints.

    The damaged ones newer than it are moved to `WORKDIR/checkpoints_damaged/`, so training
    on from the intact one saves over nothing and the retention policy keeps it.

    Raises:
      UserError: when there are checkpoints but none is intact, naming what is wrong with each.
    """
    damaged = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state = self.restore(target, step)
      except Damaged as e:
        log.warning('%s', e)
        damaged.append(e)
        continue
      if not all_finite(state):
        if self._has_checksums(step):  # Saved like that: training diverged before it.
          raise UserError(
              f'checkpoint {step} in {self.directory} holds non-finite parameters or optimiser '
              'state, as saved. Train again in a new --workdir, with a lower '
              'config.optimizer.learning_rate or a warm-up.')
        damaged.append(Damaged(step, 'holds non-finite numbers and has no checksums'))
        log.warning('%s', damaged[-1])
        continue
      if damaged:
        self._move_aside([e.step for e in damaged])
        self._manager.reload()
      return state, step
    if damaged:
      raise self._none_intact(damaged)
    return target, None

  def _none_intact(self, damaged: list['Damaged']) -> UserError:
    return UserError(
        f'no intact checkpoint in {self.directory}: '
        + '; '.join(f'step {e.step}: {e.problem}' for e in damaged)
        + '. Nothing was changed. To train this run over from the start, move '
        f'{self.directory} away (or use a new --workdir).')

  def verified_step(self, step: int) -> None:
    """Raises a UserError naming the problem unless checkpoint `step` passes its checksums."""
    try:
      self._verify(step)
    except Damaged as e:
      raise UserError(f'{e}. Choose another with --checkpoint=STEP (saved: '
                      f'{self.all_steps()}).') from None

  def restore_as_saved(self, step: int, sharding: jax.sharding.Sharding) -> dict:
    """The checkpoint at `step` as saved (a dict of the state's fields), every array placed
    with `sharding`: no model or optimiser is needed to restore it."""
    self.verified_step(step)
    tree = self._read_metadata(step)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                            tree)
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # noqa: BLE001 (tensorstore raises many kinds for bad files)
      raise UserError(f'{Damaged(step, "unreadable", e)}. Choose another '
                      f'with --checkpoint=STEP (saved: {self.all_steps()}).') from None

  def _has_checksums(self, step: int) -> bool:
    return os.path.exists(os.path.join(self.step_directory(step), CHECKSUMS))

  def _verify(self, step: int) -> None:
    """Raises Damaged when a file of checkpoint `step` differs from its checksum or is gone.
    A checkpoint without checksums (its save was cut short before they were written, or it
    is older than them) passes, and is checked by reading it."""
    problem = verify_checksums(self.step_directory(step))
    if problem:
      raise Damaged(step, problem)

  def _read_metadata(self, step: int):
    try:
      return self._manager.item_metadata(step).tree
    except Exception as e:  # noqa: BLE001
      raise Damaged(step, 'its metadata is unreadable', e) from None

  def _move_aside(self, steps: list[int]) -> None:
    """Moves checkpoints `steps` to the damaged directory (process 0; the others wait)."""
    if not steps:
      return
    if jax.process_index() == 0:
      os.makedirs(self._damaged_directory, exist_ok=True)
      for step in steps:
        destination = os.path.join(self._damaged_directory, str(step))
        if os.path.exists(destination):  # Damaged twice at the same step: keep both.
          destination += f'.{len(os.listdir(self._damaged_directory))}'
        os.rename(self.step_directory(step), destination)
        log.warning('Moved damaged checkpoint %d to %s.', step, destination)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # noqa: PLC0415
      multihost_utils.sync_global_devices('cifar_jax: damaged checkpoints moved')

  def wait(self) -> None:
    """Blocks until background writes are on disk, with their checksums."""
    self._seal()

  def close(self) -> None:
    """Waits for the saves in flight (with their checksums), then closes."""
    try:
      self._seal()
    finally:
      self._manager.close()
      logging.getLogger('absl').removeFilter(_not_from_orbax)


class Damaged(Exception):  # noqa: N818 (a finding, handled by falling back)
  """A checkpoint that fails its checksums or cannot be read."""

  def __init__(self, step: int, problem: str, cause: Exception | None = None):
    super().__init__(step, problem)
    self.step, self.problem = step, problem
    self.detail = f' ({_first_line(cause)})' if cause else ''

  def __str__(self):
    return f'checkpoint {self.step} is damaged: {self.problem}{self.detail}'


def _file_digest(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  return digest.hexdigest()


def _files(directory: str) -> list[str]:
  """The regular files under `directory`, as sorted relative paths."""
  found = []
  for root, _, names in os.walk(directory):
    found += [os.path.relpath(os.path.join(root, n), directory) for n in names]
  return sorted(f for f in found if f != CHECKSUMS)


def write_checksums(directory: str) -> None:
  """Writes `directory/checksums.json`: each file's SHA-256 (atomically: a temporary file,
  then a rename)."""
  sums = {name: _file_digest(os.path.join(directory, name)) for name in _files(directory)}
  temporary = os.path.join(directory, CHECKSUMS + '.tmp')
  with open(temporary, 'w') as f:
    json.dump(sums, f, indent=0)
  os.replace(temporary, os.path.join(directory, CHECKSUMS))


def verify_checksums(directory: str) -> str | None:
  """What is wrong with the files under `directory` by its checksums; None if nothing is (or
  it has no checksums)."""
  path = os.path.join(directory, CHECKSUMS)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      sums = json.load(f)
  except (OSError, ValueError) as e:
    return f'its {CHECKSUMS} is unreadable ({_first_line(e)})'
  for name, expected in sums.items():
    file = os.path.join(directory, name)
    if not os.path.isfile(file):
      return f'{name} is missing'
    if _file_digest(file) != expected:
      return f'{name} differs from its checksum'
  return None


def all_finite(state) -> bool:
  """Whether every number the state trains (parameters, BatchNorm statistics, optimiser
  state, averages) is finite. The plateau and early-stopping states start at infinity on
  purpose and are not checked."""
  trained = [getattr(state, name) for name in ('params', 'batch_stats', 'opt_state',
                                                'ema_params', 'lookahead')]
  return bool(_all_finite(trained))


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _fields_newer_than(saved_tree, target) -> list[str]:
  """The fields of the dataclass `target` (a train state) that checkpoint `saved_tree` lacks
  because the state gained them after it was written; only fields without arrays in `target`
  (e.g. `loss_scale` outside float16, {}), since a saved tree that lacks arrays the target has
  does not match it."""
  if not (dataclasses.is_dataclass(target) and isinstance(saved_tree, dict)):
    return []
  return [f.name for f in dataclasses.fields(target)
          if f.name not in saved_tree and not jax.tree.leaves(getattr(target, f.name))]


def _shapes(tree) -> dict:
  """{path: (shape, dtype)} of a tree's arrays, with paths spelt alike whether a level is a
  dataclass, named tuple or dict (orbax's metadata has dicts where the state has others)."""

  def name(key):
    for attribute in ('key', 'name', 'idx'):
      if hasattr(key, attribute):
        return str(getattr(key, attribute))
    return str(key)

  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(map(name, path)): (tuple(leaf.shape), np.dtype(leaf.dtype))
          for path, leaf in leaves}


def _os_cause(error: Exception) -> str:
  """The operating system's words in a (tensorstore) write error, e.g. 'No space left on
  device', else its first line."""
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  line = (str(error).strip().splitlines() or [''])[0]
  if '": ' in line:  # ... Failed writing: "PATH": Failed to write N bytes to file F: CAUSE [..]
    return line.rsplit(': ', 1)[-1].split(' [os_error_code')[0]
  return _first_line(error)


def _first_line(error: Exception) -> str:
  """The gist of a (tensorstore) error: its first line, without the store's specification."""
  text = str(error).strip().split(' See full TensorStore details')[0]
  text = text.splitlines()[0] if text else type(error).__name__
  return text if len(text) <= 200 else text[:200] + '...'



def _without_closed_loop_noise(kind, value, traceback, _print=sys.excepthook):
  """Drops the 'Event loop is closed' errors that tensorstore's pending writes print (through
  this hook or the unraisable one), one per array, when a failed save has closed orbax's event
  loop; prints any other as usual."""
  if not _is_closed_loop_noise(kind, value):
    _print(kind, value, traceback)


def _unraisable_without_noise(unraisable, _print=sys.unraisablehook):
  if not _is_closed_loop_noise(unraisable.exc_type, unraisable.exc_value):
    _print(unraisable)


def _is_closed_loop_noise(kind, value) -> bool:
  return kind is RuntimeError and str(value) == 'Event loop is closed'


def _not_from_orbax(record: logging.LogRecord) -> bool:
  """Drops the warnings and errors, tracebacks included, that orbax logs (also from its
  background threads) about files it cannot read or write: `Checkpoints` reports them in one
  line naming the checkpoint and the cause."""
  return f'{os.sep}orbax{os.sep}' not in record.pathname or record.levelno < logging.WARNING


@contextlib.contextmanager
def _without_read_only_notice():
  """Drops orbax's warning that a directory opened read-only is read-only: it is on purpose."""

  def keep(record):
    return not record.getMessage().startswith('Given directory is read only')

  logger = logging.getLogger('absl')
  logger.addFilter(keep)
  try:
    yield
  finally:
    logger.removeFilter(keep)
