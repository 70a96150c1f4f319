"""What a run writes for people: metrics.jsonl, TensorBoard events, the config."""
import json
import os

import jax
import ml_collections
import numpy as np
import tensorboardX


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')


def load_config(workdir: str) -> ml_collections.ConfigDict:
  with open(os.path.join(workdir, 'config.json')) as f:
    return ml_collections.ConfigDict(json.load(f))


def _jsonable(value):
  if isinstance(value, (np.ndarray, np.generic)):
    return value.tolist()
  return value


class MetricsLog:
  """Appends one JSON object per evaluation to `metrics.jsonl` and mirrors scalars to TensorBoard.

  TensorBoard files are written by tensorboardX, which needs no TensorFlow.
  """

  def __init__(self, workdir: str):
    self._path = os.path.join(workdir, 'metrics.jsonl')
    self._tensorboard = tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, record: dict) -> None:
    record = {k: _jsonable(v) for k, v in record.items()}
    with open(self._path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for name, value in record.items():
      if name != 'step' and isinstance(value, (int, float)):
        self._tensorboard.add_scalar(name, value, global_step=record['step'])
    self._tensorboard.flush()

  def close(self) -> None:
    self._tensorboard.close()


def read_metrics(workdir: str) -> list[dict]:
  """The records of `metrics.jsonl`, oldest first; [] when there are none."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


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
