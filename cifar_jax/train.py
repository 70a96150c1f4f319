"""Training: set-up and the loop that reads top to bottom in `train_and_evaluate`.

The compiled per-device steps are in `steps.py`; here they are mapped over every
device with `jax.shard_map` under `jax.jit`, and the loop calls them, evaluates,
logs, checkpoints and adjusts the learning rate on plateaus.
"""
import dataclasses
import functools
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from jax.sharding import PartitionSpec as P

from cifar_jax import augment, data, metrics, models, multihost, optim, pretrained, sharding, steps
from cifar_jax import config as config_lib
from cifar_jax.checkpoint import Checkpoints
from cifar_jax.errors import UserError
from cifar_jax.sharding import DATA_AXIS

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Splits:
  """The dataset on the mesh: row-sharded images (uint8) and labels (int32)."""
  train_images: jax.Array
  train_labels: jax.Array
  num_train: int  # Real rows; the arrays may carry padding rows after them.
  eval_sets: dict  # Split name ('test', 'val') -> (images, labels, mask), padded.
  num_classes: int


# ----------------------------------------------------------------------------
# Set-up: data, model, optimiser, state, compiled functions.
# ----------------------------------------------------------------------------


def load_host_splits(config: ml_collections.ConfigDict) -> tuple[data.Dataset, dict]:
  """The dataset and its splits on the host: name -> (uint8 images, int32 labels).

  Names are 'train', 'test' and, when `dataset.validation_size` is set, 'val':
  examples held out of 'train'.
  """
  d = config.dataset
  dataset = data.load(d.name, d.source, d.data_dir, download=d.download,
                      synthetic_train_size=d.synthetic_train_size,
                      synthetic_test_size=d.synthetic_test_size, synthetic_seed=config.seed)
  splits = {'train': (dataset.train.images, dataset.train.labels.astype(np.int32)),
            'test': (dataset.test.images, dataset.test.labels.astype(np.int32))}
  if d.validation_size:
    images, labels = splits['train']
    if not 0 < d.validation_size < len(labels):
      raise UserError(f'config.dataset.validation_size={d.validation_size} must be between 0 and '
                      f'the {len(labels)} training examples.')
    # A fixed split (by seed), so resumed and repeated runs hold out the same examples.
    order = np.random.default_rng(config.seed).permutation(len(labels))
    held, kept = order[:d.validation_size], np.sort(order[d.validation_size:])
    splits['val'] = (images[held], labels[held])
    splits['train'] = (images[kept], labels[kept])
  return dataset, splits


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


# `config.model` fields that are not the model family's (see `config.model_config`).
_MODEL_SETTINGS = ('name', 'init_from', 'input_size')


def create_model(config: ml_collections.ConfigDict, num_classes: int):
  fields = {k: v for k, v in config.model.items() if k not in _MODEL_SETTINGS}
  return models.create_model(config.model.name, num_classes=num_classes,
                             bn_axis_name=DATA_AXIS, **fields)


def create_train_state(config, model, optimizer, plateau, image_stats, mesh) -> steps.TrainState:
  """A fresh state, created directly on the mesh (replicated)."""
  init = functools.partial(steps.init_train_state, model=model, optimizer=optimizer,
                           plateau=plateau, ema=config.ema_decay > 0,
                           input_size=config.model.input_size)
  return jax.jit(init, out_shardings=sharding.replicated(mesh))(
      jax.random.PRNGKey(config.seed), image_mean=image_stats[0], image_std=image_stats[1])


def abstract_train_state(config, model, optimizer, plateau, mesh) -> steps.TrainState:
  """The state's shapes, dtypes and shardings, to restore a checkpoint into."""
  shapes = jax.eval_shape(functools.partial(
      steps.init_train_state, model=model, optimizer=optimizer, plateau=plateau,
      ema=config.ema_decay > 0, input_size=config.model.input_size),
      jax.random.PRNGKey(0), image_mean=np.zeros(3, np.float32),
      image_std=np.ones(3, np.float32))
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding.replicated(mesh)), shapes)


def init_from_pretrained(config, model, optimizer, state: steps.TrainState,
                         mesh) -> steps.TrainState:
  """`state` with the weights of `config.model.init_from` and a fresh optimiser state."""
  params, batch_stats, notes = pretrained.load(
      config.model.init_from, model, jax.device_get(state.params),
      jax.device_get(state.batch_stats))
  log.info('Initialised from %s.', config.model.init_from)
  for note in notes:
    log.info('  %s', note)

  def restart(state, params, batch_stats):
    return state.replace(params=params, batch_stats=batch_stats,
                         opt_state=optimizer.init(params),
                         ema_params=params if config.ema_decay else {})

  return jax.jit(restart, out_shardings=sharding.replicated(mesh))(state, params, batch_stats)


def steps_per_call(config) -> int:
  """`config.steps_per_call`, with 0 resolved for the platform (see its comment in config.py)."""
  if config.steps_per_call:
    return config.steps_per_call
  return 1 if jax.default_backend() == 'cpu' else 10


