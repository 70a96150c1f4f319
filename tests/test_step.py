"""The train step and its recipes, each checked against its formula on a linear model: label
smoothing, SAM, the weight EMA, flip test-time augmentation; and the data order of an epoch."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from cifar_jax import config as config_lib
from cifar_jax import rng
from cifar_jax.training import evaluation, optim, step
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


NO_AUGMENT = ml_collections.ConfigDict({
    'crop_padding': 0, 'flip': False, 'cutout_size': 0, 'randaugment_ops': 0,
    'randaugment_magnitude': 9.0, 'mixup_alpha': 0.0, 'cutmix_alpha': 0.0,
    'mix_switch_prob': 0.5})
NO_HEM = ml_collections.ConfigDict({'mode': 'off', 'fraction': 0.25, 'boost': 2.0,
                                    'temperature': 1.0})


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
                         augment_config=NO_AUGMENT, hem_config=NO_HEM, **options)
  mesh = Mesh(np.array(jax.devices()[:1]), ('data',))
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P('data'), P('data'), P()),
                         out_specs=(P(), P()))
  return jax.jit(mapped)(state, images, labels, jax.random.PRNGKey(1))


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


def test_an_epoch_visits_distinct_examples_and_epochs_differ():
  permutation = jax.random.permutation(jax.random.PRNGKey(0), 100)
  epoch = [np.asarray(step.batch_indices(permutation, i, batch_size=32, steps_per_epoch=3))
           for i in range(3)]
  assert len(set(np.concatenate(epoch))) == 96  # Three whole batches; 4 rows skipped.
  next_epoch_first = step.batch_indices(permutation, 3, batch_size=32, steps_per_epoch=3)
  np.testing.assert_array_equal(next_epoch_first, epoch[0])  # Same permutation, same slice.


def test_random_streams_are_named_not_counted():
  key = jax.random.PRNGKey(3)
  names = ('init', 'run', 'data_order', 'steps', 'crop_flip', 'randaugment', 'mixing', 'dropout')
  keys = {name: np.asarray(rng.stream(key, name)) for name in names}
  assert len({k.tobytes() for k in keys.values()}) == len(names)  # All distinct.
  # The name's number (a CRC-32, often above 2**31) folds in alike inside and outside jit.
  np.testing.assert_array_equal(jax.jit(lambda k: rng.stream(k, 'mixing'))(key), keys['mixing'])
  assert not np.array_equal(rng.stream(jax.random.PRNGKey(4), 'mixing'), keys['mixing'])
