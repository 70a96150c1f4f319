"""RandAugment (Cubuk et al., 2020) as pure array functions on uint8 images.

Each example applies `num_ops` operations drawn uniformly, with replacement, from the fourteen of
the paper, all at one global magnitude in [0, 10]. As in `crop_flip.crop_flip_cutout`, each
example has its own PRNG key, so its result depends only on its key and not on how the batch is
split across devices.

The single-image operations below follow Pillow's `ImageOps` and `ImageEnhance`, the usual
reference for these operations:

* `equalize`, `posterize` and `solarize` match Pillow exactly, and so do the images that `color`,
  `contrast`, `brightness` and `sharpness` blend with (greyscale, mean grey, black, smoothed).
* `autocontrast` floors the exact stretch with integer arithmetic, and the enhancement blends
  round to nearest where Pillow truncates, so those can differ from Pillow by one level.
* The geometric operations map each output pixel back to the input about the image centre and
  take the nearest pixel (no interpolation, so rotating by 0 or translating by whole pixels
  reproduces pixels exactly); pixels that come from outside the image are filled with `FILL`.

Magnitudes follow the paper's ranges: at magnitude m, rotation by 30 * m / 10 degrees, shear by
0.3 * m / 10, translation by m / 10 of 150/331 of the side (the paper's 150 pixels at 331, rounded
to whole pixels), enhancement factors 1 +- 0.9 * m / 10, posterize to 8 - round(4 * m / 10) bits
and solarize above 256 * (1 - m / 10). The signed operations take either sign with probability
1/2. At magnitude 0 every operation except `autocontrast` and `equalize` is the identity.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

# Grey for the pixels that rotation, shear and translation bring in from outside the image, as in
# TensorFlow's reference AutoAugment code; it is close to the CIFAR mean, so it adds no strong edge.
FILL = 128

OP_NAMES = ('identity', 'autocontrast', 'equalize', 'rotate', 'solarize', 'color', 'posterize',
            'contrast', 'brightness', 'sharpness', 'shear_x', 'shear_y', 'translate_x',
            'translate_y')


def _to_uint8(values):
  """Rounds to nearest and saturates, the cast every blend ends with."""
  return jnp.clip(jnp.round(values), 0, 255).astype(jnp.uint8)


def _blend(degenerate, image, factor):
  """degenerate + factor * (image - degenerate), as Pillow's `ImageEnhance` (factor 1 = image)."""
  degenerate = degenerate.astype(jnp.float32)
  return _to_uint8(degenerate + factor * (image.astype(jnp.float32) - degenerate))