def train_step_fn(config, model, optimizer, augment_config=None):
  """`steps.train_step` with everything but its arrays bound from the config."""
  return functools.partial(
      steps.train_step, model=model, optimizer=optimizer,
      augment_config=augment_config or config.augment, hem_config=config.hem,
      label_smoothing=config.label_smoothing, sam_rho=config.optimizer.sam_rho,
      ema_decay=config.ema_decay, input_size=config.model.input_size)


def compile_train_fn(config, model, optimizer, mesh, num_train: int, steps_per_epoch: int):
  """The jitted `(state, images, labels, stop_step) -> (state, metric sums)`."""
  step_fn = train_step_fn(config, model, optimizer)
  per_device = functools.partial(
      steps.train_steps, num_train=num_train, batch_size=config.batch_size,
      steps_per_epoch=steps_per_epoch, step_fn=step_fn,
      device_loop=steps_per_call(config) > 1)
  mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS), P()),
                         out_specs=(P(), P()))
  # Donating the state lets XLA update parameters and optimiser state in place.
  return jax.jit(mapped, donate_argnums=0)


def compile_eval_fn(config, model, mesh, num_classes: int):
  """The jitted `(state, images, labels, mask) -> sums` over a whole split."""
  per_device = functools.partial(
      steps.eval_step, model=model, local_batch_size=config.eval_batch_size // mesh.size,
      num_classes=num_classes, flip_tta=config.eval_flip_tta, input_size=config.model.input_size)
  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), *[P(DATA_AXIS)] * 3),
                               out_specs=P()))


def compile_monitor_fn(config, plateau):
  """The jitted `(state, monitored loss) -> state` that advances plateau and early stopping."""

  def update(state, value):
    _, plateau_state = plateau.update(updates={}, state=state.plateau, value=value)
    early = state.early_stopping.update(value, config.early_stopping.min_delta)
    return state.replace(plateau=plateau_state, early_stopping=early)

  return jax.jit(update, donate_argnums=0)


def check_divisibility(config, num_devices: int) -> None:
  for field in ('batch_size', 'eval_batch_size'):
    if config[field] % num_devices:
      raise UserError(f'config.{field}={config[field]} must divide evenly across the '
                      f'{num_devices} devices; pick a multiple of {num_devices}.')


