"""Colour jitter with the semantics of torchvision's `transforms.ColorJitter`, as pure array
functions.

Per image, `ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)` draws a random order of
its four operations (`torch.randperm(4)`) and one factor per operation, uniform in
[max(0, 1 - b), 1 + b], [max(0, 1 - c), 1 + c], [max(0, 1 - s), 1 + s] and [-h, h]; an operation
whose range is 0 is skipped. The operations below follow torchvision's functional tensor ops
(`torchvision/transforms/_functional_tensor.py`) on float images in [0, 1]:

* `adjust_brightness`: blend with black (multiply by the factor), clamp to [0, 1];
* `adjust_contrast`: blend with the mean of the greyscale image, clamp;
* `adjust_saturation`: blend with the greyscale image, clamp;
* `adjust_hue`: RGB -> HSV, add the shift to the hue modulo 1, HSV -> RGB.

Greyscale is torchvision's `rgb_to_grayscale`, 0.2989 R + 0.587 G + 0.114 B. `color_jitter`
takes uint8 images, applies the operations in float32 and rounds the result back to uint8 once
(torchvision's uint8 path truncates after every operation instead, and on PIL images Pillow's
`ImageEnhance` rounds after each; both differ from this by about one level). As elsewhere in
`cifar_jax.augment`, each example has its own key, so its result does not depend on how the
batch is split across devices.
"""
import jax
import jax.numpy as jnp

from cifar_jax import rng

# torchvision's numbering of the operations (`ColorJitter.forward`'s `fn_id`).
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)
OP_NAMES = ('brightness', 'contrast', 'saturation', 'hue')
MAX_HUE = 0.5  # A shift of half the colour wheel; torchvision refuses more.


def grayscale(image):
  """torchvision's `rgb_to_grayscale` of a float [..., 3] image, [...] (weights after TF's)."""
  return 0.2989 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2]


def _blend(image, degenerate, factor):
  """torchvision's `_blend`: factor * image + (1 - factor) * degenerate, clamped to [0, 1]."""
  return jnp.clip(factor * image + (1.0 - factor) * degenerate, 0.0, 1.0)


# The three blends one at a time, as torchvision's functions are: the tests compare them with
# torchvision; training applies them through `_blend_op`, in each image's random order.
def adjust_brightness(image, factor):
  """Scales a float [H, W, 3] image in [0, 1] by `factor` >= 0 (0 = black), clamped."""
  return _blend(image, jnp.zeros((), image.dtype), factor)


def adjust_contrast(image, factor):
  """Blends a float [H, W, 3] image with its mean grey level (0 = flat grey, 1 = image)."""
  return _blend(image, jnp.mean(grayscale(image)), factor)


def adjust_saturation(image, factor):
  """Blends a float [H, W, 3] image with its greyscale version (0 = grey, 1 = image)."""
  return _blend(image, grayscale(image)[..., None], factor)


def rgb_to_hsv(image):
  """torchvision's `_rgb2hsv` (after Pillow's) of a float [..., 3] RGB image in [0, 1].

  Hue, saturation and value are each in [0, 1]; grey pixels get hue and saturation 0.
  """
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  maxc = jnp.max(image, axis=-1)
  minc = jnp.min(image, axis=-1)
  # Grey pixels would divide by zero below; their hue and saturation come out 0 whatever the
  # divisor, so it is replaced by 1, as torchvision does.
  grey = maxc == minc
  chroma = maxc - minc
  ones = jnp.ones_like(maxc)
  s = chroma / jnp.where(grey, ones, maxc)
  divisor = jnp.where(grey, ones, chroma)
  rc = (maxc - r) / divisor
  gc = (maxc - g) / divisor
  bc = (maxc - b) / divisor
  h = (jnp.where(maxc == r, bc - gc, 0.0)
       + jnp.where((maxc == g) & (maxc != r), 2.0 + rc - bc, 0.0)
       + jnp.where((maxc != g) & (maxc != r), 4.0 + gc - rc, 0.0))
  h = jnp.mod(h / 6.0 + 1.0, 1.0)
  return jnp.stack((h, s, maxc), axis=-1)


def hsv_to_rgb(image):
  """torchvision's `_hsv2rgb` of a float [..., 3] HSV image, each channel in [0, 1]."""
  h, s, v = image[..., 0], image[..., 1], image[..., 2]
  sector = jnp.floor(h * 6.0)
  f = h * 6.0 - sector
  sector = sector.astype(jnp.int32) % 6
  p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
  q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
  t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
  # (R, G, B) in each sixth of the colour wheel, starting from red.
  rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
  rgb = [jnp.stack(channels, axis=-1) for channels in rgb]
  return jnp.select([(sector == i)[..., None] for i in range(5)], rgb[:5], rgb[5])


def adjust_hue(image, shift):
  """Turns the hue of a float [H, W, 3] image in [0, 1] by `shift` in [-0.5, 0.5] turns of the
  colour wheel (0.5 = 180 degrees); saturation and value stay."""
  hsv = rgb_to_hsv(image)
  hue = jnp.mod(hsv[..., 0] + shift, 1.0)
  return hsv_to_rgb(jnp.concatenate([hue[..., None], hsv[..., 1:]], axis=-1))


ADJUST = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)  # By op number.


