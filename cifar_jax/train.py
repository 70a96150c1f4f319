"""Training: the train state, the per-device train and eval steps, and the loop.

The steps are written once for one device in the pmap style: each sees its
share of the global batch and talks to the others through collectives over the
named axis `data` (`lax.pmean` of gradients, BatchNorm statistics and metrics).
`jax.shard_map` under `jax.jit` runs them on every device of a 1-D mesh, so the
same code trains on one CPU, eight GPUs or a TPU pod slice.

The dataset lives on the devices, split by rows. Each call of the compiled
train function runs up to `steps_per_call` steps in a loop on the device: it
draws the epoch's permutation, gathers each batch, augments it and updates the
state, so the host does no per-step work and sends nothing per step.
"""
import dataclasses
import functools
import logging
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from jax import lax
from jax.sharding import PartitionSpec as P

from cifar_jax import augment, data, hem, metrics, models, optim, sharding
from cifar_jax import config as config_lib
from cifar_jax.checkpoint import Checkpoints
from cifar_jax.errors import UserError
from cifar_jax.sharding import DATA_AXIS

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs, saved and restored as one pytree."""
  step: jax.Array  # Train steps taken; also positions the data order.
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  plateau: Any  # optax's ReduceLROnPlateauState; `.scale` multiplies the rate.
  early_stopping: optim.EarlyStoppingState
  rng: jax.Array  # Root key: data order and augmentation derive from it and the step.
  # Per-channel statistics of the training split, in [0, 1] units, that inputs
  # are normalised with; kept here so evaluation needs no training data.
  image_mean: jax.Array
  image_std: jax.Array


@dataclasses.dataclass(frozen=True)
class Splits:
  """The dataset on the mesh: row-sharded images (uint8) and labels (int32)."""
  train_images: jax.Array
  train_labels: jax.Array
  num_train: int  # Real rows; the arrays may carry padding rows after them.
  eval_sets: dict  # Split name ('test', 'val') -> (images, labels, mask), padded.
  num_classes: int


# ----------------------------------------------------------------------------
# The per-device steps.
# ----------------------------------------------------------------------------


def gather_batch(images, labels, indices):
  """This device's share of the global batch `indices` from row-sharded data.

  Args:
    images, labels: this device's rows of the training split.
    indices: global row numbers of the whole global batch (same on all devices).

  Each device picks the rows it owns (zeros elsewhere); a sum over devices
  then assembles the global batch and scatters it, each device keeping its
  contiguous slice. The data order thus depends only on the global indices,
  not on the number of devices, and only a batch crosses the interconnect.
  """
  shard_rows = images.shape[0]
  local = indices - lax.axis_index(DATA_AXIS) * shard_rows
  owned = (local >= 0) & (local < shard_rows)
  local = jnp.where(owned, local, 0)
  picked_images = jnp.where(owned[:, None, None, None], images[local], 0)
  picked_labels = jnp.where(owned, labels[local], 0)
  return (lax.psum_scatter(picked_images, DATA_AXIS, scatter_dimension=0, tiled=True),
          lax.psum_scatter(picked_labels, DATA_AXIS, scatter_dimension=0, tiled=True))


def batch_indices(permutation, step, *, batch_size: int, steps_per_epoch: int):
  """Global row numbers of the batch of train step `step`: its slice of the epoch's permutation.

  The rows left over after the epoch's last whole batch are skipped this epoch.
  """
  position = (step % steps_per_epoch) * batch_size
  return lax.dynamic_slice(permutation, (position,), (batch_size,))


def example_keys(step_key, local_batch_size: int):
  """One PRNG key per example, from its position in the global batch."""
  first = lax.axis_index(DATA_AXIS) * local_batch_size
  return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(first + jnp.arange(local_batch_size))


def train_step(state: TrainState, images, labels, step_key, *, model, optimizer,
               augment_config, hem_config):
  """One SGD step on this device's share of a global batch (per-device code).

  Returns the new state and this step's metrics, summed over the global batch.
  """
  keys = example_keys(step_key, images.shape[0])
  images = augment.augment(keys, images, crop_padding=augment_config.crop_padding,
                           flip=augment_config.flip, cutout_size=augment_config.cutout_size)
  inputs = augment.normalize(images, state.image_mean, state.image_std)

  def loss_fn(params):
    logits, new_variables = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, inputs, train=True,
        mutable=['batch_stats'])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    weights, hem_stats = hem.example_weights(
        losses, mode=hem_config.mode, fraction=hem_config.fraction, boost=hem_config.boost,
        temperature=hem_config.temperature, axis_name=DATA_AXIS)
    return jnp.mean(weights * losses), (logits, losses, new_variables['batch_stats'], hem_stats)

  # The parameters are replicated (invariant over the data axis), and the
  # gradient with respect to an invariant value is implicitly summed over
  # devices. Differentiating a device-varying view instead gives each device
  # the gradient of its own share, averaged explicitly below as with pmap.
  local_params = lax.pcast(state.params, DATA_AXIS, to='varying')
  grads, (logits, losses, batch_stats, hem_stats) = jax.grad(loss_fn, has_aux=True)(local_params)
  # Every device holds an equal share, so the mean of the per-device mean
  # gradients is the gradient of the global batch's mean loss.
  grads = lax.pmean(grads, DATA_AXIS)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  updates = jax.tree.map(lambda u: u * state.plateau.scale, updates)
  new_state = state.replace(
      step=state.step + 1, params=optax.apply_updates(state.params, updates),
      batch_stats=batch_stats, opt_state=opt_state)
  step_metrics = {
      'loss_sum': lax.psum(jnp.sum(losses), DATA_AXIS),
      'correct': lax.psum(jnp.sum(jnp.argmax(logits, -1) == labels), DATA_AXIS),
      'count': lax.psum(labels.shape[0], DATA_AXIS),
      'hem_ess_sum': hem_stats['hem_ess'],
      'hem_weight_max': hem_stats['hem_weight_max'],
  }
  return new_state, step_metrics


def train_steps(state: TrainState, images, labels, stop_step, *, num_train: int,
                batch_size: int, steps_per_epoch: int, step_fn):
  """Runs train steps until the state reaches `stop_step` (per-device code).

  `stop_step` is an argument, not a constant, so calls of any length share one
  compilation. The caller never lets a call cross an epoch boundary, so one
  permutation of the training split serves the whole call. Metrics are summed
  over the steps taken (the maxima maximised).
  """
  data_key, augment_key = jax.random.split(state.rng)
  epoch = state.step // steps_per_epoch
  permutation = jax.random.permutation(jax.random.fold_in(data_key, epoch), num_train)
  local_batch_size = batch_size // lax.axis_size(DATA_AXIS)

  def body(carry):
    state, totals = carry
    indices = batch_indices(permutation, state.step, batch_size=batch_size,
                            steps_per_epoch=steps_per_epoch)
    batch_images, batch_labels = gather_batch(images, labels, indices)
    assert batch_images.shape[0] == local_batch_size
    state, step_metrics = step_fn(state, batch_images, batch_labels,
                                  jax.random.fold_in(augment_key, state.step))
    totals = {k: (jnp.maximum if k.endswith('_max') else jnp.add)(totals[k], v)
              for k, v in step_metrics.items()}
    return state, totals

  zeros = {'loss_sum': 0.0, 'correct': 0, 'count': 0, 'hem_ess_sum': 0.0, 'hem_weight_max': 0.0}
  zeros = jax.tree.map(jnp.asarray, zeros)
  state, totals = lax.while_loop(lambda c: c[0].step < stop_step, body, (state, zeros))
  return state, totals


def eval_step(state: TrainState, images, labels, mask, *, model, local_batch_size: int,
              num_classes: int):
  """Sums of loss, top-1/top-5 hits and per-class hits over a split (per-device code).

  Each device evaluates its own rows in batches; the sums are added across devices.
  """

  def batch_sums(batch):
    x, y, m = batch
    logits = model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                         augment.normalize(x, state.image_mean, state.image_std), train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    top5 = lax.top_k(logits, min(5, num_classes))[1]
    hit1 = (top5[:, 0] == y) & m
    hit5 = jnp.any(top5 == y[:, None], axis=-1) & m
    one_hot = jax.nn.one_hot(y, num_classes, dtype=jnp.int32) * m[:, None]
    return {
        'loss_sum': jnp.sum(jnp.where(m, losses, 0.0)),
        'correct': jnp.sum(hit1), 'correct_top5': jnp.sum(hit5), 'count': jnp.sum(m),
        'class_correct': jnp.sum(one_hot * hit1[:, None], 0), 'class_count': jnp.sum(one_hot, 0),
    }

  batches = jax.tree.map(
      lambda a: a.reshape(-1, local_batch_size, *a.shape[1:]), (images, labels, mask))
  per_batch = lax.map(batch_sums, batches)
  return lax.psum(jax.tree.map(lambda a: jnp.sum(a, 0), per_batch), DATA_AXIS)


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


def create_model(config: ml_collections.ConfigDict, num_classes: int):
  fields = config.model.to_dict()
  return models.create_model(fields.pop('name'), num_classes=num_classes,
                             bn_axis_name=DATA_AXIS, **fields)


def init_train_state(rng, model, optimizer, plateau, image_mean, image_std) -> TrainState:
  """A fresh train state (pure; jit it with output shardings to create it on the mesh)."""
  init_key, state_key = jax.random.split(rng)
  variables = model.init(init_key, jnp.zeros((1, 32, 32, 3)), train=False)
  params = variables['params']
  return TrainState(
      step=jnp.array(0, jnp.int32), params=params, batch_stats=variables['batch_stats'],
      opt_state=optimizer.init(params),
      # The plateau transform only needs a float dtype from its "params".
      plateau=plateau.init(jnp.zeros((), jnp.float32)),
      early_stopping=optim.EarlyStoppingState.create(), rng=state_key,
      image_mean=jnp.asarray(image_mean, jnp.float32),
      image_std=jnp.asarray(image_std, jnp.float32))


def create_train_state(config, model, optimizer, plateau, image_stats, mesh) -> TrainState:
  """A fresh state, created directly on the mesh (replicated)."""
  init = functools.partial(init_train_state, model=model, optimizer=optimizer, plateau=plateau)
  return jax.jit(init, out_shardings=sharding.replicated(mesh))(
      jax.random.PRNGKey(config.seed), image_mean=image_stats[0], image_std=image_stats[1])


def abstract_train_state(model, optimizer, plateau, mesh) -> TrainState:
  """The state's shapes, dtypes and shardings, to restore a checkpoint into."""
  shapes = jax.eval_shape(functools.partial(
      init_train_state, model=model, optimizer=optimizer, plateau=plateau),
      jax.random.PRNGKey(0), image_mean=np.zeros(3, np.float32),
      image_std=np.ones(3, np.float32))
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding.replicated(mesh)), shapes)


