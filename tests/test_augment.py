"""Tests for on-device augmentation, normalisation and dataset channel statistics."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.augment.crop_flip import crop_flip_cutout
from cifar_jax.augment.inputs import alternating_flips
from cifar_jax.augment.normalize import channel_stats, input_stats, normalize


def _keys(n, seed=0):
  return jax.random.split(jax.random.key(seed), n)


def _images(n, size=8, seed=0):
  # No zero pixels, so zeros in the output can only come from padding or cutout.
  rng = np.random.default_rng(seed)
  return rng.integers(1, 256, size=(n, size, size, 3), dtype=np.uint8)


def _augment(keys, images, *, crop_padding=0, flip=False, cutout_size=0, padding_mode='zeros',
             flips=None):
  fn = functools.partial(crop_flip_cutout, crop_padding=crop_padding, flip=flip,
                         cutout_size=cutout_size, padding_mode=padding_mode)
  return np.asarray(jax.jit(fn)(keys, images, flips=flips))


def test_shapes_and_dtypes():
  images = _images(4, size=32)
  out = _augment(_keys(4), images, crop_padding=4, flip=True, cutout_size=8)
  assert out.shape == images.shape
  assert out.dtype == np.uint8


def test_all_off_is_identity():
  images = _images(16)
  np.testing.assert_array_equal(_augment(_keys(16), images), images)


def test_flip_is_mirror_or_identity():
  images = _images(64)
  out = _augment(_keys(64), images, flip=True)
  mirrored = images[:, :, ::-1]
  is_mirror = np.all(out == mirrored, axis=(1, 2, 3))
  is_same = np.all(out == images, axis=(1, 2, 3))
  # Random images are never symmetric, so exactly one of the two holds for each example.
  np.testing.assert_array_equal(is_mirror, ~is_same)
  assert is_mirror.any() and is_same.any()


def test_alternating_flip_shows_each_image_once_flipped_and_once_not_over_two_epochs():
  ids = jnp.arange(1000)
  key = jax.random.PRNGKey(0)
  epochs = [np.asarray(alternating_flips(key, ids, epoch)) for epoch in range(4)]
  np.testing.assert_array_equal(epochs[0] ^ epochs[1], True)
  np.testing.assert_array_equal(epochs[1] ^ epochs[2], True)
  np.testing.assert_array_equal(epochs[0], epochs[2])  # The bit is fixed per example.
  assert 0.4 < epochs[0].mean() < 0.6  # A random half.
  # It depends on the example's row, not its position in the batch.
  np.testing.assert_array_equal(alternating_flips(key, ids[::-1], 0), epochs[0][::-1])
  # The given bits decide the flips.
  images = _images(8)
  flips = np.array([True, False] * 4)
  out = _augment(_keys(8), images, flip=True, flips=flips)
  np.testing.assert_array_equal(out[flips], images[flips][:, :, ::-1])
  np.testing.assert_array_equal(out[~flips], images[~flips])


@pytest.mark.parametrize('padding_mode', ['zeros', 'reflect'])
def test_crop_is_window_of_padded_image_and_offsets_cover_range(padding_mode):
  pad, size, n = 2, 6, 256
  images = _images(n, size=size)
  out = _augment(_keys(n), images, crop_padding=pad, padding_mode=padding_mode)
  # Reflect padding mirrors the border without repeating the edge pixel, as PyTorch's does.
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                  mode='reflect' if padding_mode == 'reflect' else 'constant')
  offsets = set()
  for i in range(n):
    matches = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
               if np.array_equal(out[i], padded[i, dy:dy + size, dx:dx + size])]
    assert len(matches) == 1, f'example {i}: {matches}'
    offsets.add(matches[0])
  # 256 draws from 25 offsets: all appear (a miss has probability below 1e-3).
  assert offsets == {(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)}


@pytest.mark.parametrize('cutout_size', [4, 5])
def test_cutout_zeroes_one_clipped_square(cutout_size):
  size, n = 12, 128
  images = _images(n, size=size)
  out = _augment(_keys(n), images, cutout_size=cutout_size)
  saw_full = saw_clipped = False
  for i in range(n):
    zero = out[i] == 0
    # The whole pixel is cut out, every channel.
    np.testing.assert_array_equal(zero, np.repeat(zero[:, :, :1], 3, axis=2))
    rows = np.flatnonzero(zero[:, :, 0].any(axis=1))
    cols = np.flatnonzero(zero[:, :, 0].any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    box = np.zeros_like(zero)
    box[top:bottom, left:right] = True
    np.testing.assert_array_equal(zero, box)
    np.testing.assert_array_equal(out[i][~box], images[i][~box])
    for lo, hi in ((top, bottom), (left, right)):
      # A side is cut short only where it meets the border, and the centre stays inside the
      # image, so at least the far half of the square remains.
      if 0 < lo and hi < size:
        assert hi - lo == cutout_size
      else:
        assert cutout_size - cutout_size // 2 <= hi - lo <= cutout_size
    full = bottom - top == right - left == cutout_size
    saw_full |= full
    saw_clipped |= not full
  assert saw_full and saw_clipped


def test_same_key_same_result_and_split_invariance():
  n = 16
  keys = _keys(n, seed=3)
  images = _images(n, size=16)
  kwargs = dict(crop_padding=4, flip=True, cutout_size=6)
  whole = _augment(keys, images, **kwargs)
  np.testing.assert_array_equal(_augment(keys, images, **kwargs), whole)
  halves = [_augment(keys[s], images[s], **kwargs) for s in (slice(0, 8), slice(8, n))]
  np.testing.assert_array_equal(np.concatenate(halves), whole)
  # Raw key data behaves like the typed keys it encodes.
  np.testing.assert_array_equal(_augment(jax.random.key_data(keys), images, **kwargs), whole)


def test_negative_sizes_rejected():
  with pytest.raises(ValueError, match='non-negative'):
    crop_flip_cutout(_keys(2), _images(2), crop_padding=-1, flip=False, cutout_size=0)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_normalize_matches_formula(dtype):
  images = _images(4)
  mean = np.array([0.49, 0.48, 0.45], np.float32)
  std = np.array([0.25, 0.24, 0.26], np.float32)
  out = normalize(images, mean, std, dtype=dtype)
  assert out.dtype == dtype
  expected = (images.astype(np.float64) / 255 - mean) / std
  tolerance = 1e-6 if dtype == jnp.float32 else 1e-2
  np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=tolerance,
                             atol=tolerance)


# Pixel values 0, 128, 255 in every channel, and the inputs each pretraining's own preprocessing
# makes of them (RGB order): Keras' `caffe` mode subtracts the BGR mean pixel (103.939, 116.779,
# 123.68) without scaling, `tf` mode and the ViT releases give (x - 127.5) / 127.5, torchvision
# (x / 255 - mean) / std.
_PIXELS = np.array([0.0, 128.0, 255.0])[:, None]
PRETRAINED_INPUTS = {
    'caffe': _PIXELS - [123.68, 116.779, 103.939],
    'inception': np.repeat((_PIXELS - 127.5) / 127.5, 3, axis=1),
    'imagenet': (_PIXELS / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
}


@pytest.mark.parametrize('name', PRETRAINED_INPUTS)
def test_pretraining_normalisations_give_the_releases_inputs(name):
  images = np.repeat(_PIXELS, 3, axis=1).astype(np.uint8)[None, None]  # [1, 1, 3 pixels, 3].
  out = normalize(images, *input_stats(name, None))
  np.testing.assert_allclose(np.asarray(out)[0, 0], PRETRAINED_INPUTS[name], rtol=1e-5, atol=1e-4)


def test_channel_stats_matches_numpy():
  # More images than one chunk, so the accumulation across chunks is exercised.
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, size=(2500, 4, 4, 3), dtype=np.uint8)
  images[..., 2] //= 4  # channels with different statistics
  mean, std = channel_stats(images)
  assert mean.dtype == std.dtype == np.float32
  assert mean.shape == std.shape == (3,)
  as_float = images.astype(np.float64) / 255
  np.testing.assert_allclose(mean, as_float.mean(axis=(0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(std, as_float.std(axis=(0, 1, 2)), rtol=1e-6)
