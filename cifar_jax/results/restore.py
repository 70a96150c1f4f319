"""A trained model back from its workdir, for the commands that evaluate, predict and report.

The workdir holds everything needed without the training data: `config.json`, `classes.json`
and the checkpoints, whose train state carries the input normalisation. Only the model is
built; the checkpoint is read as saved, so no optimiser or fresh state is created for it.
"""
import dataclasses
import functools
import os
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from cifar_jax import models, sharding
from cifar_jax import workdir as workdir_lib
from cifar_jax.errors import UserError
from cifar_jax.sharding import DATA_AXIS
from cifar_jax.training import evaluation
from cifar_jax.training.checkpoint import Checkpoints


@flax.struct.dataclass
class Weights:
  """What prediction needs of a train state."""
  params: Any
  batch_stats: Any
  image_mean: jax.Array
  image_std: jax.Array


@dataclasses.dataclass(frozen=True)
class Trained:
  """A restored model: its config, flax module, weights and class names."""
  config: ml_collections.ConfigDict
  model: object
  weights: Weights
  step: int  # The checkpoint's train step.
  classes: dict  # See `workdir.classes_of`.
  mesh: object

  @functools.cached_property
  def _predict_fn(self):
    per_device = functools.partial(evaluation.predict, model=self.model,
                                   flip_tta=self.config.eval_flip_tta,
                                   translate_tta=self.config.eval_translate_tta,
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
      out.append(np.asarray(jax.device_get(self._predict_fn(self.weights, padded)))[:len(chunk)])
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
  config = config or workdir_lib.load_config(workdir)
  classes = workdir_lib.load_classes(workdir)
  mesh = sharding.create_mesh()
  model = models.from_config(config.model, len(classes['class_names']), bn_axis_name=DATA_AXIS)
  checkpoints = Checkpoints(workdir, read_only=True)
  try:
    step = choose_step(checkpoints, which)
    saved = checkpoints.restore_as_saved(step, sharding.replicated(mesh))
  finally:
    checkpoints.close()
  weights = Weights(**{field.name: saved[field.name] for field in dataclasses.fields(Weights)})
  _check_matches(model, weights, config, workdir, step)
  return Trained(config, model, weights, step, classes, mesh)


def _check_matches(model, weights: Weights, config, workdir: str, step: int) -> None:
  """Raises a UserError if the checkpoint's parameters are not the shapes `model` has."""
  size = config.model.input_size
  expected = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               np.zeros((1, size, size, 3)), train=False))
  shapes = jax.tree.map(lambda a: a.shape, {'params': weights.params,
                                            'batch_stats': weights.batch_stats})
  wanted = jax.tree.map(lambda a: a.shape, {'params': expected['params'],
                                            'batch_stats': expected.get('batch_stats', {})})
  if shapes != wanted:
    raise UserError(
        f'checkpoint {step} in {workdir} does not hold the parameters of the model the config '
        f'describes ({config.model.name}). Was it written with another config?')
