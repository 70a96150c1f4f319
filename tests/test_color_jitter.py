"""Colour jitter: each operation and ColorJitter's own forward against torchvision, the random
order and factors drawn per image, the operations that are off left out of the program, the
jittered train step on 1 and 8 devices, and the config's ranges."""
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import CONFIG_DIR, assert_trees_close, import_torchvision, mesh_of
from jax.sharding import PartitionSpec as P

from cifar_jax import config as config_lib
from cifar_jax.augment import color_jitter as cj
from cifar_jax.augment import inputs
from cifar_jax.errors import UserError
from cifar_jax.training import optim, step
from cifar_jax.training import state as state_lib


def float_images(n=8, size=12, seed=0):
  """float32 [n, size, size, 3] in [0, 1], with the cases the HSV conversion branches on: a grey
  image, ties between the largest channels, pure colours, and 8-bit values (where ties are
  common)."""
  rng = np.random.default_rng(seed)
  images = rng.random((n, size, size, 3), dtype=np.float32)
  images[0] = images[0].mean(axis=-1, keepdims=True)
  images[1, ..., 1] = images[1, ..., 0]  # max(R, G) ties.
  images[2, ..., 2] = images[2, ..., 0]  # max(R, B) ties.
  images[3] = np.eye(3, dtype=np.float32)[rng.integers(0, 3, (size, size))]
  images[4] = np.round(images[4] * 255) / 255
  images[5, :2] = 0.0  # Black rows, and white ones.
  images[5, 2:4] = 1.0
  return images


def to_torch(images):
  import torch
  return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def from_torch(tensor):
  return tensor.permute(0, 2, 3, 1).numpy()


# One compiled function per operation; the factor is an argument, so every factor shares it.
_ADJUST = {name: jax.jit(jax.vmap(fn, (0, None))) for name, fn in zip(cj.OP_NAMES, cj.ADJUST,
                                                                        strict=True)}


@pytest.mark.parametrize('name,factor', [
    ('brightness', 0.0), ('brightness', 0.55), ('brightness', 1.7),
    ('contrast', 0.0), ('contrast', 0.3), ('contrast', 1.8),
    ('saturation', 0.0), ('saturation', 0.45), ('saturation', 2.0),
    ('hue', -0.5), ('hue', -0.21), ('hue', 0.0), ('hue', 0.13), ('hue', 0.5)])
def test_each_operation_matches_torchvision(name, factor):
  functional = import_torchvision().transforms.functional
  images = float_images()
  expected = from_torch(getattr(functional, f'adjust_{name}')(to_torch(images), factor))
  got = np.asarray(_ADJUST[name](images, jnp.float32(factor)))
  # The same float32 formulas in the same order; what differs is the order of the mean's sum
  # and the rounding of the weights of (1 - factor). Observed: at most 1e-6.
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def fixed_color_jitter(torchvision, order, factors, ops):
  """torchvision's ColorJitter whose draws are `order` and `factors`, the ops not in `ops` off:
  its own `forward` then decides what runs when."""
  import torch

  class FixedColorJitter(torchvision.transforms.ColorJitter):
    def get_params(self, *ranges):
      return (torch.tensor(order),
              *(float(factors[op]) if op in ops else None for op in range(4)))

  # Ranges that switch the same operations on; the draws themselves come from get_params.
  return FixedColorJitter(*(0.5 if op in ops else 0 for op in range(4)))


_JITTER = jax.jit(jax.vmap(cj.jitter, (0, None, None, None)), static_argnums=3)


@pytest.mark.parametrize('order,ops', [
    ((0, 1, 2, 3), (0, 1, 2, 3)),
    ((3, 2, 1, 0), (0, 1, 2, 3)),
    ((2, 3, 0, 1), (0, 1, 2, 3)),
    ((1, 0, 3, 2), (0, 1, 2, 3)),
    ((1, 3, 2, 0), (1, 3)),  # Contrast before the hue, brightness and saturation off.
    ((3, 2, 0, 1), (0, 1, 2)),  # No hue: the blends alone, in the order drawn.
])
def test_the_four_operations_in_a_fixed_order_match_torchvisions_color_jitter(order, ops):
  torchvision = import_torchvision()
  images = float_images()
  factors = np.array([1.3, 0.6, 1.7, 0.23], np.float32)
  expected = from_torch(fixed_color_jitter(torchvision, order, factors, ops)(to_torch(images)))
  got = np.asarray(_JITTER(images, jnp.asarray(order), factors, ops))
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def apply_in_order(image, order, factors, ops):
  """The reference: the operations of `ops`, one after the other, in the order of `order`."""
  for op in order:
    if op in ops:
      image = cj.ADJUST[op](image, factors[op])
  return image


JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2)


def test_each_image_gets_its_drawn_order_and_factors():
  n = 32
  keys = jax.random.split(jax.random.key(3), n)
  images = np.random.default_rng(1).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
  got = np.asarray(jax.jit(functools.partial(cj.color_jitter, **JITTER))(keys, images))
  assert got.dtype == np.uint8 and got.shape == images.shape

  low, high = cj.ranges(**JITTER)
  orders, factors = jax.vmap(cj.sample, (0, None, None))(keys, low, high)
  orders, factors = np.asarray(orders), np.asarray(factors)
  np.testing.assert_array_equal(np.sort(orders, axis=1), np.tile(np.arange(4), (n, 1)))
  assert len({tuple(o) for o in orders}) > 10  # Not one order for all.
  for i in range(n):
    expected = apply_in_order(images[i].astype(np.float32) / 255, orders[i], factors[i],
                              (0, 1, 2, 3))
    expected = np.round(np.asarray(expected) * 255)
    # Rounded to the same level, except where float32 rounding lands a value on the other side
    # of a half level.
    difference = np.abs(got[i].astype(np.float32) - expected)
    assert difference.max() <= 1 and np.mean(difference > 0) < 0.01, i


def test_factors_lie_in_their_ranges_and_differ_between_images():
  n = 1000
  settings = dict(brightness=1.5, contrast=0.3, saturation=0.0, hue=0.5)
  low, high = cj.ranges(**settings)
  assert low == (0.0, 0.7, 1.0, -0.5) and high == (2.5, 1.3, 1.0, 0.5)
  orders, factors = jax.vmap(cj.sample, (0, None, None))(
      jax.random.split(jax.random.key(0), n), low, high)
  orders, factors = np.asarray(orders), np.asarray(factors)
  for op in (cj.BRIGHTNESS, cj.CONTRAST, cj.HUE):
    assert np.all(factors[:, op] >= low[op]) and np.all(factors[:, op] <= high[op]), op
    assert len(np.unique(factors[:, op])) == n, op
    # Uniform: each quarter of the range holds about a quarter of the draws.
    quarters = np.histogram(factors[:, op], bins=4, range=(low[op], high[op]))[0]
    assert np.all(np.abs(quarters - n / 4) < 60), (op, quarters)
  np.testing.assert_array_equal(factors[:, cj.SATURATION], 1.0)  # Off: the identity factor.
  # Every one of the 24 orders is drawn.
  assert len({tuple(o) for o in orders}) == 24


def test_operations_that_are_off_are_left_out_of_the_program():
  keys = jax.random.split(jax.random.key(0), 2)
  images = jnp.zeros((2, 4, 4, 3), jnp.uint8)
  off = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
  assert cj.color_jitter(keys, images, **off) is images

  def program(**settings):
    return str(jax.make_jaxpr(functools.partial(cj.color_jitter, **{**off, **settings}))(
        keys, images))
  # The hue's RGB -> HSV -> RGB is the only floor; the contrast's mean the only sum.
  assert 'floor' not in program(brightness=0.2, contrast=0.2, saturation=0.2)
  assert 'floor' in program(hue=0.1)
  assert 'reduce_sum' not in program(brightness=0.2, saturation=0.2, hue=0.1)
  assert 'reduce_sum' in program(contrast=0.2)


def test_bad_ranges_are_refused():
  keys = jax.random.split(jax.random.key(0), 2)
  images = jnp.zeros((2, 4, 4, 3), jnp.uint8)
  with pytest.raises(ValueError, match='contrast must be >= 0'):
    cj.color_jitter(keys, images, brightness=0.0, contrast=-0.1, saturation=0.0, hue=0.0)
  with pytest.raises(ValueError, match='hue must be at most 0.5'):
    cj.color_jitter(keys, images, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.6)
  with pytest.raises(ValueError, match='expected uint8'):
    cj.color_jitter(keys, images.astype(jnp.float32), brightness=0.1, contrast=0.0,
                    saturation=0.0, hue=0.0)


# In the train step.


def augment_config(**jitter):
  config = config_lib.base_config().augment.copy_and_resolve_references()
  config.update(crop_padding=2, flip=True, cutout_size=4)
  config.color_jitter.update(jitter)
  return config


