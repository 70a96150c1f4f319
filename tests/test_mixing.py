"""Mixup and CutMix (`cifar_jax.augment.mixing`): one weight per batch, boxes, targets."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_images as _images

from cifar_jax.augment import mixing

# Mixup and CutMix.


def _constant_images(n, size):
  """Example i is the constant i + 1, so every output pixel names the example it came from."""
  return np.broadcast_to(np.arange(1, n + 1, dtype=np.uint8)[:, None, None, None],
                         (n, size, size, 3))


def _check_mixup(images, mixed, targets):
  """Checks a Mixup of examples labelled 0..n-1; returns its weight lam (None if unidentifiable).

  lam and the partners are read off the targets, then the images must be their blend.
  """
  n = len(targets)
  partners, weights = np.arange(n), set()
  for i, row in enumerate(targets):
    others = [j for j in np.flatnonzero(row) if j != i]
    assert len(others) <= 1, row
    if others:
      partners[i] = others[0]
      weights.add(row[i])
  np.testing.assert_array_equal(np.sort(partners), np.arange(n))
  np.testing.assert_allclose(np.sum(targets, axis=1), 1.0, atol=1e-6)
  x = images.astype(np.float32)
  if not weights:
    # Every example drew itself as partner: nothing changes, whatever lam.
    np.testing.assert_array_equal(mixed, x)
    return None
  assert len(weights) == 1, weights  # One weight for the whole batch.
  lam = weights.pop()
  np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[partners], rtol=1e-6)
  return lam


def _check_cutmix(mixed, targets):
  """Checks a CutMix of `_constant_images`; returns the pasted box (None if nothing moved)."""
  n = len(mixed)
  boxes = []
  for i in range(n):
    values = mixed[i, :, :, 0]
    np.testing.assert_array_equal(mixed[i], np.repeat(values[:, :, None], 3, axis=2))
    pasted = values != i + 1
    expected = np.zeros(n, np.float32)
    expected[i] = 1 - pasted.mean()
    if pasted.any():
      sources = np.unique(values[pasted])
      assert len(sources) == 1
      expected[int(sources[0]) - 1] += pasted.mean()
      boxes.append(pasted)
    # The partner's weight is the area actually pasted.
    np.testing.assert_allclose(targets[i], expected, atol=1e-6)
  if not boxes:
    return None
  # Outside the box every pixel is its own example's; the box is one rectangle for the batch.
  for box in boxes[1:]:
    np.testing.assert_array_equal(box, boxes[0])
  rows, cols = np.flatnonzero(boxes[0].any(1)), np.flatnonzero(boxes[0].any(0))
  assert boxes[0].sum() == len(rows) * len(cols)
  return boxes[0]


def test_mixup_blends_with_one_beta_weight_per_batch():
  n, trials, alpha = 8, 512, 0.4
  images = _images(n, size=4)
  fn = functools.partial(mixing.mixup, alpha=alpha, num_classes=n)
  keys = jax.random.split(jax.random.key(0), trials)
  mixed, targets = jax.jit(jax.vmap(fn, in_axes=(0, None, None)))(keys, images, np.arange(n))
  assert mixed.dtype == jnp.float32
  lams = [_check_mixup(images, m, t)
          for m, t in zip(np.asarray(mixed), np.asarray(targets), strict=True)]
  lams = np.array([lam for lam in lams if lam is not None])
  assert np.all((lams >= 0) & (lams <= 1))
  # Beta(a, a) has mean 1/2 and variance 1 / (4 (2a + 1)); the tolerances are ~4 standard errors.
  assert abs(lams.mean() - 0.5) < 0.07
  assert abs(lams.var() - 1 / (4 * (2 * alpha + 1))) < 0.02


def test_cutmix_box_is_a_square_of_the_nominal_side_clipped_at_the_borders():
  # lam = 0.75: the nominal box is 16 x 16 on a 32 x 32 image.
  masks = jax.jit(jax.vmap(lambda k: mixing._box_mask(k, jnp.float32(0.75), 32, 32)))(
      jax.random.split(jax.random.key(0), 64))
  clipped = 0
  for mask in np.asarray(masks):
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    expected = np.zeros_like(mask)
    expected[top:bottom, left:right] = True
    np.testing.assert_array_equal(mask, expected)
    # A side shorter than 16 only comes from clipping at the border it touches.
    assert bottom - top == 16 or top == 0 or bottom == 32
    assert right - left == 16 or left == 0 or right == 32
    clipped += mask.sum() < 256
  assert clipped > 0


def test_cutmix_pastes_one_box_and_weighs_targets_by_its_area():
  n, trials = 8, 32
  fn = functools.partial(mixing.cutmix, alpha=1.0, num_classes=n)
  keys = jax.random.split(jax.random.key(0), trials)
  mixed, targets = jax.jit(jax.vmap(fn, in_axes=(0, None, None)))(
      keys, _constant_images(n, 32), np.arange(n))
  assert mixed.dtype == jnp.uint8
  boxes = [_check_cutmix(m, t) for m, t in zip(np.asarray(mixed), np.asarray(targets),
                                                strict=True)]
  # The unclipped box is square, so a non-square one was clipped: the weights above followed it.
  assert any(box is not None and box.any(0).sum() != box.any(1).sum() for box in boxes)


def test_mix_with_both_alphas_zero_is_the_identity():
  images = _images(8, size=8)
  labels = np.arange(8)
  fn = functools.partial(mixing.mix, mixup_alpha=0.0, cutmix_alpha=0.0, switch_prob=0.5,
                         num_classes=10)
  mixed, targets = jax.jit(fn)(jax.random.key(0), images, labels)
  assert mixed.dtype == jnp.float32
  np.testing.assert_array_equal(mixed, images.astype(np.float32))
  np.testing.assert_array_equal(targets, np.eye(10, dtype=np.float32)[labels])


@pytest.mark.parametrize('mixup_alpha,cutmix_alpha,expected_cutmix', [
    (0.5, 0.0, (0, 0)), (0.5, 1.0, (8, 24))])
def test_mix_applies_the_recipes_that_are_on(mixup_alpha, cutmix_alpha, expected_cutmix):
  n, trials = 8, 32
  images = _constant_images(n, 16)
  fn = functools.partial(mixing.mix, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                         switch_prob=0.5, num_classes=n)
  keys = jax.random.split(jax.random.key(0), trials)
  mixed, targets = jax.jit(jax.vmap(fn, in_axes=(0, None, None)))(keys, images, np.arange(n))
  assert mixed.dtype == jnp.float32
  cutmixes = 0
  for m, t in zip(np.asarray(mixed), np.asarray(targets), strict=True):
    # CutMix only copies pixels; Mixup's blends of distinct constants are not integers.
    if np.all(m == np.round(m)):
      cutmixes += 1
      _check_cutmix(m, t)
    else:
      assert _check_mixup(images, m, t) is not None
  # Both on: CutMix in half the trials, here within ~3 standard deviations.
  low, high = expected_cutmix
  assert low <= cutmixes <= high
