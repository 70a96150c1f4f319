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


def save_classes(dataset, workdir: str) -> None:
  """The class names (and CIFAR-100's superclasses) beside the config, for commands that
  predict or plot without the dataset at hand."""
  classes = {'class_names': list(dataset.class_names), 'coarse_class_names': None,
             'fine_to_coarse': None}
  if dataset.coarse_class_names is not None:
    fine_to_coarse = np.zeros(dataset.num_classes, np.int32)
    fine_to_coarse[dataset.train.labels] = dataset.train.coarse_labels
    classes.update(coarse_class_names=list(dataset.coarse_class_names),
                   fine_to_coarse=fine_to_coarse.tolist())
  with open(os.path.join(workdir, 'classes.json'), 'w') as f:
    json.dump(classes, f, indent=1)
    f.write('\n')


def load_classes(workdir: str) -> dict:
  """What `save_classes` wrote: class_names, coarse_class_names, fine_to_coarse."""
  with open(os.path.join(workdir, 'classes.json')) as f:
    return json.load(f)


def _jsonable(value):
  if isinstance(value, (np.ndarray, np.generic)):
    return value.tolist()
  return value


class MetricsLog:
  """Appends one JSON object per evaluation to `metrics.jsonl` and mirrors scalars to TensorBoard.

  TensorBoard files are written by tensorboardX, which needs no TensorFlow.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    """`enabled=False` (all processes but the first of a multi-process job) writes nothing."""
    self._path = os.path.join(workdir, 'metrics.jsonl')
    self._tensorboard = (tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard'))
                         if enabled else None)

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


def summarize_eval(sums) -> dict:
  """Evaluation sums -> loss, accuracy, top-5 accuracy, per-class accuracy, count."""
  sums = jax.device_get(sums)
  count = int(sums['count'])
  return {
      'loss': float(sums['loss_sum']) / count,
      'accuracy': float(sums['correct']) / count,
      'top5_accuracy': float(sums['correct_top5']) / count,
      'num_examples': count,
      'per_class_accuracy': (sums['class_correct'] / np.maximum(sums['class_count'], 1)).tolist(),
  }


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

  def summary(self, batch_size: int, with_hem: bool) -> dict:
    """Train loss, accuracy and images/s since the last summary; then starts afresh."""
    t = self._totals
    record = {
        'train_loss': float(t['loss_sum'] / t['count']),
        'train_accuracy': float(t['correct'] / t['count']),
        # None when the interval held only the compiling first call.
        'images_per_sec': float(t['count'] / self._seconds) if self._seconds else None,
    }
    if with_hem:
      record['hem_ess'] = float(t['hem_ess_sum'] / (t['count'] / batch_size))
      record['hem_weight_max'] = float(t['hem_weight_max'])
    self._totals, self._seconds = None, 0.0
    return record


def read_metrics(workdir: str) -> list[dict]:
  """The records of `metrics.jsonl`, oldest first; [] when there are none.

  A line still being written by a running job (not yet ending in a newline) is left out.
  """
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.endswith('\n') and line.strip()]


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