def ranges(*, brightness: float, contrast: float, saturation: float, hue: float):
  """Each operation's (low, high) factor range, as `ColorJitter` turns its arguments into them.

  Returns:
    (low, high), each a tuple of 4 floats in op order; an operation that is off has
    low == high == its identity factor (1 for the blends, 0 for the hue).
  """
  for name, value in zip(OP_NAMES, (brightness, contrast, saturation, hue), strict=True):
    if not value >= 0:
      raise ValueError(f'{name} must be >= 0, got {value}')
  if hue > MAX_HUE:
    raise ValueError(f'hue must be at most {MAX_HUE}, got {hue}')
  low = tuple(max(0.0, 1.0 - x) for x in (brightness, contrast, saturation)) + (-hue,)
  high = tuple(1.0 + x for x in (brightness, contrast, saturation)) + (hue,)
  return low, high


def enabled_ops(*, brightness: float, contrast: float, saturation: float, hue: float):
  """The numbers of the operations whose range is not 0, in op order."""
  return tuple(op for op, value in enumerate((brightness, contrast, saturation, hue)) if value)


def sample(key, low, high):
  """One image's random order of the four operations and its four factors.

  Args:
    key: The image's PRNG key.
    low, high: Each operation's factor range, from `ranges`.

  Returns:
    order: int32 [4], a permutation of the op numbers; order[k] runs k-th.
    factors: float32 [4], factors[op] uniform in [low[op], high[op]].
  """
  order = jax.random.permutation(rng.stream(key, 'order'), len(OP_NAMES))
  factors = jax.random.uniform(rng.stream(key, 'factors'), (len(OP_NAMES),), jnp.float32,
                               jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32))
  return order, factors


def _blend_op(image, op, factor, blend_ops):
  """Blend operation `op` (one of `blend_ops`, which may be traced) of a float [H, W, 3] image."""
  degenerates = {
      BRIGHTNESS: lambda: jnp.zeros_like(image),
      CONTRAST: lambda: jnp.broadcast_to(jnp.mean(grayscale(image)), image.shape),
      SATURATION: lambda: jnp.broadcast_to(grayscale(image)[..., None], image.shape),
  }
  if len(blend_ops) == 1:
    degenerate = degenerates[blend_ops[0]]()
  else:
    *others, last = blend_ops
    degenerate = jnp.select([op == o for o in others], [degenerates[o]() for o in others],
                            degenerates[last]())
  return _blend(image, degenerate, factor)


def jitter(image, order, factors, ops):
  """Applies the operations `ops` to one float [H, W, 3] image in [0, 1] in the order `order`.

  Why not `lax.switch(order[k], ...)` for each of the four steps: under `vmap` a switch computes
  every branch and selects, i.e. sixteen operations and four RGB -> HSV -> RGB round trips per
  image. Instead, brightness, contrast and saturation are one formula (a blend with black, the
  mean grey or the greyscale image), cheap to compute, and the hue runs once: the blends that
  come before the hue in this image's order run first, then the hue, then the blends that come
  after it, each blend slot passing its input through unchanged (an exact select) where its
  blend belongs to the other side. That is one hue and at most six blends.

  Args:
    image: float32 [H, W, 3] in [0, 1].
    order: int32 [4], a permutation of the op numbers (`sample`).
    factors: float32 [4], each operation's factor.
    ops: The op numbers that are on (static); the others cost nothing.

  Returns:
    float32 [H, W, 3] in [0, 1].
  """
  blend_ops = tuple(op for op in ops if op != HUE)
  step_of = jnp.argsort(order)  # step_of[op]: when op runs.
  if blend_ops:
    blends = jnp.asarray(blend_ops, jnp.int32)
    blends = blends[jnp.argsort(step_of[blends])]  # This image's blends, in the order they run.

  def run_blends(image, keep=None):
    for slot in range(len(blend_ops)):
      op = blends[slot]
      blended = _blend_op(image, op, factors[op], blend_ops)
      image = blended if keep is None else jnp.where(keep(step_of[op]), blended, image)
    return image

  if HUE not in ops:
    return run_blends(image)
  image = run_blends(image, keep=lambda step: step < step_of[HUE])
  image = adjust_hue(image, factors[HUE])
  return run_blends(image, keep=lambda step: step > step_of[HUE])


def color_jitter(keys, images, *, brightness: float, contrast: float, saturation: float,
                 hue: float):
  """torchvision's `ColorJitter(brightness, contrast, saturation, hue)`, each image with its key.

  Args:
    keys: Per-example PRNG keys, typed [B] (from `jax.random.key`) or raw uint32 [B, 2].
    images: uint8 [B, H, W, 3].
    brightness, contrast, saturation: >= 0; the factor is uniform in [max(0, 1 - x), 1 + x].
    hue: In [0, 0.5]; the shift is uniform in [-hue, hue] turns of the colour wheel.

  Returns:
    uint8 [B, H, W, 3]: the images themselves when every range is 0.
  """
  low, high = ranges(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
  ops = enabled_ops(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
  if not ops:
    return images
  if images.dtype != jnp.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'expected uint8 [B, H, W, 3] images, got {images.dtype} {images.shape}')
  if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    keys = jax.random.wrap_key_data(keys)

  def one(key, image):
    order, factors = sample(key, low, high)
    out = jitter(image.astype(jnp.float32) / 255.0, order, factors, ops)
    return jnp.clip(jnp.round(out * 255.0), 0, 255).astype(jnp.uint8)

  return jax.vmap(one)(keys, images)
