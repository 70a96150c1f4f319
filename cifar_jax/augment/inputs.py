"""The input half of the train step: a batch of uint8 images -> the model's inputs and targets.

Per-device code, inside the compiled step. In order: crop and flip; colour jitter; cutout;
RandAugment; mixup or CutMix; label smoothing; normalisation; resizing to the model's input
size. Each piece draws from its own named stream of the step's key (`cifar_jax.rng`). A new
augmentation is a function in its own module, a call here and its fields in `config.augment`.
"""
import jax
import jax.numpy as jnp
import optax
from jax import lax

from cifar_jax import rng
from cifar_jax.augment import color_jitter, crop_flip, mixing, normalize, randaugment
from cifar_jax.errors import UserError, check_choice
from cifar_jax.sharding import DATA_AXIS


def check_config(augment_config, label_smoothing: float) -> None:
  """Raises a UserError naming the first field of `config.augment` (or `label_smoothing`) that
  no augmentation can use."""
  a = augment_config
  for field in ('crop_padding', 'cutout_size', 'randaugment_ops', 'mixup_alpha', 'cutmix_alpha'):
    if a[field] < 0:
      raise UserError(f'config.augment.{field} must be >= 0 (0 is off), got {a[field]}.')
  if not 0 <= a.randaugment_magnitude <= 10:
    raise UserError('config.augment.randaugment_magnitude must be in [0, 10], got '
                    f'{a.randaugment_magnitude}.')
  if not 0 <= a.mix_switch_prob <= 1:
    raise UserError(f'config.augment.mix_switch_prob must be in [0, 1], got {a.mix_switch_prob}.')
  for field in color_jitter.OP_NAMES:
    if not a.color_jitter[field] >= 0:
      raise UserError(f'config.augment.color_jitter.{field} must be >= 0 (0 is off), got '
                      f'{a.color_jitter[field]}.')
  if a.color_jitter.hue > color_jitter.MAX_HUE:
    raise UserError(f'config.augment.color_jitter.hue must be at most {color_jitter.MAX_HUE} '
                    f'(half the colour wheel), got {a.color_jitter.hue}.')
  check_choice('config.augment.padding_mode', a.padding_mode, crop_flip.PADDING_MODES)
  if a.alternating_flip and not a.flip:
    raise UserError('config.augment.alternating_flip needs config.augment.flip=True.')
  if not 0 <= label_smoothing < 1:
    raise UserError(f'config.label_smoothing must be in [0, 1), got {label_smoothing}.')


def example_keys(key, local_batch_size: int):
  """One PRNG key per example, from its position in the global batch.

  So an example's augmentation depends only on the global batch, not on the number of devices.
  """
  first = lax.axis_index(DATA_AXIS) * local_batch_size
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(first + jnp.arange(local_batch_size))


def alternating_flips(run_key, example_ids, epoch):
  """Which images to mirror this epoch: a fixed random bit per training example (drawn from
  the run's key and the example's row), inverted every odd epoch."""
  base_key = rng.stream(run_key, 'alternating_flip')
  base = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(base_key, i)))(example_ids)
  return base ^ (epoch % 2 == 1)


def train_inputs(step_key, images, labels, *, augment_config, label_smoothing: float,
                 num_classes: int, image_mean, image_std, input_size: int, run_key=None,
                 example_ids=None, epoch=None):
  """This device's share of a training batch, augmented, as (inputs, targets).

  Args:
    step_key: The train step's key; the streams used here are named under it.
    images, labels: uint8 [B, 32, 32, 3] and int32 [B], this device's share of the batch.
    augment_config: `config.augment`.
    label_smoothing: Share of each target spread evenly over all classes.
    num_classes: Length of the target vectors.
    image_mean, image_std: Per-channel statistics in [0, 1] units (the train state's).
    input_size: Side of the model's square inputs.
    run_key, example_ids, epoch: The run's key, the training rows of this share and the
      epoch, for `augment_config.alternating_flip`.

  Returns:
    float32 inputs [B, input_size, input_size, 3] in standard units, and float32 target
    probabilities [B, num_classes].
  """
  a = augment_config
  batch = images.shape[0]
  flips = alternating_flips(run_key, example_ids, epoch) if a.alternating_flip else None
  crop_flip_keys = example_keys(rng.stream(step_key, 'crop_flip'), batch)
  images = crop_flip.crop_flip_cutout(
      crop_flip_keys, images, crop_padding=a.crop_padding, flip=a.flip, cutout_size=0,
      padding_mode=a.padding_mode, flips=flips)
  # Jitter after crop and flip and before cutout, as torchvision pipelines place ColorJitter
  # (on the image) and cutout (on the tensor), so the cutout square stays black. Cutout draws
  # from its own stream of the same keys, so this second call cuts where one call would have.
  images = color_jitter.color_jitter(
      example_keys(rng.stream(step_key, 'color_jitter'), batch), images,
      **{name: a.color_jitter[name] for name in color_jitter.OP_NAMES})
  images = crop_flip.crop_flip_cutout(crop_flip_keys, images, crop_padding=0, flip=False,
                                      cutout_size=a.cutout_size)
  if a.randaugment_ops:
    images = randaugment.randaugment(
        example_keys(rng.stream(step_key, 'randaugment'), batch), images,
        num_ops=a.randaugment_ops, magnitude=a.randaugment_magnitude)
  # Mixing pairs the examples of this device's share, and each device draws its own weight:
  # unlike the rest, it depends on how the batch is split across devices.
  mix_key = jax.random.fold_in(rng.stream(step_key, 'mixing'), lax.axis_index(DATA_AXIS))
  images, targets = mixing.mix(
      mix_key, images, labels, mixup_alpha=a.mixup_alpha, cutmix_alpha=a.cutmix_alpha,
      switch_prob=a.mix_switch_prob, num_classes=num_classes)
  targets = optax.smooth_labels(targets, label_smoothing)
  return normalize.model_inputs(images, image_mean, image_std, input_size), targets
