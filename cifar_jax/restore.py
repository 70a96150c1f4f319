"""A trained model back from its workdir, for the commands that evaluate, predict and report.

The workdir holds everything needed without the training data: `config.json`, `classes.json`
and the checkpoints (whose train state carries the input normalisation).
"""
import dataclasses
import functools
import os

import jax
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from cifar_jax import config as config_lib
from cifar_jax import metrics, optim, sharding, steps, train
from cifar_jax.checkpoint import Checkpoints
from cifar_jax.errors import UserError
from cifar_jax.sharding import DATA_AXIS


@dataclasses.dataclass(frozen=True)
class Trained:
  """A restored model: its config, flax module, train state and class names."""
  config: ml_collections.ConfigDict
  model: object
  state: steps.TrainState
  step: int  # The checkpoint's train step.
  classes: dict  # See `metrics.save_classes`.
  mesh: object

  @functools.cached_property
  def _predict_fn(self):
    per_device = functools.partial(steps.predict, model=self.model,
                                   flip_tta=self.config.eval_flip_tta,
                                   input_size=self.config.model.input_size)
    return jax.jit(jax.shard_map(per_device, mesh=self.mesh, in_specs=(P(), P(DATA_AXIS)),
                                 out_specs=P(DATA_AXIS)))

  def logits(self, images: np.ndarray) -> np.ndarray:
    """float32 logits [N, classes] of uint8 images [N, 32, 32, 3], in batches of
    `eval_batch_size` split across the devices (one compilation for all batches)."""
    batch = self.config.eval_batch_size
    out = []
    for start in range(0, len(images), batch):
      chunk = images[start:start + batch]
      padded = sharding.shard_rows(sharding.pad_rows(chunk, batch), self.mesh)
      out.append(np.asarray(jax.device_get(self._predict_fn(self.state, padded)))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, len(self.classes['class_names'])))


def choose_step(checkpoints: Checkpoints, which: str) -> int:
  """The step of checkpoint `which` ('best' | 'latest' | a step number)."""
  saved = checkpoints.all_steps()
  if not saved:
    raise UserError(f'no checkpoints in {checkpoints.directory}: train first with '
                    '`python -m cifar_jax.main --config=... --workdir=...`.')
  if which == 'best':
    return checkpoints.best_step()
  if which == 'latest':
    return checkpoints.latest_step()
  if which.isdigit() and int(which) in saved:
    return int(which)
  raise UserError(f'--checkpoint={which} is not best, latest or one of the saved steps {saved}.')


def check_workdir(workdir: str) -> None:
  """Raises a UserError unless `workdir` was written by `cifar_jax.main`."""
  for name in ('config.json', 'classes.json', 'checkpoints'):
    if not os.path.exists(os.path.join(workdir, name)):
      raise UserError(f'{workdir} holds no {name}: is it a workdir written by '
                      '`python -m cifar_jax.main`?')


def from_workdir(workdir: str, which: str = 'best',
                 config: ml_collections.ConfigDict | None = None) -> Trained:
  """Restores checkpoint `which` of `workdir` onto all devices.

  Args:
    workdir: A workdir written by `cifar_jax.main`.
    which: 'best', 'latest' or a saved step.
    config: The config to build the model with; default the workdir's own.
  """
  check_workdir(workdir)
  config = config or metrics.load_config(workdir)
  config_lib.validate(config)
  classes = metrics.load_classes(workdir)
  mesh = sharding.create_mesh()
  model = train.create_model(config, len(classes['class_names']))
  optimizer = optim.create_optimizer(config, optim.create_schedule(config, steps_per_epoch=1))
  abstract = train.abstract_train_state(config, model, optimizer, optim.create_plateau(config),
                                        mesh)
  checkpoints = Checkpoints(workdir, read_only=True)
  try:
    step = choose_step(checkpoints, which)
    state = checkpoints.restore(abstract, step)
  finally:
    checkpoints.close()
  return Trained(config, model, state, step, classes, mesh)