def _greyscale(image):
  """Pillow's RGB -> L conversion, int32 [H, W]: ITU-R 601 luma in 16-bit fixed point."""
  rgb = image.astype(jnp.int32)
  return (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16


def autocontrast(image):
  """Stretches each channel linearly so its darkest pixel becomes 0 and its brightest 255.

  Args:
    image: uint8 [H, W, C].

  Returns:
    uint8 [H, W, C]; constant channels are left unchanged.
  """
  x = image.astype(jnp.int32)
  lo = jnp.min(x, axis=(0, 1))
  span = jnp.max(x, axis=(0, 1)) - lo
  stretched = (x - lo) * 255 // jnp.maximum(span, 1)
  return jnp.where(span > 0, stretched, x).astype(jnp.uint8)


def _equalize_channel(channel):
  """Pillow's histogram equalisation of one uint8 [H, W] channel."""
  x = channel.astype(jnp.int32)
  hist = jnp.bincount(x.ravel(), length=256)
  # Pillow spreads the pixels below the brightest level over 255 steps, leaving that level's
  # pixels out of the count.
  step = (x.size - hist[jnp.max(x)]) // 255
  below = jnp.cumsum(hist) - hist
  lut = jnp.minimum((below + step // 2) // jnp.maximum(step, 1), 255)
  return jnp.where(step > 0, lut[x], x).astype(jnp.uint8)


def equalize(image):
  """Equalises the histogram of each channel, as Pillow's `ImageOps.equalize`.

  Args:
    image: uint8 [H, W, C].

  Returns:
    uint8 [H, W, C].
  """
  return jax.vmap(_equalize_channel, in_axes=2, out_axes=2)(image)


def posterize(image, bits):
  """Keeps the top `bits` bits of every pixel (0 to 8) and zeroes the rest."""
  mask = (0xFF << (8 - jnp.asarray(bits, jnp.int32))) & 0xFF
  return (image.astype(jnp.int32) & mask).astype(jnp.uint8)


def solarize(image, threshold):
  """Inverts (255 - x) every pixel x >= threshold; 256 leaves the image unchanged."""
  x = image.astype(jnp.int32)
  return jnp.where(x >= threshold, 255 - x, x).astype(jnp.uint8)


def color(image, factor):
  """Blends an RGB image with its greyscale version (0 = grey, 1 = image, > 1 = more saturated)."""
  return _blend(_greyscale(image)[..., None], image, factor)


def contrast(image, factor):
  """Blends an RGB image with its mean grey level (0 = flat grey, 1 = image)."""
  grey = _greyscale(image)
  # Pillow rounds the mean half up: int(mean + 0.5), done here in integers.
  mean = (2 * jnp.sum(grey) + grey.size) // (2 * grey.size)
  return _blend(mean, image, factor)


def brightness(image, factor):
  """Scales every pixel by `factor` (0 = black, 1 = image)."""
  return _blend(jnp.zeros((), jnp.float32), image, factor)


def sharpness(image, factor):
  """Blends an image with its smoothed version (0 = smoothed, 1 = image, > 1 = sharpened).

  The smoothing is Pillow's SMOOTH filter, the 3 x 3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13;
  as in Pillow, the one-pixel border is not filtered, so it keeps its values at every factor.
  """
  height, width = image.shape[:2]
  x = image.astype(jnp.int32)
  padded = jnp.pad(x, ((1, 1), (1, 1), (0, 0)))
  total = 4 * x + sum(padded[dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3))
  # The sums are integers and 13 is odd, so rounding half up is exact rounding.
  smooth = (total + 6) // 13
  rows = jnp.arange(height)[:, None, None]
  cols = jnp.arange(width)[None, :, None]
  interior = (rows > 0) & (rows < height - 1) & (cols > 0) & (cols < width - 1)
  return _blend(jnp.where(interior, smooth, x), image, factor)


def _centred_grid(height: int, width: int):
  """Pixel-centre coordinates (y, x) relative to the image centre, each float32 [H, W]."""
  y = jnp.arange(height, dtype=jnp.float32) - (height - 1) / 2
  x = jnp.arange(width, dtype=jnp.float32) - (width - 1) / 2
  return jnp.meshgrid(y, x, indexing='ij')


def _resample(image, src_y, src_x):
  """Output pixel (i, j) takes the input pixel nearest the centred point (src_y, src_x)[i, j]."""
  height, width = image.shape[:2]
  row = jnp.floor(src_y + (height - 1) / 2 + 0.5).astype(jnp.int32)
  col = jnp.floor(src_x + (width - 1) / 2 + 0.5).astype(jnp.int32)
  inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
  pixels = image[jnp.clip(row, 0, height - 1), jnp.clip(col, 0, width - 1)]
  return jnp.where(inside[..., None], pixels, jnp.asarray(FILL, image.dtype))


def rotate(image, degrees):
  """Rotates counter-clockwise by `degrees` about the image centre (90 = `np.rot90`)."""
  y, x = _centred_grid(*image.shape[:2])
  theta = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  # The inverse rotation, in coordinates whose y axis points down.
  return _resample(image, sin * x + cos * y, cos * x - sin * y)


def shear_x(image, factor):
  """Shears horizontally: output (y, x) shows input (y, x + factor * y), centred coordinates."""
  y, x = _centred_grid(*image.shape[:2])
  return _resample(image, y, x + factor * y)


def shear_y(image, factor):
  """Shears vertically: output (y, x) shows input (y + factor * x, x), centred coordinates."""
  y, x = _centred_grid(*image.shape[:2])
  return _resample(image, y + factor * x, x)


def translate_x(image, pixels):
  """Moves the content right by `pixels` (left if negative)."""
  y, x = _centred_grid(*image.shape[:2])
  return _resample(image, y, x - pixels)


def translate_y(image, pixels):
  """Moves the content down by `pixels` (up if negative)."""
  y, x = _centred_grid(*image.shape[:2])
  return _resample(image, y - pixels, x)


def _branches(magnitude: float, height: int, width: int):
  """The operations of `OP_NAMES` at `magnitude`, each a function of (image, sign = +-1.0)."""
  level = magnitude / 10
  enhance = 0.9 * level
  max_shift_x = round(150 / 331 * width * level)
  max_shift_y = round(150 / 331 * height * level)
  ops = {
      'identity': lambda image, sign: image,
      'autocontrast': lambda image, sign: autocontrast(image),
      'equalize': lambda image, sign: equalize(image),
      'rotate': lambda image, sign: rotate(image, sign * 30 * level),
      'solarize': lambda image, sign: solarize(image, 256 * (1 - level)),
      'color': lambda image, sign: color(image, 1 + sign * enhance),
      'posterize': lambda image, sign: posterize(image, 8 - round(4 * level)),
      'contrast': lambda image, sign: contrast(image, 1 + sign * enhance),
      'brightness': lambda image, sign: brightness(image, 1 + sign * enhance),
      'sharpness': lambda image, sign: sharpness(image, 1 + sign * enhance),
      'shear_x': lambda image, sign: shear_x(image, sign * 0.3 * level),
      'shear_y': lambda image, sign: shear_y(image, sign * 0.3 * level),
      'translate_x': lambda image, sign: translate_x(image, sign * max_shift_x),
      'translate_y': lambda image, sign: translate_y(image, sign * max_shift_y),
  }
  return tuple(ops[name] for name in OP_NAMES)


def _apply_random_op(branches, image, key):
  """One operation drawn uniformly from `branches`, with a random sign."""
  choice_key, sign_key = jax.random.split(key)
  index = jax.random.randint(choice_key, (), 0, len(branches))
  sign = jnp.where(jax.random.bernoulli(sign_key), 1.0, -1.0)
  return lax.switch(index, branches, image, sign), None


def randaugment(keys, images, *, num_ops: int, magnitude: float):
  """Applies `num_ops` random operations at `magnitude` to each image with its own key.

  Under `vmap` the per-example `lax.switch` computes every operation and selects one, which costs
  fourteen operations per step; on 32 x 32 images that is cheap next to the model.

  Args:
    keys: Per-example PRNG keys, typed [B] (from `jax.random.key`) or raw uint32 [B, 2].
    images: uint8 [B, H, W, 3].
    num_ops: Operations applied in sequence to each image (the paper's N), >= 0.
    magnitude: Strength of every operation (the paper's M), in [0, 10].

  Returns:
    The augmented images, uint8 [B, H, W, 3].
  """
  if num_ops < 0:
    raise ValueError(f'num_ops must be non-negative, got {num_ops}')
  if not 0 <= magnitude <= 10:
    raise ValueError(f'magnitude must be in [0, 10], got {magnitude}')
  if images.dtype != jnp.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'expected uint8 [B, H, W, 3] images, got {images.dtype} {images.shape}')
  if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    keys = jax.random.wrap_key_data(keys)
  step = functools.partial(_apply_random_op, _branches(magnitude, *images.shape[1:3]))

  def one(key, image):
    # A scan rather than a Python loop traces the fourteen branches once, whatever `num_ops`.
    return lax.scan(step, image, jax.random.split(key, num_ops))[0]

  return jax.vmap(one)(keys, images)