def compile_train_fn(config, model, optimizer, mesh, num_train: int, steps_per_epoch: int):
  """The jitted `(state, images, labels, stop_step) -> (state, metric sums)`."""
  step_fn = functools.partial(train_step, model=model, optimizer=optimizer,
                              augment_config=config.augment, hem_config=config.hem)
  per_device = functools.partial(
      train_steps, num_train=num_train, batch_size=config.batch_size,
      steps_per_epoch=steps_per_epoch, step_fn=step_fn)
  mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS), P()),
                         out_specs=(P(), P()))
  # Donating the state lets XLA update parameters and optimiser state in place.
  return jax.jit(mapped, donate_argnums=0)


def compile_eval_fn(config, model, mesh, num_classes: int):
  """The jitted `(state, images, labels, mask) -> sums` over a whole split."""
  per_device = functools.partial(
      eval_step, model=model, local_batch_size=config.eval_batch_size // mesh.size,
      num_classes=num_classes)
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


def restore_or_keep(checkpoints: Checkpoints, state: TrainState) -> TrainState:
  """The latest checkpoint in the workdir if there is one, else `state`."""
  step = checkpoints.latest_step()
  if step is None:
    return state
  log.info('Resuming from the checkpoint at step %d in %s.', step, checkpoints.directory)
  return checkpoints.restore(state, step)


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the final state."""
  # 1. Config, workdir, mesh.
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  metrics.save_config(config, workdir)
  mesh = sharding.create_mesh()
  check_divisibility(config, mesh.size)

  # 2. Data, on the mesh for the whole run.
  dataset, host_splits = load_host_splits(config)
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
  eval_every = optim.epochs_to_steps(config.eval_every_epochs, steps_per_epoch)

  # 3. Model, optimiser, state. The resume order: build a fresh state (its
  # structure and shardings), then overwrite it from the latest checkpoint:
  # parameters, optimiser, plateau and early-stopping state, step and RNG.
  # The data order and augmentation derive from (rng, step), so they resume too.
  model = create_model(config, splits.num_classes)
  schedule = optim.create_schedule(config, steps_per_epoch)
  optimizer = optim.create_optimizer(config, schedule)
  plateau = optim.create_plateau(config)
  state = create_train_state(config, model, optimizer, plateau, image_stats, mesh)
  checkpoints = Checkpoints(workdir, config.checkpoint.keep_latest)
  state = restore_or_keep(checkpoints, state)

  # 4. Compiled functions: each compiled once for the whole run.
  train_fn = compile_train_fn(config, model, optimizer, mesh, splits.num_train, steps_per_epoch)
  eval_fn = compile_eval_fn(config, model, mesh, splits.num_classes)
  monitor_fn = compile_monitor_fn(config, plateau)
  monitored_split = 'val' if 'val' in splits.eval_sets else 'test'
  metrics_log = metrics.MetricsLog(workdir)

  # 5. Train, evaluating every `eval_every` steps and at the end.
  step = int(state.step)
  patience = config.early_stopping.patience if config.early_stopping.enabled else np.inf
  train_totals, train_seconds, first_call = None, 0.0, True
  progress = None
  try:
    while step < total_steps:
      if state.early_stopping.should_stop(patience):
        log.info('Early stopping at step %d: no improvement in %d evaluations.', step,
                     patience)
        break
      epoch_start = step // steps_per_epoch * steps_per_epoch
      if progress is None:
        progress = tqdm.tqdm(total=steps_per_epoch, initial=step - epoch_start, leave=False,
                             desc=f'epoch {step // steps_per_epoch + 1}', unit='step')
      next_eval = (step // eval_every + 1) * eval_every
      stop_step = min(step + config.steps_per_call, next_eval, epoch_start + steps_per_epoch,
                      total_steps)
      start_time = time.perf_counter()
      state, totals = train_fn(state, splits.train_images, splits.train_labels,
                               jnp.asarray(stop_step, jnp.int32))
      totals = jax.device_get(totals)
      seconds = time.perf_counter() - start_time
      if not np.isfinite(totals['loss_sum']):
        raise UserError(
            f'the training loss became {totals["loss_sum"]} between steps {step} and '
            f'{stop_step}; stopped without saving, so the last good checkpoint '
            f'(step {checkpoints.latest_step()}) is kept in {checkpoints.directory}. '
            'Try a lower config.optimizer.learning_rate or a warm-up.')
      # The first call includes compilation; leave it out of the throughput.
      if not first_call:
        train_seconds += seconds
      train_totals = totals if train_totals is None else _add_totals(train_totals, totals)
      first_call = False
      done = stop_step - step
      step = stop_step
      learning_rate = float(schedule(step - 1) * state.plateau.scale)
      progress.update(done)
      progress.set_postfix(loss=f'{totals["loss_sum"] / totals["count"]:.3f}',
                           acc=f'{totals["correct"] / totals["count"]:.3f}',
                           lr=f'{learning_rate:.3g}',
                           img_s=f'{totals["count"] / seconds:.0f}')
      if step % steps_per_epoch == 0 or step == total_steps:
        progress.close()
        progress = None
      if step % eval_every and step != total_steps:
        continue

      # Evaluate, feed the monitors, log, checkpoint.
      results = {name: summarize_eval(eval_fn(state, *arrays))
                 for name, arrays in splits.eval_sets.items()}
      monitored = optim.monitor_loss(results[monitored_split], config.monitor)
      # Only scheduled evaluations count towards plateau and early stopping, so
      # stopping early (max_steps) and resuming changes nothing.
      if step % eval_every == 0:
        state = monitor_fn(state, jnp.asarray(monitored, jnp.float32))
      record = {'step': step, 'epoch': step / steps_per_epoch,
                'train_loss': train_totals['loss_sum'] / train_totals['count'],
                'train_accuracy': train_totals['correct'] / train_totals['count'],
                'learning_rate': learning_rate,
                # None when the interval held only the compiling first call.
                'images_per_sec': (train_totals['count'] / train_seconds if train_seconds
                                   else None)}
      if config.hem.mode != 'off':
        steps_taken = train_totals['count'] / config.batch_size
        record['hem_ess'] = train_totals['hem_ess_sum'] / steps_taken
        record['hem_weight_max'] = train_totals['hem_weight_max']
      for name, result in results.items():
        record.update({f'{name}_{k}': v for k, v in result.items() if k != 'per_class_accuracy'})
      metrics_log.write(_to_python(record))
      log.info('step %d: %s', step, ', '.join(
          f'{k}={v:.4g}' for k, v in record.items() if isinstance(v, float)))
      checkpoints.save(state, score=-monitored)
      train_totals, train_seconds = None, 0.0
  finally:
    if progress is not None:
      progress.close()
    checkpoints.wait()
    checkpoints.close()
    metrics_log.close()
  return state


def _add_totals(a, b):
  return {k: np.maximum(a[k], b[k]) if k.endswith('_max') else a[k] + b[k] for k in a}


def _to_python(record):
  return {k: v.item() if isinstance(v, np.generic) else v for k, v in record.items()}
