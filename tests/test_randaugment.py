"""RandAugment (`cifar_jax.augment.randaugment`): the policy, each operation against Pillow, and
both batch recipes in the sharded step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_images as _images
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cifar_jax.augment import mixing
from cifar_jax.augment import randaugment as ra


def _uniform_histogram_images(n, seed=0):
  """32 x 32 RGB images in which every channel holds each level 0..255 exactly four times.

  Both autocontrast and equalize leave such a channel unchanged, so at magnitude 0 every
  RandAugment operation is the identity on these images.
  """
  rng = np.random.default_rng(seed)
  levels = np.repeat(np.arange(256, dtype=np.uint8), 4)
  channels = [rng.permutation(levels) for _ in range(3 * n)]
  return np.stack(channels, axis=-1).reshape(32, 32, n, 3).transpose(2, 0, 1, 3)


@pytest.fixture
def pil():
  """Pillow's ImageOps and ImageEnhance, the reference the operations follow."""
  pytest.importorskip('PIL.Image')
  from PIL import Image, ImageEnhance, ImageOps
  return Image, ImageOps, ImageEnhance


# RandAugment: the policy.

_randaugment = jax.jit(ra.randaugment, static_argnames=('num_ops', 'magnitude'))


def _raw_keys(n, seed=0):
  # The policy tests pass raw uint32 keys and the sharded test typed ones, which checks that both
  # give the same result without compiling the policy twice.
  return jax.random.key_data(jax.random.split(jax.random.key(seed), n))


def test_randaugment_keeps_shape_and_dtype_and_depends_only_on_the_keys():
  images = _images(16)
  keys = _raw_keys(16)
  out = np.asarray(_randaugment(keys, images, num_ops=2, magnitude=9.0))
  assert out.shape == images.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(_randaugment(keys, images, num_ops=2, magnitude=9.0), out)
  assert np.any(out != images)
  other = _randaugment(_raw_keys(16, seed=1), images, num_ops=2, magnitude=9.0)
  assert np.any(other != out)
  # Each half of the batch, completed with unrelated examples to the same batch size (which
  # reuses the compiled function), comes out as in the whole batch.
  fillers = _raw_keys(8, seed=2)
  for half in (slice(0, 8), slice(8, 16)):
    batch_keys = jnp.concatenate([keys[half], fillers])
    batch = np.concatenate([images[half], _images(8, seed=1)])
    np.testing.assert_array_equal(
        _randaugment(batch_keys, batch, num_ops=2, magnitude=9.0)[:8], out[half])


def test_randaugment_at_magnitude_zero_is_the_identity_on_its_fixed_points():
  images = _uniform_histogram_images(16)
  keys = _raw_keys(16)
  np.testing.assert_array_equal(_randaugment(keys, images, num_ops=2, magnitude=0.0), images)


def test_randaugment_applies_each_operation_of_the_policy():
  n, magnitude = 256, 9.0
  images = _images(n, size=16)
  keys = _raw_keys(n)
  out = np.asarray(_randaugment(keys, images, num_ops=1, magnitude=magnitude))
  branches = ra._branches(magnitude, 16, 16)

  @jax.jit
  def candidates(images):
    # [ops, signs, n, ...]: every operation with both signs applied to every image.
    return jnp.stack([
        jnp.stack([jax.vmap(lambda x, op=op, s=s: op(x, s))(images) for s in (-1.0, 1.0)])
        for op in branches])

  matches = np.all(np.asarray(candidates(images)) == out, axis=(3, 4, 5))
  matches = matches.any(axis=1)  # [ops, n]
  assert matches.any(axis=0).all(), 'an output is no operation of the policy'
  # 256 uniform draws from 14 operations: each appears (a miss has probability below 1e-7).
  missing = [name for name, m in zip(ra.OP_NAMES, matches, strict=True) if not m.any()]
  assert not missing


# RandAugment: the operations, on single images.

# One compilation per operation, shared by the tests: the images are all 32 x 32 and the
# parameters are traced.
_OPS = {name: jax.jit(getattr(ra, name)) for name in ra.OP_NAMES[1:]}


