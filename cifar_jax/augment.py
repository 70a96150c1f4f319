"""Image augmentation and normalisation as pure array functions.

The augmentations run on device inside the jitted training step. Each example gets its own PRNG
key, so an example's augmentation depends only on its key and not on how the batch is split
across devices.
"""

import jax
import jax.numpy as jnp
import numpy as np

# Images per chunk in `channel_stats`: 1024 CIFAR images are 25 MB as float64.
_STATS_CHUNK = 1024


def augment(keys, images, *, crop_padding: int, flip: bool, cutout_size: int):
  """Randomly crops, flips and cuts out each image with its own key.

  Args:
    keys: Per-example PRNG keys, typed [B] (from `jax.random.key`) or raw uint32 [B, 2].
    images: uint8 [B, H, W, C].
    crop_padding: Pad each side with this many zero pixels, then crop a random H x W window
      (0 = no crop).
    flip: Whether to mirror horizontally with probability 1/2.
    cutout_size: Side of a square set to zero, centred uniformly inside the image and clipped at
      its borders (0 = no cutout).

  Returns:
    The augmented images, same shape and dtype as `images`.
  """
  if crop_padding < 0 or cutout_size < 0:
    raise ValueError(f'crop_padding ({crop_padding}) and cutout_size ({cutout_size}) must be '
                     'non-negative')
  if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    keys = jax.random.wrap_key_data(keys)
  height, width, channels = images.shape[1:]

  def one(key, image):
    # Always split three ways, so switching one augmentation off leaves the others' draws as
    # they were.
    crop_key, flip_key, cutout_key = jax.random.split(key, 3)
    if crop_padding:
      p = crop_padding
      padded = jnp.pad(image, ((p, p), (p, p), (0, 0)))
      dy, dx = jax.random.randint(crop_key, (2,), 0, 2 * p + 1)
      image = jax.lax.dynamic_slice(padded, (dy, dx, 0), (height, width, channels))
    if flip:
      image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)
    if cutout_size:
      # The square is filled with 0 (black), the value the crop padding uses, which keeps this
      # independent of the dataset mean. The original Cutout masks after normalisation, i.e.
      # with the mean colour.
      cy, cx = jax.random.randint(cutout_key, (2,), 0, jnp.array([height, width]))
      top, left = cy - cutout_size // 2, cx - cutout_size // 2
      rows = jnp.arange(height)[:, None]
      cols = jnp.arange(width)[None, :]
      inside = ((rows >= top) & (rows < top + cutout_size)
                & (cols >= left) & (cols < left + cutout_size))
      image = jnp.where(inside[:, :, None], jnp.zeros((), image.dtype), image)
    return image

  return jax.vmap(one)(keys, images)


def normalize(images, mean, std, dtype=jnp.float32):
  """Maps [B, H, W, C] images in [0, 255] units (uint8, or float after mixup) to standard units.

  Args:
    images: uint8 or float [B, H, W, C] in [0, 255] units.
    mean: Per-channel mean [C], in [0, 1] units.
    std: Per-channel standard deviation [C], in [0, 1] units.
    dtype: Output dtype; the arithmetic is done in float32 first.

  Returns:
    (images / 255 - mean) / std in `dtype`.
  """
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return ((images.astype(jnp.float32) / 255.0 - mean) / std).astype(dtype)


def resize(images, size: int):
  """Bilinearly resizes float [B, H, W, C] images to [B, size, size, C] (a no-op at that size).

  Feeds 32x32 CIFAR images to a model pretrained at a higher resolution, such as 224 or 384.
  """
  if images.shape[1:3] == (size, size):
    return images
  return jax.image.resize(images, (images.shape[0], size, size, images.shape[3]), 'bilinear')


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and (population) standard deviation of uint8 NHWC images.

  Sums are accumulated in float64 over chunks of images, so a whole training set is never copied
  to floating point at once. The sums of uint8 values and of their squares are integers that
  float64 holds exactly for up to ~10^11 pixels per channel.

  Args:
    images: uint8 [N, H, W, C] on the host, N > 0.

  Returns:
    (mean, std), each float32 [C] in [0, 1] units.
  """
  if images.ndim != 4 or len(images) == 0:
    raise ValueError(f'expected a non-empty [N, H, W, C] array, got shape {images.shape}')
  channels = images.shape[-1]
  total = np.zeros(channels, np.float64)
  total_sq = np.zeros(channels, np.float64)
  for start in range(0, len(images), _STATS_CHUNK):
    chunk = images[start:start + _STATS_CHUNK].reshape(-1, channels).astype(np.float64)
    total += chunk.sum(axis=0)
    total_sq += np.square(chunk).sum(axis=0)
  count = images.size // channels
  mean = total / count
  var = np.maximum(total_sq / count - np.square(mean), 0.0)
  return (mean / 255).astype(np.float32), (np.sqrt(var) / 255).astype(np.float32)
