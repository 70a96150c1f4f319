"""Checkpoints of the whole train state with orbax: the latest few and the best.

Saves are atomic (orbax writes to a temporary directory and renames it), so an
interrupted save never leaves a checkpoint that looks complete. Restoring takes
the shardings from the state it restores into, so a checkpoint written on N
devices restores on M.
"""
import contextlib
import logging
import os

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from cifar_jax.errors import UserError

# Checkpoint metric ranked to pick the best checkpoint; higher is better.
SCORE = 'score'


class Checkpoints:
  """The checkpoints in `WORKDIR/checkpoints`: the latest `keep_latest` and the best by score."""

  def __init__(self, workdir: str, keep_latest: int = 2, read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
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
    with _without_read_only_notice():
      self._manager = ocp.CheckpointManager(
          self.directory, item_handlers=ocp.StandardCheckpointHandler(), options=options)

  def save(self, state, score: float) -> None:
    """Starts saving `state` under its step; writing finishes in the background."""
    step = int(state.step)
    self._manager.save(step, args=ocp.args.StandardSave(state), metrics={SCORE: float(score)})

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The saved step with the highest score (None when nothing is saved)."""
    return self._manager.best_step()

  def restore(self, target, step: int):
    """The checkpoint at `step`, laid out like `target` (arrays or ShapeDtypeStructs)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except (ValueError, KeyError) as e:
      raise UserError(
          f'checkpoint {step} in {self.directory} does not match the model and optimiser '
          f'the config describes ({e}). Was it written with another config?') from e

  def restore_as_saved(self, step: int, sharding: jax.sharding.Sharding) -> dict:
    """The checkpoint at `step` as saved (a dict of the state's fields), every array placed
    with `sharding`: no model or optimiser is needed to restore it."""
    tree = self._manager.item_metadata(step).tree
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                            tree)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def wait(self) -> None:
    """Blocks until background writes are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


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
