"""Mixup and CutMix: batch-level recipes that blend examples and their targets.

The functions run on device inside the per-device train step, after the per-example augmentation
and before normalisation. Each example is paired with another from the same local batch, so
unlike `crop_flip.crop_flip_cutout` the result depends on how the global batch is split across
devices; giving each device its own key (e.g. folded with its axis index) also gives each device
its own mixing coefficient, as when every host draws its own.

Images that come out of `mixup` and `mix` are float32 in [0, 255] units: a blend of two uint8
pixels is generally not an integer. `normalize.normalize` casts its input to float32 before scaling,
so it accepts them unchanged. Targets are float32 [B, num_classes] probability vectors, for
`optax.softmax_cross_entropy` in place of the integer-label loss.
"""
import jax
import jax.numpy as jnp
from jax import lax


def _check_alpha(alpha: float):
  if alpha <= 0:
    raise ValueError(f'alpha must be positive, got {alpha}')


def _lam_and_perm(key, batch_size: int, alpha):
  """The mixing weight lam ~ Beta(alpha, alpha) and the partner of each example in the batch.

  lam = G1 / (G1 + G2) for G1, G2 ~ Gamma(alpha), computed from log G1 - log G2 so that small
  alphas, whose gamma draws can underflow to zero, still give a weight in [0, 1]. Both gammas come
  from one sampler call, which compiles faster than the two of `jax.random.beta`.
  """
  lam_key, perm_key = jax.random.split(key)
  log_gammas = jax.random.loggamma(lam_key, alpha, (2,), dtype=jnp.float32)
  lam = jax.nn.sigmoid(log_gammas[0] - log_gammas[1])
  perm = jax.random.permutation(perm_key, batch_size)
  return lam, perm


def _mix_targets(labels, perm, lam, num_classes: int):
  """lam * onehot(labels) + (1 - lam) * onehot(labels[perm]), float32 [B, num_classes]."""
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return lam * one_hot + (1 - lam) * one_hot[perm]


def _box_mask(key, lam, height: int, width: int):
  """A rectangle covering about 1 - lam of an image, centred uniformly and clipped at its borders.

  The unclipped box has sides int(H * sqrt(1 - lam)) and int(W * sqrt(1 - lam)), as in the CutMix
  paper; clipping can make it smaller, which the caller accounts for by measuring the mask.

  Args:
    key: PRNG key for the centre.
    lam: float32 scalar in [0, 1].
    height, width: Image size.

  Returns:
    bool [H, W], True inside the box.
  """
  ratio = jnp.sqrt(1 - lam)
  box_h = (height * ratio).astype(jnp.int32)
  box_w = (width * ratio).astype(jnp.int32)
  cy, cx = jax.random.randint(key, (2,), 0, jnp.array([height, width]))
  top, left = cy - box_h // 2, cx - box_w // 2
  # Comparisons against iotas keep the shapes static whatever the box size.
  rows = lax.broadcasted_iota(jnp.int32, (height, width), 0)
  cols = lax.broadcasted_iota(jnp.int32, (height, width), 1)
  return (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)


def _mixup_with(images, labels, lam, perm, num_classes: int):
  """Mixup for a given weight and pairing; images become float32."""
  images = images.astype(jnp.float32)
  mixed = lam * images + (1 - lam) * images[perm]
  return mixed, _mix_targets(labels, perm, lam, num_classes)


def _cutmix_with(box_key, images, labels, lam, perm, num_classes: int):
  """CutMix for a given weight and pairing, with the box drawn from `box_key`."""
  height, width = images.shape[1:3]
  inside = _box_mask(box_key, lam, height, width)
  mixed = jnp.where(inside[None, :, :, None], images[perm], images)
  kept = 1 - jnp.sum(inside, dtype=jnp.float32) / (height * width)
  return mixed, _mix_targets(labels, perm, kept, num_classes)


