"""Train metrics between evaluations, and a compilation counter for tests and benchmarks."""
import jax
import numpy as np


class TrainMeter:
  """Adds up the train metric sums of the calls between two evaluations.

  Throughput leaves out the run's first call, which includes compilation.
  """

  def __init__(self):
    self._totals = None
    self._seconds = 0.0
    self._seen_first_call = False

  def add(self, totals: dict, seconds: float) -> None:
    if self._seen_first_call:
      self._seconds += seconds
    self._seen_first_call = True
    if self._totals is None:
      self._totals = dict(totals)
    else:
      self._totals = {k: np.maximum(v, totals[k]) if k.endswith('_max') else v + totals[k]
                      for k, v in self._totals.items()}

  def summary(self, batch_size: int, with_hem: bool, with_skipped: bool = False) -> dict:
    """Train loss, accuracy and images/s since the last summary (with `with_skipped`, the
    steps float16's loss scaling skipped); then starts afresh.

    A skipped step adds no examples (`count`): the means are over the steps applied, and
    they are None when every step of the interval was skipped.
    """
    t = self._totals
    count = t['count']
    record = {
        'train_loss': float(t['loss_sum'] / count) if count else None,
        'train_accuracy': float(t['correct'] / count) if count else None,
        # None when the interval held only the compiling first call.
        'images_per_sec': float(count / self._seconds) if self._seconds else None,
    }
    if with_hem:
      record['hem_ess'] = float(t['hem_ess_sum'] / (count / batch_size)) if count else None
      record['hem_weight_max'] = float(t['hem_weight_max'])
    if with_skipped:
      record['skipped_steps'] = int(t['skipped_steps'])
    self._totals, self._seconds = None, 0.0
    return record


class CompilationCounter:
  """Counts XLA compilations while active: `with CompilationCounter() as c: ...; c.count`.

  Used to check that the train function compiles once per run, not per epoch,
  learning rate or plateau state.
  """
  _EVENT = '/jax/core/compile/backend_compile_duration'

  def __init__(self):
    self.count = 0

  def _on_event(self, event, duration, **kwargs):
    del duration, kwargs
    if event == self._EVENT:
      self.count += 1

  def __enter__(self):
    jax.monitoring.register_event_duration_secs_listener(self._on_event)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self._on_event)
