"""float16 compute with dynamic loss scaling: a step whose gradients overflow is skipped on
every device, the scale falls and grows again, it resumes exactly, and the loop's guard still
stops a run that diverges."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from conftest import assert_trees_close, assert_trees_close_to_scale, mesh_of, tiny_config
from jax.sharding import PartitionSpec as P

from cifar_jax import config as config_lib
from cifar_jax import models, workdir
from cifar_jax.errors import UserError
from cifar_jax.training import loop, loss_scale, optim, setup
from cifar_jax.training import state as state_lib
from cifar_jax.training.checkpoint import Checkpoints

# At 2**30 the gradient of the logits alone (2**30 / batch 32 per unit of probability) is far
# beyond float16's 65504, so the step overflows; at 2**30 / 2**20 = 1024 it does not. After 2
# finite steps the scale grows back to 2**30 and the next step overflows again.
SCALER = {'model.dtype': 'float16', 'loss_scale.initial': 2.0**30,
          'loss_scale.factor': 2.0**20, 'loss_scale.growth_interval': 2}
TRAINED = ('params', 'batch_stats', 'opt_state', 'ema_params', 'lookahead')


def scaler(state):
  s = state.loss_scale
  return float(s.scale), int(s.finite_steps), int(s.skipped_steps)


def assert_trained_equal(a, b):
  for field in TRAINED:
    assert_trees_close(getattr(a, field), getattr(b, field), rtol=0, atol=0)


def test_an_overflow_is_skipped_on_every_device_the_scale_grows_and_divergence_still_stops(
    tmp_path):
  # EMA on, and lookahead syncing at steps 2 and 4, so that a skipped step must leave both.
  config = tiny_config(**SCALER, **{'steps_per_call': 1, 'ema_decay': 0.9,
                                    'lookahead.every': 2})
  results, runs = {}, {}
  for num_devices in (1, 8):
    run = setup.setup(config, mesh_of(num_devices))
    state = run.new_state()
    states, totals = [jax.device_get(state)], []
    for stop_step in (1, 2, 3, 4):
      state, step_totals = run.train_fn(state, run.splits.train_images, run.splits.train_labels,
                                        jnp.int32(stop_step))
      states.append(jax.device_get(state))
      totals.append(jax.device_get(step_totals))
    results[num_devices] = states, totals
    runs[num_devices] = run, state
  states, totals = results[1]
  assert [int(s.step) for s in states] == [0, 1, 2, 3, 4]
  assert [scaler(s) for s in states] == [(2.0**30, 0, 0), (2.0**10, 0, 1), (2.0**10, 1, 1),
                                         (2.0**30, 0, 1), (2.0**10, 0, 2)]
  assert [int(t['skipped_steps']) for t in totals] == [1, 0, 0, 1]
  # A skipped step trains nothing and adds no examples to the train metrics.
  assert [int(t['count']) for t in totals] == [0, 32, 32, 0]
  assert all(np.isfinite(t['loss_sum']) and t['loss_sum'] > 0 for t in totals[1:3])
  assert_trained_equal(states[1], states[0])
  assert_trained_equal(states[4], states[3])
  # In between, training went on.
  for field in TRAINED:
    assert not np.array_equal(jax.tree.leaves(getattr(states[2], field))[-1],
                              jax.tree.leaves(getattr(states[1], field))[-1]), field
  # Eight devices skip the same steps, with the same scale, and train alike.
  eight_states, eight_totals = results[8]
  assert [scaler(s) for s in eight_states] == [scaler(s) for s in states]
  # float16 rounds differently with each device's share of the work: the largest difference
  # measured, relative to its leaf's largest value, was 1.1e-2 (a momentum trace).
  for one, eight in zip(states, eight_states, strict=True):
    for field in TRAINED:
      assert_trees_close_to_scale(getattr(one, field), getattr(eight, field), tol=3e-2)
  assert_trees_close(totals, eight_totals)

  # A head beyond float16's range overflows every forward pass, at any scale. The loop's guard
  # lets the skipped step pass (its loss is not finite either), then stops the run at the
  # floor, where the step is applied.
  run, state = runs[1]
  head = state.params['head']
  state = state.replace(params={**state.params, 'head': {**head, 'kernel': head['kernel'] + 1e5}})
  checkpoints = Checkpoints(str(tmp_path))
  try:
    state, step_totals = run.train_fn(state, run.splits.train_images, run.splits.train_labels,
                                      jnp.int32(5))
    loop.check_finite(jax.device_get(step_totals), 4, 5, checkpoints, state)
    assert scaler(state) == (1.0, 0, 3)
    state, step_totals = run.train_fn(state, run.splits.train_images, run.splits.train_labels,
                                      jnp.int32(6))
    with pytest.raises(UserError, match='between steps 5 and 6'):
      loop.check_finite(jax.device_get(step_totals), 5, 6, checkpoints, state)
  finally:
    checkpoints.close()


def test_one_device_overflowing_makes_every_device_skip():
  mesh = mesh_of(8)
  values = np.ones(8, np.float32)
  values[3] = np.inf

  def per_device(x):
    return loss_scale.all_finite_on_every_device({'a': x, 'b': jnp.ones(2)})[None]

  decisions = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P('data'),
                                    out_specs=P('data')))
  assert not np.asarray(decisions(values)).any()
  assert np.asarray(decisions(np.ones(8, np.float32))).all()


def test_float16_run_resumes_like_an_uninterrupted_one_and_logs_the_scaler(tmp_path):
  # Steps 1 and 4 overflow, on the device loop (3 steps per call). Stopped after step 2, the
  # scaler is mid-interval (one finite step counted): the resumed run must carry on from it.
  config = tiny_config(**SCALER, max_steps=4)
  run = setup.setup(config, mesh_of(8))  # The mesh the loop uses: every device.
  images, labels = run.splits.train_images, run.splits.train_labels
  stopped, _ = run.train_fn(run.new_state(), images, labels, jnp.int32(2))
  assert scaler(stopped) == (2.0**10, 1, 1)
  checkpoints = Checkpoints(str(tmp_path))
  checkpoints.save(stopped, score=0.0)  # As the loop saves a run it stops.
  checkpoints.close()
  uninterrupted, _ = run.train_fn(stopped, images, labels, jnp.int32(4))
  resumed = loop.train_and_evaluate(config, str(tmp_path))
  assert scaler(resumed) == scaler(uninterrupted) == (2.0**10, 0, 2)
  for field in ('step', 'rng', *TRAINED):
    assert_trees_close(getattr(resumed, field), getattr(uninterrupted, field), rtol=0, atol=0)
  (record,) = workdir.read_metrics(str(tmp_path))
  assert (record['step'], record['skipped_steps'], record['loss_scale']) == (4, 1, 2.0**10)
  assert np.isfinite(record['train_loss'])
  # The schedule reads the optimiser's step count, which skipped steps did not advance.
  schedule = optim.create_schedule(config, steps_per_epoch=8)
  assert record['learning_rate'] == pytest.approx(float(schedule(4 - 1 - 2)))


@pytest.mark.parametrize('field,value', [('initial', 0.5), ('min', 0.0), ('factor', 1.0),
                                         ('growth_interval', 0), ('initial', float('inf'))])
def test_bad_loss_scale_fields_are_refused(field, value):
  config = config_lib.base_config()
  config.loss_scale[field] = value
  with pytest.raises(UserError, match='config.loss_scale'):
    loss_scale.check_config(config.loss_scale)


def test_float16_models_compute_in_float16_with_float32_parameters():
  model = models.create_model('resnet18', num_classes=10, dtype='float16', width=4)
  assert model.dtype == jnp.float16
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                jnp.zeros((1, 32, 32, 3)), train=False))
  assert {np.dtype(leaf.dtype) for leaf in jax.tree.leaves(variables)} == {np.dtype(np.float32)}
  assert loss_scale.enabled(config_lib.model_config('resnet18', dtype='float16'))
  assert not loss_scale.enabled(config_lib.model_config('resnet18', dtype='bfloat16'))


class Linear(nn.Module):
  @nn.compact
  def __call__(self, x, *, train):
    del train
    return nn.Dense(4)(x.reshape(x.shape[0], -1))


def test_a_checkpoint_written_before_the_scaler_existed_restores(tmp_path):
  optimizer = optax.sgd(0.1)
  state = state_lib.init_train_state(
      jax.random.PRNGKey(0), Linear(), optimizer, optim.create_plateau(config_lib.base_config()),
      image_mean=np.zeros(3), image_std=np.ones(3))
  assert state.loss_scale == {}
  checkpoints = Checkpoints(str(tmp_path))
  # Saved as the train state was before it had `loss_scale`.
  old = {name: value for name, value in vars(state).items() if name != 'loss_scale'}
  checkpoints._manager.save(0, args=ocp.args.StandardSave(old), metrics={'score': 0.0})
  checkpoints.wait()
  restored = checkpoints.restore(state, step=0)
  checkpoints.close()
  assert restored.loss_scale == {}
  assert_trees_close(jax.device_get(restored), jax.device_get(state), rtol=0, atol=0)