def mixup(key, images, labels, *, alpha: float, num_classes: int):
  """Blends each image and target with a partner's, one weight for the whole batch (Mixup).

  x = lam * x + (1 - lam) * x[perm] and y = lam * onehot(y) + (1 - lam) * onehot(y[perm]), with
  lam ~ Beta(alpha, alpha) and perm a random permutation of the local batch.

  Args:
    key: PRNG key.
    images: [B, H, W, C] in [0, 255] units, any real dtype (uint8 from the augmentation).
    labels: int [B].
    alpha: Beta concentration, > 0.
    num_classes: Number of classes.

  Returns:
    (images, targets): float32 [B, H, W, C] in [0, 255] units and float32 [B, num_classes].
  """
  _check_alpha(alpha)
  lam, perm = _lam_and_perm(key, images.shape[0], alpha)
  return _mixup_with(images, labels, lam, perm, num_classes)


def cutmix(key, images, labels, *, alpha: float, num_classes: int):
  """Pastes a box of a partner's image into each image, one box for the whole batch (CutMix).

  lam ~ Beta(alpha, alpha) sets the box's nominal area 1 - lam; the box is clipped at the image
  borders, and the targets weigh the partner's label by the area actually pasted, so that
  y = (1 - a) * onehot(y) + a * onehot(y[perm]) with a = box area / (H * W).

  Args:
    key: PRNG key.
    images: [B, H, W, C], any dtype.
    labels: int [B].
    alpha: Beta concentration, > 0.
    num_classes: Number of classes.

  Returns:
    (images, targets): the images in their input dtype (pasting only copies pixels) and float32
    [B, num_classes].
  """
  _check_alpha(alpha)
  draw_key, box_key = jax.random.split(key)
  lam, perm = _lam_and_perm(draw_key, images.shape[0], alpha)
  return _cutmix_with(box_key, images, labels, lam, perm, num_classes)


def mix(key, images, labels, *, mixup_alpha: float, cutmix_alpha: float, switch_prob: float,
        num_classes: int):
  """Mixup or CutMix for the batch, whichever is switched on (alpha > 0), or neither.

  With both on, CutMix is chosen with probability `switch_prob` and Mixup otherwise, once per call,
  and the weight is drawn with the chosen recipe's alpha.

  Args:
    key: PRNG key.
    images: uint8 (or real) [B, H, W, C] in [0, 255] units.
    labels: int [B].
    mixup_alpha: Mixup's Beta concentration; 0 switches Mixup off.
    cutmix_alpha: CutMix's Beta concentration; 0 switches CutMix off.
    switch_prob: Probability of CutMix when both are on, in [0, 1].
    num_classes: Number of classes.

  Returns:
    (images, targets): float32 [B, H, W, C] in [0, 255] units, for `normalize.normalize`, and
    float32 [B, num_classes]. With both alphas 0, the images unchanged but cast and one-hot targets.
  """
  if mixup_alpha < 0 or cutmix_alpha < 0:
    raise ValueError(f'mixup_alpha ({mixup_alpha}) and cutmix_alpha ({cutmix_alpha}) must be '
                     'non-negative')
  if not 0 <= switch_prob <= 1:
    raise ValueError(f'switch_prob must be in [0, 1], got {switch_prob}')
  if not mixup_alpha and not cutmix_alpha:
    return images.astype(jnp.float32), jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  switch_key, draw_key, box_key = jax.random.split(key, 3)
  both = bool(mixup_alpha and cutmix_alpha)
  if both:
    use_cutmix = jax.random.bernoulli(switch_key, switch_prob)
    # One draw with the chosen recipe's alpha, so only one Beta sampler is compiled and run.
    alpha = jnp.where(use_cutmix, cutmix_alpha, mixup_alpha)
  else:
    alpha = mixup_alpha or cutmix_alpha
  lam, perm = _lam_and_perm(draw_key, images.shape[0], alpha)

  def with_mixup():
    return _mixup_with(images, labels, lam, perm, num_classes)

  def with_cutmix():
    mixed, targets = _cutmix_with(box_key, images, labels, lam, perm, num_classes)
    return mixed.astype(jnp.float32), targets

  if both:
    # A real branch, not a select: the choice is one scalar per call, so only one side runs.
    return lax.cond(use_cutmix, with_cutmix, with_mixup)
  return with_cutmix() if cutmix_alpha else with_mixup()