def test_equalize_matches_pillow_and_fixes_a_uniform_histogram(pil):
  image_lib, image_ops, _ = pil
  image = _images(1)[0]
  dim = (image // 4 + 40).astype(np.uint8)  # A narrow histogram, which equalize widens.
  for x in (image, dim, np.full_like(image, 7)):
    np.testing.assert_array_equal(_OPS['equalize'](x), image_ops.equalize(image_lib.fromarray(x)))
  assert np.asarray(_OPS['equalize'](dim)).max() == 255
  flat = _uniform_histogram_images(1)[0]
  np.testing.assert_array_equal(_OPS['equalize'](flat), flat)


def test_autocontrast_stretches_each_channel_to_the_full_range(pil):
  image_lib, image_ops, _ = pil
  image = (_images(1)[0] // 4 + 40).astype(np.uint8)
  image[..., 2] = 9  # A constant channel stays as it is.
  out = np.asarray(_OPS['autocontrast'](image))
  np.testing.assert_array_equal(out[..., :2].min(axis=(0, 1)), 0)
  np.testing.assert_array_equal(out[..., :2].max(axis=(0, 1)), 255)
  np.testing.assert_array_equal(out[..., 2], 9)
  reference = np.asarray(image_ops.autocontrast(image_lib.fromarray(image)), np.int32)
  assert np.abs(out.astype(np.int32) - reference).max() <= 1


@pytest.mark.parametrize('bits', range(9))
def test_posterize_keeps_the_top_bits(bits):
  image = _images(1)[0]
  out = np.asarray(_OPS['posterize'](image, bits))
  np.testing.assert_array_equal(out, image & (0xFF << (8 - bits) & 0xFF))


@pytest.mark.parametrize('threshold', [0, 100, 128.5, 255, 256])
def test_solarize_inverts_the_pixels_at_or_above_the_threshold(threshold, pil):
  image_lib, image_ops, _ = pil
  image = _images(1)[0]
  out = np.asarray(_OPS['solarize'](image, threshold))
  np.testing.assert_array_equal(out, np.where(image >= threshold, 255 - image, image))
  if threshold == int(threshold):
    np.testing.assert_array_equal(
        out, image_ops.solarize(image_lib.fromarray(image), int(threshold)))


@pytest.mark.parametrize('name', ['color', 'contrast', 'brightness', 'sharpness'])
def test_enhancements_blend_with_pillows_degenerate_image(name, pil):
  image_lib, _, image_enhance = pil
  op = _OPS[name]
  image = _images(1)[0]
  enhancer = getattr(image_enhance, name.capitalize())(image_lib.fromarray(image))
  np.testing.assert_array_equal(op(image, 1.0), image)
  # Factor 0 is the degenerate image itself, which must be Pillow's exactly.
  np.testing.assert_array_equal(op(image, 0.0), enhancer.enhance(0.0))
  for factor in (0.1, 0.55, 1.45, 1.9):
    # The blends round where Pillow truncates.
    difference = np.asarray(op(image, factor), np.int32) - np.asarray(enhancer.enhance(factor))
    assert np.abs(difference).max() <= 1


def test_enhancement_special_cases():
  image = _images(1)[0]
  half = np.round(image / 2).astype(np.uint8)
  np.testing.assert_array_equal(_OPS['brightness'](image, 0.5), half)
  grey = np.asarray(_OPS['color'](image, 0.0))
  np.testing.assert_array_equal(grey, np.repeat(grey[..., :1], 3, axis=-1))
  flat = np.asarray(_OPS['contrast'](image, 0.0))
  assert np.all(flat == flat[0, 0, 0])
  # Sharpness leaves the unfiltered border alone and a constant image unchanged.
  sharp = np.asarray(_OPS['sharpness'](image, 1.9))
  for edge in (np.s_[0], np.s_[-1], np.s_[:, 0], np.s_[:, -1]):
    np.testing.assert_array_equal(sharp[edge], image[edge])
  constant = np.full_like(image, 77)
  np.testing.assert_array_equal(_OPS['sharpness'](constant, 1.9), constant)


def test_rotate_turns_about_the_centre(pil):
  image_lib, _, _ = pil
  image = _images(1)[0]
  np.testing.assert_array_equal(_OPS['rotate'](image, 0.0), image)
  np.testing.assert_array_equal(_OPS['rotate'](image, 90.0), np.rot90(image))
  np.testing.assert_array_equal(_OPS['rotate'](image, -90.0), np.rot90(image, -1))
  np.testing.assert_array_equal(_OPS['rotate'](image, 180.0), image[::-1, ::-1])
  # Pillow's nearest-neighbour rotation samples the same pixels.
  fill = (ra.FILL,) * 3
  for degrees in (10.0, -27.0):
    np.testing.assert_array_equal(
        _OPS['rotate'](image, degrees), image_lib.fromarray(image).rotate(degrees, fillcolor=fill))


def test_translate_moves_content_by_whole_pixels_and_fills():
  image = _images(1)[0]
  for name in ('translate_x', 'translate_y', 'shear_x', 'shear_y'):
    np.testing.assert_array_equal(_OPS[name](image, 0.0), image)
  right = np.asarray(_OPS['translate_x'](image, 3.0))
  np.testing.assert_array_equal(right[:, 3:], image[:, :-3])
  np.testing.assert_array_equal(right[:, :3], ra.FILL)
  up = np.asarray(_OPS['translate_y'](image, -5.0))
  np.testing.assert_array_equal(up[:-5], image[5:])
  np.testing.assert_array_equal(up[-5:], ra.FILL)


def test_shear_shifts_each_row_in_proportion_to_its_offset_from_the_centre():
  image = _images(1)[0]
  factor = 0.3
  out = np.asarray(_OPS['shear_x'](image, factor))
  for i in range(32):
    # Row i is shifted left by round(factor * y), y its offset from the centre (no ties at 0.3).
    shift = int(np.round(factor * (i - 15.5)))
    cols = np.arange(32) + shift
    inside = (cols >= 0) & (cols < 32)
    np.testing.assert_array_equal(out[i, inside], image[i, cols[inside]])
    np.testing.assert_array_equal(out[i, ~inside], ra.FILL)
  transposed = image.transpose(1, 0, 2)
  np.testing.assert_array_equal(_OPS['shear_y'](transposed, factor), out.transpose(1, 0, 2))


# Both recipes in the sharded train step.


def test_mix_and_randaugment_run_in_shard_map_on_the_local_batch():
  mesh = jax.make_mesh((8,), ('data',))
  n = 16
  images = _images(n)
  labels = np.arange(n)  # Distinct labels show where each example's partner came from.
  keys = jax.random.split(jax.random.key(0), n)

  def per_device(keys, images, labels, key):
    augmented = ra.randaugment(keys, images, num_ops=2, magnitude=9.0)
    # Each device draws its own weight and pairing.
    key = jax.random.fold_in(key, lax.axis_index('data'))
    mixed, targets = mixing.mix(key, augmented, labels, mixup_alpha=0.8, cutmix_alpha=1.0,
                                switch_prob=0.5, num_classes=n)
    return augmented, mixed, targets

  mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(P('data'), P('data'), P('data'), P()),
                         out_specs=P('data'))
  rows = NamedSharding(mesh, P('data'))
  augmented, mixed, targets = jax.jit(mapped)(
      jax.device_put(keys, rows), jax.device_put(images, rows), jax.device_put(labels, rows),
      jax.device_put(jax.random.key(1), NamedSharding(mesh, P())))
  # Per-example keys make the augmentation independent of the split across devices.
  np.testing.assert_array_equal(
      augmented, _randaugment(jax.random.key_data(keys), images, num_ops=2, magnitude=9.0))
  assert mixed.shape == images.shape and mixed.dtype == jnp.float32
  assert 0 <= np.min(mixed) and np.max(mixed) <= 255
  targets = np.asarray(targets)
  np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
  # Partners come from the same device's 2 examples.
  for device in range(8):
    own = np.s_[2 * device:2 * device + 2]
    np.testing.assert_array_equal(np.delete(targets[own], own, axis=1), 0.0)
