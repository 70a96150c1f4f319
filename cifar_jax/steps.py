"""The compiled code: the train state and the per-device train and eval steps.

The steps are written once for one device in the pmap style: each sees its
share of the global batch and talks to the others through collectives over the
named axis `data` (`lax.pmean` of gradients, BatchNorm statistics and metrics).
`train.py` maps them over every device of a 1-D mesh with `jax.shard_map`
under `jax.jit`, so the same code trains on one CPU, eight GPUs or a TPU slice.

The dataset lives on the devices, split by rows. One call of the compiled
train function runs several steps in a loop on the device: it draws the
epoch's permutation, gathers each batch, augments it and updates the state, so
the host does no per-step work and sends nothing per step.
"""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax import lax

from cifar_jax import augment, hem, mixing, optim, randaugment
from cifar_jax.sharding import DATA_AXIS


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs, saved and restored as one pytree."""
  step: jax.Array  # Train steps taken; also positions the data order.
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  ema_params: Any  # Moving average of `params` when `ema_decay` > 0, else {}.
  plateau: Any  # optax's ReduceLROnPlateauState; `.scale` multiplies the rate.
  early_stopping: optim.EarlyStoppingState
  rng: jax.Array  # Root key: data order and augmentation derive from it and the step.
  # Per-channel statistics of the training split, in [0, 1] units, that inputs
  # are normalised with; kept here so evaluation needs no training data.
  image_mean: jax.Array
  image_std: jax.Array


def init_train_state(rng, model, optimizer, plateau, image_mean, image_std,
                     ema: bool = False, input_size: int = 32) -> TrainState:
  """A fresh train state (pure; jit it with output shardings to create it on the mesh)."""
  init_key, state_key = jax.random.split(rng)
  variables = model.init(init_key, jnp.zeros((1, input_size, input_size, 3)), train=False)
  params = variables['params']
  return TrainState(
      # Models without BatchNorm (ViT) have no batch statistics.
      step=jnp.array(0, jnp.int32), params=params, batch_stats=variables.get('batch_stats', {}),
      opt_state=optimizer.init(params), ema_params=params if ema else {},
      # The plateau transform only needs a float dtype from its "params".
      plateau=plateau.init(jnp.zeros((), jnp.float32)),
      early_stopping=optim.EarlyStoppingState.create(), rng=state_key,
      image_mean=jnp.asarray(image_mean, jnp.float32),
      image_std=jnp.asarray(image_std, jnp.float32))


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
               augment_config, hem_config, label_smoothing: float = 0.0, sam_rho: float = 0.0,
               ema_decay: float = 0.0, input_size: int = 32):
  """One optimiser step on this device's share of a global batch (per-device code).

  The augmented 32x32 images are resized to `input_size` for the model. Returns the new state
  and this step's metrics, summed over the global batch.
  """
  a = augment_config
  augment_key, policy_key, mix_key, dropout_key = jax.random.split(step_key, 4)
  images = augment.augment(example_keys(augment_key, images.shape[0]), images,
                           crop_padding=a.crop_padding, flip=a.flip, cutout_size=a.cutout_size)
  if a.randaugment_ops:
    images = randaugment.randaugment(example_keys(policy_key, images.shape[0]), images,
                                     num_ops=a.randaugment_ops, magnitude=a.randaugment_magnitude)
  # Mixing, dropout and stochastic depth draw for the local batch, so unlike the
  # rest they depend on how the batch is split across devices.
  device = lax.axis_index(DATA_AXIS)
  num_classes = model.num_classes
  images, targets = mixing.mix(
      jax.random.fold_in(mix_key, device), images, labels, mixup_alpha=a.mixup_alpha,
      cutmix_alpha=a.cutmix_alpha, switch_prob=a.mix_switch_prob, num_classes=num_classes)
  targets = optax.smooth_labels(targets, label_smoothing)
  inputs = augment.resize(augment.normalize(images, state.image_mean, state.image_std),
                         input_size)
  dropout_key = jax.random.fold_in(dropout_key, device)

  def loss_fn(params):
    logits, new_variables = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, inputs, train=True,
        mutable=['batch_stats'], rngs={'dropout': dropout_key})
    losses = optax.softmax_cross_entropy(logits, targets)
    weights, hem_stats = hem.example_weights(
        losses, mode=hem_config.mode, fraction=hem_config.fraction, boost=hem_config.boost,
        temperature=hem_config.temperature, axis_name=DATA_AXIS)
    batch_stats = new_variables.get('batch_stats', {})
    return jnp.mean(weights * losses), (logits, losses, batch_stats, hem_stats)

  def global_grads(params):
    # The parameters are replicated (invariant over the data axis), and the
    # gradient with respect to an invariant value is implicitly summed over
    # devices. Differentiating a device-varying view instead gives each device
    # the gradient of its own share; every device holds an equal share, so
    # their mean is the gradient of the global batch's mean loss.
    local_params = lax.pcast(params, DATA_AXIS, to='varying')
    grads, aux = jax.grad(loss_fn, has_aux=True)(local_params)
    return lax.pmean(grads, DATA_AXIS), aux

  grads, (logits, losses, batch_stats, hem_stats) = global_grads(state.params)
  if sam_rho:
    # SAM: step to the (first-order) worst point within `sam_rho` of the
    # parameters and descend with the gradient found there. The ascent uses the
    # global gradient, so it does not depend on the device count; BatchNorm
    # statistics and metrics come from the first pass.
    scale = sam_rho / (optax.tree.norm(grads) + 1e-12)
    grads, _ = global_grads(jax.tree.map(lambda p, g: p + scale * g, state.params, grads))
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  updates = jax.tree.map(lambda u: u * state.plateau.scale, updates)
  params = optax.apply_updates(state.params, updates)
  ema_params = (optax.incremental_update(params, state.ema_params, step_size=1 - ema_decay)
                if ema_decay else state.ema_params)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, ema_params=ema_params)
  step_metrics = {
      'loss_sum': lax.psum(jnp.sum(losses), DATA_AXIS),
      'correct': lax.psum(jnp.sum(jnp.argmax(logits, -1) == labels), DATA_AXIS),
      'count': lax.psum(labels.shape[0], DATA_AXIS),
      'hem_ess_sum': hem_stats['hem_ess'],
      'hem_weight_max': hem_stats['hem_weight_max'],
  }
  return new_state, step_metrics


def train_steps(state: TrainState, images, labels, stop_step, *, num_train: int,
                batch_size: int, steps_per_epoch: int, step_fn, device_loop: bool = True):
  """Runs train steps until the state reaches `stop_step` (per-device code).

  `stop_step` is an argument, not a constant, so calls of any length share one
  compilation. The caller never lets a call cross an epoch boundary, so one
  permutation of the training split serves the whole call. Metrics are summed
  over the steps taken (the maxima maximised).

  Without `device_loop`, a call takes exactly one step and `stop_step` must be
  the next step: XLA:CPU runs convolutions inside loop bodies many times
  slower than outside (jax-ml/jax#12868), so CPU runs take one step per call.
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
  if not device_loop:
    return body((state, zeros))
  return lax.while_loop(lambda c: c[0].step < stop_step, body, (state, zeros))


def predict(state: TrainState, images, *, model, flip_tta: bool = False, input_size: int = 32):
  """Logits of uint8 images; with `flip_tta`, the mean of the image's and its mirror's."""
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  inputs = augment.resize(augment.normalize(images, state.image_mean, state.image_std),
                          input_size)
  logits = model.apply(variables, inputs, train=False)
  if flip_tta:
    logits = (logits + model.apply(variables, inputs[:, :, ::-1], train=False)) / 2
  return logits


def eval_step(state: TrainState, images, labels, mask, *, model, local_batch_size: int,
              num_classes: int, flip_tta: bool = False, input_size: int = 32):
  """Sums of loss, top-1/top-5 hits and per-class hits over a split (per-device code).

  Each device evaluates its own rows in batches; the sums are added across devices.
  """

  def batch_sums(batch):
    x, y, m = batch
    logits = predict(state, x, model=model, flip_tta=flip_tta, input_size=input_size)
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