def per_device(fn, num_devices, out_specs):
  """`fn` jitted and mapped over a `data` mesh of `num_devices`, with the arguments of a train
  step: (replicated, per-example, per-example, replicated, per-example, replicated)."""
  return jax.jit(jax.shard_map(fn, mesh=mesh_of(num_devices),
                               in_specs=(P(), P('data'), P('data'), P(), P('data'), P()),
                               out_specs=out_specs))


class Linear(nn.Module):
  """Logits linear in the pixels, so the gradient sees every input pixel."""
  num_classes: int = 4

  @nn.compact
  def __call__(self, x, *, train):
    del train
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.05))(
        x.reshape(x.shape[0], -1))


def test_jittered_train_step_on_8_devices_equals_1_and_differs_from_no_jitter():
  model, optimizer = Linear(), optax.sgd(0.1)
  config = config_lib.base_config()
  state = state_lib.init_train_state(jax.random.PRNGKey(0), model, optimizer,
                                     optim.create_plateau(config), image_mean=np.zeros(3),
                                     image_std=np.ones(3))
  data = np.random.default_rng(0)
  images = data.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
  labels = data.integers(0, model.num_classes, 16).astype(np.int32)
  results = {}
  for jitter, num_devices in (('on', 1), ('on', 8), ('off', 1)):
    settings = JITTER if jitter == 'on' else {}
    fn = functools.partial(step.train_step, model=model, optimizer=optimizer,
                           augment_config=augment_config(**settings), hem_config=config.hem)
    new_state, totals = per_device(fn, num_devices, P())(
        state, images, labels, jax.random.PRNGKey(1), np.arange(16), 0)
    assert np.isfinite(float(totals['loss_sum']))
    results[jitter, num_devices] = jax.device_get(new_state.params['Dense_0'])
  # Each example's jitter depends on its place in the global batch, not on the devices.
  assert_trees_close(results['on', 1], results['on', 8])
  assert not np.allclose(results['on', 1]['kernel'], results['off', 1]['kernel'])


def test_cutout_comes_after_the_jitter_and_cuts_where_it_would_without_it():
  plain_config, jitter_config = augment_config(), augment_config(**JITTER)
  for config in (plain_config, jitter_config):
    config.crop_padding = 0  # So that zeros can only come from the cutout.
  images = np.random.default_rng(0).integers(1, 256, (8, 16, 16, 3), dtype=np.uint8)

  def inputs_of(config):
    def fn(_, images, labels, key, example_ids, epoch):
      return inputs.train_inputs(key, images, labels, augment_config=config, label_smoothing=0.0,
                                 num_classes=4, image_mean=np.zeros(3), image_std=np.ones(3),
                                 input_size=16)[0]
    return np.asarray(per_device(fn, 1, P('data'))(0, images, np.zeros(8, np.int32),
                                                    jax.random.PRNGKey(2), np.arange(8), 0))

  plain = inputs_of(plain_config)
  jittered = inputs_of(jitter_config)
  cut = np.all(plain == 0, axis=-1)
  assert cut.any(axis=(1, 2)).all()  # Every image has its cutout.
  np.testing.assert_array_equal(jittered[cut], 0.0)  # Black, as without jitter.
  assert not np.allclose(jittered[~cut], plain[~cut])


# The config.


@pytest.mark.parametrize('field,value,message', [
    ('brightness', -0.1, r'config.augment.color_jitter.brightness must be >= 0 \(0 is off\), got'),
    ('contrast', -1.0, 'config.augment.color_jitter.contrast must be >= 0'),
    ('saturation', float('nan'), 'config.augment.color_jitter.saturation must be >= 0'),
    ('hue', -0.05, 'config.augment.color_jitter.hue must be >= 0'),
    ('hue', 0.6, r'config.augment.color_jitter.hue must be at most 0.5 \(half the colour wheel\)'),
])
def test_check_config_names_the_bad_jitter_field(field, value, message):
  config = config_lib.base_config()
  config.augment.color_jitter[field] = value
  with pytest.raises(UserError, match=message):
    inputs.check_config(config.augment, 0.0)


def test_the_jitter_variant_is_vgg16_c10_with_jitter_on():
  base = config_lib.from_file(os.path.join(CONFIG_DIR, 'vgg16_c10.py'))
  variant = config_lib.from_file(os.path.join(CONFIG_DIR, 'vgg16_c10_jitter.py'))
  inputs.check_config(variant.augment, variant.label_smoothing)
  jitter = dict(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1)
  assert variant.augment.color_jitter.to_dict() == jitter
  base.augment.color_jitter.update(jitter)
  assert variant.to_dict() == base.to_dict()
