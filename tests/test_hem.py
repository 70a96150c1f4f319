"""Hard example mining weights: values, normalisation, and independence of the device count."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from cifar_jax.training import hem

SETTINGS = dict(fraction=0.25, boost=3.0, temperature=0.5)


def weights_on(num_devices, losses, mode):
  mesh = Mesh(np.array(jax.devices()[:num_devices]), ('data',))
  fn = functools.partial(hem.example_weights, mode=mode, axis_name='data', **SETTINGS)
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=P('data'), out_specs=(P('data'), P()))
  weights, stats = jax.jit(mapped)(jnp.asarray(losses))
  return np.asarray(weights), jax.device_get(stats)


@pytest.fixture
def losses():
  return np.random.default_rng(0).exponential(size=32).astype(np.float32)


def test_off_is_all_ones(losses):
  weights, stats = weights_on(8, losses, 'off')
  np.testing.assert_array_equal(weights, 1.0)
  assert stats['hem_ess'] == pytest.approx(1.0)


def test_topk_boosts_exactly_the_hardest_fraction(losses):
  weights, stats = weights_on(8, losses, 'topk')
  hardest = np.argsort(-losses)[:8]  # 25% of 32.
  mean = (8 * 3.0 + 24) / 32
  expected = np.full(32, 1.0 / mean)
  expected[hardest] = 3.0 / mean
  np.testing.assert_allclose(weights, expected, rtol=1e-6)
  assert weights.mean() == pytest.approx(1.0)
  assert stats['hem_weight_max'] == pytest.approx(3.0 / mean)
  assert stats['hem_ess'] == pytest.approx(1.0 / np.mean(expected**2), rel=1e-5)


def test_topk_ties_never_boost_more_than_the_fraction():
  weights, _ = weights_on(8, np.ones(32, np.float32), 'topk')
  assert np.sum(weights > 1.0) == 8


def test_softmax_weights_follow_exp_loss_over_temperature(losses):
  weights, _ = weights_on(8, losses, 'softmax')
  expected = np.exp(losses / 0.5)
  np.testing.assert_allclose(weights, expected / expected.mean(), rtol=1e-5)


def test_softmax_is_finite_for_large_losses():
  weights, _ = weights_on(8, np.linspace(0, 500, 32, dtype=np.float32), 'softmax')
  assert np.all(np.isfinite(weights)) and weights.mean() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize('mode', ['topk', 'softmax'])
def test_one_device_and_eight_give_the_same_weights(losses, mode):
  one, one_stats = weights_on(1, losses, mode)
  eight, eight_stats = weights_on(8, losses, mode)
  np.testing.assert_allclose(one, eight, rtol=1e-6)
  for k in one_stats:
    assert one_stats[k] == pytest.approx(eight_stats[k], rel=1e-6)


def test_weights_carry_no_gradient(losses):
  def weighted_sum(x):
    mesh = Mesh(np.array(jax.devices()[:1]), ('data',))
    fn = functools.partial(hem.example_weights, mode='softmax', axis_name='data', **SETTINGS)
    w, _ = jax.shard_map(fn, mesh=mesh, in_specs=P('data'), out_specs=(P('data'), P()))(x)
    return jnp.sum(w)
  np.testing.assert_array_equal(jax.grad(weighted_sum)(jnp.asarray(losses)), 0.0)
