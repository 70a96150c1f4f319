"""Random crop, horizontal flip and cutout of uint8 images, each example with its own key.

Runs on device inside the jitted training step. An example's augmentation depends only on its
key, not on how the batch is split across devices.
"""

import jax
import jax.numpy as jnp

from cifar_jax import rng

PADDING_MODES = {'zeros': 'constant', 'reflect': 'reflect'}  # Config name -> `jnp.pad` mode.


def crop_flip_cutout(keys, images, *, crop_padding: int, flip: bool, cutout_size: int,
                     padding_mode: str = 'zeros', flips=None):
  """Randomly crops, flips and cuts out each image with its own key.

  Args:
    keys: Per-example PRNG keys, typed [B] (from `jax.random.key`) or raw uint32 [B, 2].
    images: uint8 [B, H, W, C].
    crop_padding: Pad each side with this many pixels, then crop a random H x W window
      (0 = no crop).
    flip: Whether to mirror horizontally with probability 1/2.
    padding_mode: 'zeros', or 'reflect' (the border mirrored without repeating the edge).
    flips: With `flip`: bool [B], which images to mirror, instead of random draws.
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

  def one(key, image, flipped):
    # Each draw has its own named stream, so switching one augmentation off leaves the others'
    # draws as they were.
    crop_key, flip_key, cutout_key = (rng.stream(key, name) for name in ('crop', 'flip', 'cutout'))
    if crop_padding:
      p = crop_padding
      padded = jnp.pad(image, ((p, p), (p, p), (0, 0)), mode=PADDING_MODES[padding_mode])
      dy, dx = jax.random.randint(crop_key, (2,), 0, 2 * p + 1)
      image = jax.lax.dynamic_slice(padded, (dy, dx, 0), (height, width, channels))
    if flip:
      if flipped is None:
        flipped = jax.random.bernoulli(flip_key)
      image = jnp.where(flipped, image[:, ::-1], image)
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

  return jax.vmap(one)(keys, images, flips)
