"""A run built once from its config: data on the mesh, model, optimiser, state, compiled steps.

`setup(config, mesh)` is the one place this sequence is written; the training loop, the tests
and the benchmarks all start from the `Run` it returns.
"""
import dataclasses
import functools
import logging
import os

import jax
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from cifar_jax import models, pretrained, sharding, workdir
from cifar_jax.augment import inputs, normalize
from cifar_jax.data import splits as splits_lib
from cifar_jax.errors import UserError
from cifar_jax.sharding import DATA_AXIS
from cifar_jax.training import (
    evaluation,
    hem,
    lookahead,
    loss_scale,
    optim,
    profiling,
    update,
    wandb_log,
)
from cifar_jax.training import state as state_lib
from cifar_jax.training import step as step_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Splits:
  """The dataset on the mesh: row-sharded images (uint8) and labels (int32)."""
  train_images: jax.Array
  train_labels: jax.Array
  num_train: int  # Real rows; the arrays may carry padding rows after them.
  eval_sets: dict  # Split name ('test', 'val') -> (images, labels, mask), padded.
  num_classes: int


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything a training run uses, built once by `setup`.

  `init_fn(seed key, train images) -> state` creates a fresh state (with the model's
  data-dependent initialisation, if it has one); `train_fn(state, images, labels, stop_step) ->
  (state, metric sums)` takes steps until `stop_step` (never across an epoch); `eval_fn(state,
  images, labels, mask) -> sums` evaluates a whole split; `monitor_fn(state, loss) -> state`
  feeds plateau and early stopping. Each is compiled once, at its first call.
  """
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  classes: dict  # Class names (`workdir.classes_of`); the images are on the mesh in `splits`.
  splits: Splits
  image_stats: tuple  # Per-channel (mean, std) of the training split, in [0, 1] units.
  model: object
  schedule: object
  optimizer: object
  plateau: object
  steps_per_epoch: int
  total_steps: int
  eval_every: int  # Train steps between evaluations.
  steps_per_call: int
  init_fn: object
  train_fn: object
  eval_fn: object
  monitor_fn: object

  def new_state(self, seed: int | None = None) -> state_lib.TrainState:
    """A fresh train state on the mesh (replicated), from `seed` (default `config.seed`)."""
    return self.init_fn(jax.random.PRNGKey(self.config.seed if seed is None else seed),
                        self.splits.train_images)

  def next_stop(self, step: int) -> int:
    """Where a train call from `step` stops: after `steps_per_call` steps, at the next
    evaluation, at the end of the epoch or of the run, whichever comes first."""
    next_eval = (step // self.eval_every + 1) * self.eval_every
    epoch_end = (step // self.steps_per_epoch + 1) * self.steps_per_epoch
    return min(step + self.steps_per_call, next_eval, epoch_end, self.total_steps)

  def load_pretrained(self, state: state_lib.TrainState) -> state_lib.TrainState:
    """`state` with the weights of `config.model.init_from` and a fresh optimiser state."""
    config = self.config
    params, batch_stats, notes = pretrained.load(
        config.model.init_from, self.model, jax.device_get(state.params),
        jax.device_get(state.batch_stats))
    log.info('Initialised from %s.', config.model.init_from)
    for note in notes:
      log.info('  %s', note)

    def restart(state, params, batch_stats):
      return state.replace(params=params, batch_stats=batch_stats,
                           opt_state=self.optimizer.init(params),
                           ema_params=params if config.ema_decay else {})

    return jax.jit(restart, out_shardings=sharding.replicated(self.mesh))(
        state, params, batch_stats)


def setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None) -> Run:
  """Validates `config`, puts its data on `mesh` (default: every device) and builds the run.

  `config.eval_batch_size` is lowered to the largest evaluation split where it is larger
  (`fit_eval_batch`).
  """
  mesh = mesh or sharding.create_mesh()
  check_config(config, mesh.size)

  # Data, on the mesh for the whole run.
  dataset, host_splits = splits_lib.load_splits(config)
  fit_eval_batch(config, host_splits, mesh.size)
  image_stats = normalize.input_stats(config.model.normalization, host_splits['train'][0])
  splits = place_splits(host_splits, dataset.num_classes, config.eval_batch_size, mesh)
  classes = workdir.classes_of(dataset)
  del dataset, host_splits  # The host copies: the run keeps the mesh's.
  steps_per_epoch = step_lib.steps_per_epoch(config.batch_size, splits.num_train)
  total_steps = optim.epochs_to_steps(config.num_epochs, steps_per_epoch)
  if config.max_steps:
    total_steps = min(total_steps, config.max_steps)

  # Model and optimiser.
  model = models.from_config(config.model, splits.num_classes, bn_axis_name=DATA_AXIS)
  schedule = optim.create_schedule(config, steps_per_epoch)
  optimizer = optim.create_optimizer(config, schedule, steps_per_epoch)
  plateau = optim.create_plateau(config)
  call_steps = steps_per_call(config, steps_per_epoch)

  return Run(
      config=config, mesh=mesh, classes=classes, splits=splits, image_stats=image_stats,
      model=model, schedule=schedule, optimizer=optimizer, plateau=plateau,
      steps_per_epoch=steps_per_epoch, total_steps=total_steps,
      eval_every=max(1, optim.epochs_to_steps(config.eval_every_epochs, steps_per_epoch)),
      steps_per_call=call_steps,
      init_fn=compile_init_fn(config, model, optimizer, plateau, image_stats, mesh,
                              splits.num_train),
      train_fn=compile_train_fn(config, model, optimizer, mesh, splits.num_train,
                                steps_per_epoch, device_loop=call_steps > 1),
      eval_fn=compile_eval_fn(config, model, mesh, splits.num_classes),
      monitor_fn=compile_monitor_fn(config, plateau))


def check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises a UserError naming the first field no run can use: each part checks its own.

  Before any data is loaded or anything compiled; the last check traces the model (about a
  second), to refuse a batch whose activations cannot fit in memory (`check_memory`).
  """
  positive = {'batch_size': config.batch_size, 'eval_batch_size': config.eval_batch_size,
              'num_epochs': config.num_epochs, 'eval_every_epochs': config.eval_every_epochs,
              'checkpoint.keep_latest': config.checkpoint.keep_latest}
  for field, value in positive.items():
    if not value > 0:
      raise UserError(f'config.{field} must be positive, got {value}.')
  for field, zero in (('steps_per_call', 'automatic'), ('max_steps', 'no limit'),
                      ('eval_translate_tta', 'off')):
    if config[field] < 0:
      raise UserError(f'config.{field} must be >= 0 (0 is {zero}), got {config[field]}.')
  for field in ('batch_size', 'eval_batch_size'):
    if config[field] % num_devices:
      raise UserError(f'config.{field}={config[field]} must divide evenly across the '
                      f'{num_devices} devices; pick a multiple of {num_devices}.')
  if not 0 <= config.seed < 2**63:  # What NumPy's and JAX's generators take.
    raise UserError(f'config.seed must be an integer in [0, 2**63), got {config.seed}.')
  wandb_log.check_config(config.logging)
  models.check_config(config.model)
  normalize.check_normalization(config.model.normalization)
  inputs.check_config(config.augment, config.label_smoothing)
  update.check_config(config)
  hem.check_config(config.hem)
  optim.check_config(config)
  profiling.check_config(config.profile_steps)
  check_memory(config, num_devices)


