"""The compiled train step, written once for one device in the pmap style.

Each device sees its share of the global batch and talks to the others through collectives
over the named axis `data` (`lax.pmean` of gradients, BatchNorm statistics and metrics).
`setup.py` maps the step over every device of a 1-D mesh with `jax.shard_map` under
`jax.jit`, so the same code trains on one CPU, eight GPUs or a TPU slice.

The dataset lives on the devices, split by rows. One call of the compiled train function runs
several steps in a loop on the device: it draws the epoch's permutation, gathers each batch,
and takes the step's two halves, the input half (`cifar_jax.augment.inputs`: augmentation,
targets, normalisation) and the update half (`update.py`: loss, gradient, optimiser). The host
does no per-step work and sends nothing per step.
"""
import jax
import jax.numpy as jnp
from jax import lax

from cifar_jax import rng
from cifar_jax.augment import inputs as inputs_lib
from cifar_jax.errors import UserError
from cifar_jax.sharding import DATA_AXIS
from cifar_jax.training import update as update_lib


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


def epoch_permutation(run_key, epoch, num_train: int):
  """The order of the training rows in epoch `epoch`: a permutation drawn from the run's key."""
  return jax.random.permutation(
      jax.random.fold_in(rng.stream(run_key, 'data_order'), epoch), num_train)


def key_for_step(run_key, step):
  """The key of train step `step`: the run's 'steps' stream with the step number folded in, so a
  resumed run draws what an uninterrupted one does."""
  return jax.random.fold_in(rng.stream(run_key, 'steps'), step)


def steps_per_epoch(batch_size: int, num_train: int) -> int:
  """Whole batches of the training split (the last partial one is dropped).

  Raises:
    UserError: if `batch_size` is larger than the split.
  """
  if batch_size > num_train:
    raise UserError(f'config.batch_size={batch_size} is larger than the {num_train} training '
                    'examples.')
  return num_train // batch_size


def batch_indices(permutation, step, *, batch_size: int, steps_per_epoch: int):
  """Global row numbers of the batch of train step `step`: its slice of the epoch's permutation.

  The rows left over after the epoch's last whole batch are skipped this epoch.
  """
  position = (step % steps_per_epoch) * batch_size
  return lax.dynamic_slice(permutation, (position,), (batch_size,))


def train_step(state, images, labels, step_key, example_ids, epoch, *, model, optimizer,
               augment_config, hem_config, label_smoothing: float = 0.0, sam_rho: float = 0.0,
               ema_decay: float = 0.0, input_size: int = 32, loss_reduction: str = 'mean',
               lookahead=None, total_steps: int = 0, loss_scaling=None):
  """One train step on this device's share of a global batch: the input half, then the update.

  `example_ids` are the training rows of this share and `epoch` the step's epoch. Returns the
  new state and this step's metrics, summed over the global batch.
  """
  inputs, targets = inputs_lib.train_inputs(
      step_key, images, labels, augment_config=augment_config, label_smoothing=label_smoothing,
      num_classes=model.num_classes, image_mean=state.image_mean, image_std=state.image_std,
      input_size=input_size, run_key=state.rng, example_ids=example_ids, epoch=epoch)
  return update_lib.update(state, inputs, targets, labels, step_key, model=model,
                           optimizer=optimizer, hem_config=hem_config, sam_rho=sam_rho,
                           ema_decay=ema_decay, loss_reduction=loss_reduction,
                           lookahead=lookahead, total_steps=total_steps,
                           loss_scaling=loss_scaling)


def train_steps(state, images, labels, stop_step, *, num_train: int,
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
  epoch = state.step // steps_per_epoch
  permutation = epoch_permutation(state.rng, epoch, num_train)
  local_batch_size = batch_size // lax.axis_size(DATA_AXIS)

  def body(carry):
    state, totals = carry
    indices = batch_indices(permutation, state.step, batch_size=batch_size,
                            steps_per_epoch=steps_per_epoch)
    batch_images, batch_labels = gather_batch(images, labels, indices)
    assert batch_images.shape[0] == local_batch_size
    example_ids = lax.dynamic_slice(indices, (lax.axis_index(DATA_AXIS) * local_batch_size,),
                                    (local_batch_size,))
    state, step_metrics = step_fn(state, batch_images, batch_labels,
                                  key_for_step(state.rng, state.step), example_ids, epoch)
    totals = {k: (jnp.maximum if k.endswith('_max') else jnp.add)(totals[k], v)
              for k, v in step_metrics.items()}
    return state, totals

  zeros = {'loss_sum': 0.0, 'correct': 0, 'count': 0, 'hem_ess_sum': 0.0, 'hem_weight_max': 0.0,
           'skipped_steps': 0}
  zeros = jax.tree.map(jnp.asarray, zeros)
  if not device_loop:
    return body((state, zeros))
  return lax.while_loop(lambda c: c[0].step < stop_step, body, (state, zeros))
