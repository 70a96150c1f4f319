"""A `jax.profiler` trace of chosen train steps in WORKDIR/profile/ (`config.profile_steps`).

The trace holds the host's Python and the devices' XLA operations: what XProf and TensorBoard's
profile plugin read (`plugins/profile/<time>/<host>.xplane.pb`), and a `perfetto_trace.json.gz`
beside it for ui.perfetto.dev. Steps run several per compiled call on accelerators
(`config.steps_per_call`), so whole calls are traced: every call that takes any step of the
range, from its start to its end, waited for before the trace stops.
"""
import logging
import os

import jax

from cifar_jax.errors import UserError

log = logging.getLogger(__name__)

DIRECTORY = 'profile'


def check_config(profile_steps) -> None:
  """Raises a UserError unless `config.profile_steps` is () or (first, last), 1 <= first <= last."""
  if tuple(profile_steps) == ():
    return
  if not (len(profile_steps) == 2 and all(isinstance(s, int) for s in profile_steps)
          and 1 <= profile_steps[0] <= profile_steps[1]):
    raise UserError(f'config.profile_steps must be () (off) or (first, last), train steps '
                    f'counted from 1 with first <= last, got {profile_steps!r}.')


class StepProfiler:
  """Traces the train calls that take any of the steps `first` to `last` of `profile_steps`.

  Step k is the k-th train step of the run (after it, metrics.jsonl's `step` reads k). The loop
  calls `before(step, stop_step)` before each call that takes steps step + 1 to stop_step,
  `after(stop_step, state)` after it, and `close()` when training ends, however it ends.
  """

  def __init__(self, workdir: str, profile_steps):
    self._steps = tuple(profile_steps) or None
    self.directory = os.path.join(workdir, DIRECTORY)
    self._tracing = False

  def before(self, step: int, stop_step: int) -> None:
    if self._steps is None or self._tracing:
      return
    first, last = self._steps
    if step < last and stop_step >= first:
      log.info('Profiling train steps %d to %d (whole calls: from step %d) into %s.',
               first, last, step + 1, self.directory)
      jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
      self._tracing = True

  def after(self, stop_step: int, state) -> None:
    if self._tracing and stop_step >= self._steps[1]:
      jax.block_until_ready(state)  # The call's work belongs inside the trace.
      self._stop(stop_step)

  def close(self) -> None:
    """Ends a trace still running (the run stopped before `last`)."""
    if self._tracing:
      self._stop(None)

  def _stop(self, stop_step: int | None) -> None:
    jax.profiler.stop_trace()
    self._tracing = False
    log.info('Wrote the profile%s to %s (view it with `xprof --logdir=%s`).',
             f' up to step {stop_step}' if stop_step else '', self.directory, self.directory)