def memory_per_device() -> tuple[int | None, int]:
  """(bytes, devices sharing them) of this process's first device, or (None, 1) if unknown.

  A CPU's devices all share the host's physical memory; a GPU's or TPU's memory is its own
  (what its allocator may use, from `memory_stats`).
  """
  if jax.default_backend() == 'cpu':
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'), jax.local_device_count()
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get('bytes_limit'), 1


# A train step's peak memory per example over the largest array's: 7.8 (airbench94), 17 (simple
# CNN), 18 (VGG-16), 31 (ResNet-18), 56 (WRN-28-10), from XLA:CPU's compiled temporary memory at
# batches 64 and 128 (32x32 images, float32).
PEAK_PER_ARRAY = 64


def check_memory(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises a UserError for a batch size whose activations cannot fit in memory.

  One example's largest array in the model (`models.largest_activation_bytes`), times the
  examples that share a memory (the global batch on one host's CPU devices, a device's share on
  a GPU), must fit in it. That is a lower bound, so what this refuses cannot run; the size it
  suggests allows `PEAK_PER_ARRAY` times that array per example, room for a train step's peak.
  """
  limit, sharing = memory_per_device()
  model = models.from_config(config.model, num_classes=100)  # The head is never the largest.
  per_example = models.largest_activation_bytes(model, config.model.input_size)
  if not limit or not per_example:
    return
  sharing = min(sharing, num_devices)  # Devices of the mesh that share one memory.

  def most(bytes_per_example):  # The largest global batch, a multiple of `num_devices`.
    return limit // bytes_per_example // sharing * num_devices

  for field in ('batch_size', 'eval_batch_size'):
    if config[field] > most(per_example):
      need = config[field] // num_devices * sharing * per_example
      suggested = most(PEAK_PER_ARRAY * per_example)
      advice = (f'try {suggested} or less' if suggested else
                'no batch is likely to fit: use a smaller model, input_size or dtype')
      where = 'this host' if jax.default_backend() == 'cpu' else 'each device'
      raise UserError(
          f'config.{field}={config[field]} cannot fit in memory: {config.model.name} computes '
          f'an array of {per_example / 2**20:.2f} MiB per example, {need / 2**30:.1f} GiB for '
          f'one batch, and {where} has {limit / 2**30:.1f} GiB; {advice}.')


def fit_eval_batch(config: ml_collections.ConfigDict, host_splits: dict, num_devices: int):
  """Lowers `config.eval_batch_size` to the largest evaluation split (rounded up to a multiple of
  `num_devices`) where it is larger: the rest of each batch would be padding, computed for
  nothing. In the config, so the workdir's saved config (evaluate, predict) has it too."""
  largest = max(len(labels) for name, (_, labels) in host_splits.items() if name != 'train')
  fitted = -(-largest // num_devices) * num_devices
  if config.eval_batch_size > fitted:
    log.info('config.eval_batch_size=%d is more than the largest evaluation split holds (%d '
             'examples): evaluating in batches of %d.', config.eval_batch_size, largest, fitted)
    config.eval_batch_size = fitted


def place_eval_split(images, labels, eval_batch_size: int, mesh) -> tuple:
  """An evaluation split on the mesh as (images, labels, mask).

  Padded to whole global batches with the padding masked, so every example
  counts exactly once.
  """
  mask = np.ones(len(labels), bool)
  return tuple(sharding.shard_rows(sharding.pad_rows(a, eval_batch_size), mesh)
               for a in (images, labels, mask))


def place_splits(host_splits: dict, num_classes: int, eval_batch_size: int, mesh) -> Splits:
  train_images, train_labels = host_splits['train']
  return Splits(
      train_images=sharding.shard_rows(train_images, mesh),
      train_labels=sharding.shard_rows(train_labels, mesh),
      num_train=len(train_labels),
      eval_sets={name: place_eval_split(*arrays, eval_batch_size, mesh)
                 for name, arrays in host_splits.items() if name != 'train'},
      num_classes=num_classes)


def compile_init_fn(config, model, optimizer, plateau, image_stats, mesh, num_train: int):
  """The jitted `(seed key, training images) -> fresh state`, created on the mesh (replicated).

  A model with a data-dependent initialisation (an `init_from_data(params, images)` method,
  e.g. airbench's patch whitening) gets the first `model.init_examples` training images (all
  if fewer), normalised as the model sees them.
  """
  def init(seed_key, train_images):
    state = state_lib.init_train_state(
        seed_key, model=model, optimizer=optimizer, plateau=plateau,
        image_mean=image_stats[0], image_std=image_stats[1], ema=config.ema_decay > 0,
        lookahead=config.lookahead.every > 0, input_size=config.model.input_size,
        loss_scale=loss_scaling(config))
    if not hasattr(model, 'init_from_data'):
      return state
    # Gathered whole onto every device: the statistics of the first rows, not of each shard.
    first = jax.sharding.reshard(train_images[:min(model.init_examples, num_train)],
                                 sharding.replicated(mesh))
    images = normalize.model_inputs(first, state.image_mean, state.image_std,
                                    config.model.input_size)
    params = model.init_from_data(state.params, images)
    return state.replace(
        params=params, opt_state=optimizer.init(params),
        ema_params=params if config.ema_decay else {},
        lookahead=lookahead.init(params, state.batch_stats) if config.lookahead.every else {})

  return jax.jit(init, out_shardings=sharding.replicated(mesh))


def steps_per_call(config, steps_per_epoch: int) -> int:
  """`config.steps_per_call`, with 0 resolved for the platform (see its comment in config.py)."""
  if config.steps_per_call:
    return config.steps_per_call
  return 1 if jax.default_backend() == 'cpu' else min(steps_per_epoch, 100)


def loss_scaling(config):
  """`config.loss_scale` when the model computes in float16 (dynamic loss scaling), else None."""
  return config.loss_scale if loss_scale.enabled(config.model) else None


def train_step_fn(config, model, optimizer, total_steps: int):
  """`step.train_step` with everything but its arrays bound from the config."""
  return functools.partial(
      step_lib.train_step, model=model, optimizer=optimizer, augment_config=config.augment,
      hem_config=config.hem, label_smoothing=config.label_smoothing,
      sam_rho=config.optimizer.sam_rho, ema_decay=config.ema_decay,
      input_size=config.model.input_size, loss_reduction=config.loss_reduction,
      lookahead=config.lookahead, total_steps=total_steps, loss_scaling=loss_scaling(config))


def compile_train_fn(config, model, optimizer, mesh, num_train: int, steps_per_epoch: int,
                     device_loop: bool):
  """The jitted `(state, images, labels, stop_step) -> (state, metric sums)`."""
  # Lookahead's decay grows over the schedule's length (a `max_steps` cut does not shorten it).
  total_steps = optim.epochs_to_steps(config.num_epochs, steps_per_epoch)
  per_device = functools.partial(
      step_lib.train_steps, num_train=num_train, batch_size=config.batch_size,
      steps_per_epoch=steps_per_epoch,
      step_fn=train_step_fn(config, model, optimizer, total_steps), device_loop=device_loop)
  mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS), P()),
                         out_specs=(P(), P()))
  # Donating the state lets XLA update parameters and optimiser state in place.
  return jax.jit(mapped, donate_argnums=0)


def compile_eval_fn(config, model, mesh, num_classes: int):
  """The jitted `(state, images, labels, mask) -> sums` over a whole split."""
  per_device = functools.partial(
      evaluation.eval_step, model=model, local_batch_size=config.eval_batch_size // mesh.size,
      num_classes=num_classes, flip_tta=config.eval_flip_tta,
      translate_tta=config.eval_translate_tta, input_size=config.model.input_size)
  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), *[P(DATA_AXIS)] * 3),
                               out_specs=P()))


def compile_monitor_fn(config, plateau):
  """The jitted `(state, monitored loss) -> state` that advances plateau and early stopping."""

  def update(state, value):
    _, plateau_state = plateau.update(updates={}, state=state.plateau, value=value)
    early = state.early_stopping.update(value, config.early_stopping.min_delta)
    return state.replace(plateau=plateau_state, early_stopping=early)

  return jax.jit(update, donate_argnums=0)
