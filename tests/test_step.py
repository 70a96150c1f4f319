"""The train step and its recipes, each checked against its formula on a linear model: label
smoothing, the summed loss, SAM, the weight EMA, lookahead, test-time augmentation; and the data
order of an epoch."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from cifar_jax import config as config_lib
from cifar_jax import rng
from cifar_jax.training import evaluation, lookahead, optim, step
from cifar_jax.training import state as state_lib

NUM_CLASSES = 4


class Linear(nn.Module):
  """Logits linear in the pixels, with a random (non-zero) head."""
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x, *, train):
    del train
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.05))(
        x.reshape(x.shape[0], -1))


NO_AUGMENT = config_lib.base_config().augment.copy_and_resolve_references()
NO_AUGMENT.update({'crop_padding': 0, 'flip': False})
NO_HEM = config_lib.base_config().hem.copy_and_resolve_references()


def setup(ema=False):
  model = Linear()
  optimizer = optax.sgd(1.0)  # Update = -gradient, so the gradient can be read off.
  plateau = optim.create_plateau(config_lib.base_config())
  state = state_lib.init_train_state(jax.random.PRNGKey(0), model, optimizer, plateau,
                                     image_mean=np.zeros(3), image_std=np.ones(3), ema=ema)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, NUM_CLASSES, 8).astype(np.int32)
  return model, optimizer, state, images, labels


def run_step(model, optimizer, state, images, labels, **options):
  fn = functools.partial(step.train_step, model=model, optimizer=optimizer,
                         augment_config=NO_AUGMENT, **{'hem_config': NO_HEM, **options})
  mesh = Mesh(np.array(jax.devices()[:1]), ('data',))
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P('data'), P('data'), P(), P('data'), P()),
                         out_specs=(P(), P()))
  return jax.jit(mapped)(state, images, labels, jax.random.PRNGKey(1), np.arange(len(labels)), 0)


def test_mining_starts_after_its_share_of_the_run():
  model, optimizer, state, images, labels = setup()
  hem_config = NO_HEM.copy_and_resolve_references()
  hem_config.update(mode='topk', fraction=0.25, boost=3.0, start_fraction=0.5)
  mined_weight = 3.0 / ((2 * 3.0 + 6) / 8)  # The hardest 2 of 8 at 3x, normalised to mean 1.
  # Of 4 steps, the first 2 (steps 0 and 1) train without mining.
  for step_number, weight_max in ((0, 1.0), (1, 1.0), (2, mined_weight), (3, mined_weight)):
    _, totals = run_step(model, optimizer, state.replace(step=step_number), images, labels,
                         hem_config=hem_config, total_steps=4)
    assert float(totals['hem_weight_max']) == pytest.approx(weight_max), step_number


def mean_loss(model, params, images, labels, smoothing=0.0):
  logits = model.apply({'params': params}, images.astype(jnp.float32) / 255, train=False)
  targets = (1 - smoothing) * jax.nn.one_hot(labels, NUM_CLASSES) + smoothing / NUM_CLASSES
  return jnp.mean(-jnp.sum(targets * jax.nn.log_softmax(logits), -1))


def test_label_smoothing_trains_on_smoothed_targets():
  model, optimizer, state, images, labels = setup()
  new_state, totals = run_step(model, optimizer, state, images, labels, label_smoothing=0.2)
  expected = mean_loss(model, state.params, images, labels, smoothing=0.2)
  assert float(totals['loss_sum']) / 8 == pytest.approx(float(expected), rel=1e-5)
  grads = jax.grad(mean_loss, argnums=1)(model, state.params, images, labels, 0.2)
  jax.tree.map(lambda new, old, g: np.testing.assert_allclose(new, old - g, atol=1e-6),
               new_state.params, state.params, grads)


def test_summed_loss_scales_the_gradient_by_the_global_batch():
  model, optimizer, state, images, labels = setup()
  mean_state, mean_totals = run_step(model, optimizer, state, images, labels)
  sum_state, sum_totals = run_step(model, optimizer, state, images, labels, loss_reduction='sum')
  jax.tree.map(lambda s, m, p: np.testing.assert_allclose(s - p, len(labels) * (m - p),
                                                          rtol=1e-4, atol=1e-6),
               sum_state.params, mean_state.params, state.params)
  assert float(sum_totals['loss_sum']) == pytest.approx(float(mean_totals['loss_sum']))


def test_lookahead_follows_its_recursion():
  # airbench's recursion, written out: every 5 steps avg <- d avg + (1 - d) net and net <- avg,
  # d = 0.95**5 (step / total)**3; after the last step net <- avg.
  every, total = 5, 12
  nets = np.random.default_rng(0).normal(size=(total + 1, 3)).astype(np.float32)
  expected_avg, expected = nets[0].copy(), []
  average = lookahead.init({'w': jnp.asarray(nets[0])}, {'mean': jnp.asarray(nets[0])})
  for i in range(1, total + 1):
    net = nets[i].copy()  # The weights after the optimiser's i-th step.
    if i % every == 0:
      d = 0.95**5 * (i / total) ** 3
      expected_avg = d * expected_avg + (1 - d) * net
      net = expected_avg.copy()
    if i == total:
      net = expected_avg.copy()
    expected.append(net)
    average, params, stats = lookahead.apply(
        average, {'w': jnp.asarray(nets[i])}, {'mean': jnp.asarray(nets[i])},
        jnp.int32(i), every=every, decay=0.95, power=3.0, total_steps=total)
    np.testing.assert_allclose(params['w'], net, rtol=1e-6)
    np.testing.assert_allclose(stats['mean'], net, rtol=1e-6)  # Statistics alike.
  # Between syncs the network moves freely; at a sync it is reset to the average.
  np.testing.assert_allclose(expected[3], nets[4])
  assert not np.allclose(expected[4], nets[5])


def test_sam_descends_with_the_gradient_at_the_ascent_point():
  model, optimizer, state, images, labels = setup()
  rho = 0.5
  new_state, _ = run_step(model, optimizer, state, images, labels, sam_rho=rho)
  grad_fn = jax.grad(mean_loss, argnums=1)
  grads = grad_fn(model, state.params, images, labels)
  norm = optax.tree.norm(grads)
  ascent = jax.tree.map(lambda p, g: p + rho * g / norm, state.params, grads)
  sam_grads = grad_fn(model, ascent, images, labels)
  jax.tree.map(lambda new, old, g: np.testing.assert_allclose(new, old - g, atol=1e-5),
               new_state.params, state.params, sam_grads)
  # And it is not the plain gradient step.
  assert not np.allclose(new_state.params['Dense_0']['kernel'],
                         state.params['Dense_0']['kernel'] - grads['Dense_0']['kernel'])


def test_ema_follows_its_formula():
  model, optimizer, state, images, labels = setup(ema=True)
  decay = 0.9
  ema = state.params
  for _ in range(3):
    state, _ = run_step(model, optimizer, state, images, labels, ema_decay=decay)
    ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, state.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               state.ema_params, ema)


def test_flip_tta_averages_the_logits_of_the_image_and_its_mirror():
  model, _, state, images, _ = setup()
  plain = evaluation.predict(state, images, model=model)
  mirrored = evaluation.predict(state, images[:, :, ::-1], model=model)
  tta = evaluation.predict(state, images, model=model, flip_tta=True)
  np.testing.assert_allclose(tta, (plain + mirrored) / 2, rtol=1e-5, atol=1e-6)
  assert not np.allclose(tta, plain)


class Constant(nn.Module):
  """The same logits for every image."""

  @nn.compact
  def __call__(self, x, *, train):
    del train
    return jnp.broadcast_to(jnp.arange(NUM_CLASSES, dtype=jnp.float32), (x.shape[0], NUM_CLASSES))


def test_translate_tta_weighs_six_views_as_airbench():
  model, _, state, images, _ = setup()
  images = images.astype(np.float32)
  view = functools.partial(evaluation.predict, state, model=model, flip_tta=True)
  padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
  up_left, down_right = padded[:, :32, :32], padded[:, 2:, 2:]
  expected = 0.5 * view(images) + 0.25 * view(up_left) + 0.25 * view(down_right)
  tta = view(images, translate_tta=1)
  np.testing.assert_allclose(tta, expected, rtol=1e-5, atol=1e-6)
  assert not np.allclose(tta, view(images), rtol=1e-4, atol=1e-5)
  # The weights sum to 1: logits that do not depend on the image come out unchanged.
  constant = evaluation.predict(state, images, model=Constant(), flip_tta=True, translate_tta=1)
  np.testing.assert_allclose(constant, np.broadcast_to(np.arange(NUM_CLASSES), constant.shape))
  # A mirror-symmetric image gives the same logits as its mirror view by view, so mirror
  # averaging leaves them as they are.
  symmetric = np.concatenate([images[:, :, :16], images[:, :, :16][:, :, ::-1]], axis=2)
  np.testing.assert_allclose(evaluation.predict(state, symmetric, model=model, flip_tta=True),
                             evaluation.predict(state, symmetric, model=model),
                             rtol=1e-5, atol=1e-6)


def test_an_epoch_visits_distinct_examples_and_epochs_differ():
  permutation = jax.random.permutation(jax.random.PRNGKey(0), 100)
  epoch = [np.asarray(step.batch_indices(permutation, i, batch_size=32, steps_per_epoch=3))
           for i in range(3)]
  assert len(set(np.concatenate(epoch))) == 96  # Three whole batches; 4 rows skipped.
  next_epoch_first = step.batch_indices(permutation, 3, batch_size=32, steps_per_epoch=3)
  np.testing.assert_array_equal(next_epoch_first, epoch[0])  # Same permutation, same slice.


def test_random_streams_are_named_not_counted():
  key = jax.random.PRNGKey(3)
  names = ('init', 'run', 'data_order', 'steps', 'alternating_flip', 'crop_flip', 'randaugment',
           'mixing', 'dropout')
  keys = {name: np.asarray(rng.stream(key, name)) for name in names}
  assert len({k.tobytes() for k in keys.values()}) == len(names)  # All distinct.
  # The name's number (a CRC-32, often above 2**31) folds in alike inside and outside jit.
  np.testing.assert_array_equal(jax.jit(lambda k: rng.stream(k, 'mixing'))(key), keys['mixing'])
  assert not np.array_equal(rng.stream(jax.random.PRNGKey(4), 'mixing'), keys['mixing'])
