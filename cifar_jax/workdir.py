"""The files of a run's workdir that people and the results commands read.

`config.json` (the resolved config), `classes.json` (the class names), `metrics.jsonl` (one
record per evaluation) and `tensorboard/` (the same scalars). Checkpoints are
`cifar_jax.training.checkpoint`'s.
"""
import json
import os

import ml_collections
import numpy as np

from cifar_jax import config as config_lib


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')


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


def tensorboard_writer(workdir: str):
  """A tensorboardX writer on `workdir/tensorboard`. Imported here, when first needed: with
  PyTorch installed, importing tensorboardX imports PyTorch (about a second per command)."""
  import tensorboardX  # noqa: PLC0415
  return tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard'))


class MetricsLog:
  """Appends one JSON object per evaluation to `metrics.jsonl` and mirrors scalars to TensorBoard.

  TensorBoard files are written by tensorboardX, which needs no TensorFlow.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    """`enabled=False` (all processes but the first of a multi-process job) writes nothing."""
    self._path = os.path.join(workdir, 'metrics.jsonl')
    self._tensorboard = tensorboard_writer(workdir) if enabled else None

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


def read_metrics(workdir: str) -> list[dict]:
  """The records of `metrics.jsonl`, oldest first; [] when there are none.

  A line still being written by a running job (not yet ending in a newline) is left out.
  """
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.endswith('\n') and line.strip()]