def restore_or_keep(checkpoints: Checkpoints, state: steps.TrainState) -> steps.TrainState:
  """The latest checkpoint in the workdir if there is one, else `state`."""
  step = checkpoints.latest_step()
  if step is None:
    return state
  log.info('Resuming from the checkpoint at step %d in %s.', step, checkpoints.directory)
  return checkpoints.restore(state, step)


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> steps.TrainState:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the final state.

  Raises:
    multihost.Preempted: after saving, when SIGTERM reached any process.
  """
  # 1. Config, workdir, mesh. With several processes, process 0 alone writes
  # the run's files; all of them write the checkpoints, together.
  config_lib.validate(config)
  is_main = multihost.is_main_process()
  os.makedirs(workdir, exist_ok=True)
  if is_main:
    metrics.save_config(config, workdir)
  mesh = sharding.create_mesh()
  check_divisibility(config, mesh.size)

  # 2. Data, on the mesh for the whole run.
  dataset, host_splits = load_host_splits(config)
  if is_main:
    metrics.save_classes(dataset, workdir)
  image_stats = augment.channel_stats(host_splits['train'][0])
  splits = place_splits(host_splits, dataset.num_classes, config.eval_batch_size, mesh)
  del host_splits
  steps_per_epoch = splits.num_train // config.batch_size
  if steps_per_epoch == 0:
    raise UserError(f'config.batch_size={config.batch_size} is larger than the '
                    f'{splits.num_train} training examples.')
  total_steps = optim.epochs_to_steps(config.num_epochs, steps_per_epoch)
  if config.max_steps:
    total_steps = min(total_steps, config.max_steps)
  eval_every = max(1, optim.epochs_to_steps(config.eval_every_epochs, steps_per_epoch))

  # 3. Model, optimiser, state. The resume order: build a fresh state (its
  # structure and shardings), fill in pretrained weights when a new run starts
  # from them, then overwrite it from the latest checkpoint if there is one:
  # parameters, optimiser, plateau and early-stopping state, step and RNG.
  # The data order and augmentation derive from (rng, step), so they resume too.
  model = create_model(config, splits.num_classes)
  schedule = optim.create_schedule(config, steps_per_epoch)
  optimizer = optim.create_optimizer(config, schedule)
  plateau = optim.create_plateau(config)
  state = create_train_state(config, model, optimizer, plateau, image_stats, mesh)
  checkpoints = Checkpoints(workdir, config.checkpoint.keep_latest)
  if config.model.init_from and checkpoints.latest_step() is None:
    state = init_from_pretrained(config, model, optimizer, state, mesh)
  state = restore_or_keep(checkpoints, state)

  # 4. Compiled functions: each compiled once for the whole run.
  train_fn = compile_train_fn(config, model, optimizer, mesh, splits.num_train, steps_per_epoch)
  eval_fn = compile_eval_fn(config, model, mesh, splits.num_classes)
  monitor_fn = compile_monitor_fn(config, plateau)
  monitored_split = 'val' if 'val' in splits.eval_sets else 'test'
  metrics_log = metrics.MetricsLog(workdir, enabled=is_main)

  # 5. Train, evaluating every `eval_every` steps and at the end.
  step = int(state.step)
  patience = config.early_stopping.patience if config.early_stopping.enabled else np.inf
  meter = metrics.TrainMeter()
  # Wall time carries on across resumes from the last record (the time between
  # that record and an interruption is not counted).
  previous = metrics.read_metrics(workdir)
  wall_start = time.perf_counter() - (previous[-1].get('wall_seconds', 0.0) if previous else 0.0)
  call_steps = steps_per_call(config)
  progress, preempted = None, False
  preemption = multihost.PreemptionWatch(mesh)
  preemption.start()
  try:
    while step < total_steps:
      # All processes ask at the same step, and all stop there if any was signalled.
      if preemption.requested():
        if checkpoints.latest_step() != step:
          # Not ranked as the best: it was not evaluated.
          checkpoints.save(state, score=-np.inf)
        preempted = True
        break
      if state.early_stopping.should_stop(patience):
        log.info('Early stopping at step %d: no improvement in %d evaluations.', step, patience)
        break
      epoch_start = step // steps_per_epoch * steps_per_epoch
      if progress is None:
        progress = tqdm.tqdm(total=steps_per_epoch, initial=step - epoch_start, leave=False,
                             desc=f'epoch {step // steps_per_epoch + 1}', unit='step',
                             disable=not is_main)
      # A call stops at the next evaluation and never crosses an epoch.
      next_eval = (step // eval_every + 1) * eval_every
      stop_step = min(step + call_steps, next_eval, epoch_start + steps_per_epoch, total_steps)
      start_time = time.perf_counter()
      state, totals = train_fn(state, splits.train_images, splits.train_labels,
                               jnp.asarray(stop_step, jnp.int32))
      totals = jax.device_get(totals)  # Waits for the call: a few scalars, once per call.
      seconds = time.perf_counter() - start_time
      check_finite(totals, step, stop_step, checkpoints)
      meter.add(totals, seconds)
      progress.update(stop_step - step)
      step = stop_step
      learning_rate = float(schedule(step - 1) * state.plateau.scale)
      progress.set_postfix(loss=f'{totals["loss_sum"] / totals["count"]:.3f}',
                           acc=f'{totals["correct"] / totals["count"]:.3f}',
                           lr=f'{learning_rate:.3g}', img_s=f'{totals["count"] / seconds:.0f}')
      if step % steps_per_epoch == 0 or step == total_steps:
        progress.close()
        progress = None
      if step % eval_every and step != total_steps:
        continue

      # Evaluate, feed the monitors, log, checkpoint.
      results = {name: metrics.summarize_eval(eval_fn(state, *arrays))
                 for name, arrays in splits.eval_sets.items()}
      if config.ema_decay:
        ema_state = state.replace(params=state.ema_params)
        results.update({f'ema_{name}': metrics.summarize_eval(eval_fn(ema_state, *arrays))
                        for name, arrays in splits.eval_sets.items()})
      monitored = optim.monitor_loss(results[monitored_split], config.monitor)
      # Only scheduled evaluations count towards plateau and early stopping, so
      # stopping early (max_steps) and resuming changes nothing.
      if step % eval_every == 0:
        state = monitor_fn(state, jnp.asarray(monitored, jnp.float32))
      record = {'step': step, 'epoch': step / steps_per_epoch, 'learning_rate': learning_rate,
                'plateau_scale': float(state.plateau.scale),
                'wall_seconds': time.perf_counter() - wall_start,
                **meter.summary(config.batch_size, with_hem=config.hem.mode != 'off')}
      for name, result in results.items():
        record.update({f'{name}_{k}': v for k, v in result.items() if k != 'per_class_accuracy'})
      metrics_log.write(record)
      log.info('step %d: %s', step, ', '.join(
          f'{k}={v:.4g}' for k, v in record.items() if isinstance(v, float)))
      checkpoints.save(state, score=-monitored)
  finally:
    preemption.stop()
    if progress is not None:
      progress.close()
    checkpoints.wait()
    checkpoints.close()
    metrics_log.close()
  if preempted:  # Raised once the checkpoint is on disk.
    raise multihost.Preempted(f'saved step {step} in {checkpoints.directory}; the same command '
                              'resumes from it.')
  return state


def check_finite(totals: dict, first_step: int, stop_step: int, checkpoints: Checkpoints) -> None:
  """Stops a diverged run before it saves anything, so the last good checkpoint stays."""
  if not np.isfinite(totals['loss_sum']):
    raise UserError(
        f'the training loss became {totals["loss_sum"]} between steps {first_step} and '
        f'{stop_step}; stopped without saving, so the last good checkpoint '
        f'(step {checkpoints.latest_step()}) is kept in {checkpoints.directory}. '
        'Try a lower config.optimizer.learning_rate or a warm-up.')
