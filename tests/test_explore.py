"""`python -m cifar_jax.explore`: the data a config trains on, looked at before training."""
import functools
import json
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import mesh_of, tiny_config, write_official_cifar100
from conftest import run_command as run
from jax.sharding import PartitionSpec as P
from PIL import Image

from cifar_jax import data, explore
from cifar_jax.augment import normalize
from cifar_jax.errors import UserError
from cifar_jax.results import data_figures
from cifar_jax.sharding import DATA_AXIS
from cifar_jax.training import setup as setup_lib
from cifar_jax.training import step as step_lib
from cifar_jax.training import update as update_lib

# Every augmentation on (RandAugment aside, the slowest to compile; it is one more call in the
# same chain), so the batch shown has been through the whole input half.
AUGMENTED = {'augment.cutout_size': 8, 'augment.alternating_flip': True,
             'augment.padding_mode': 'reflect', 'augment.color_jitter.brightness': 0.3,
             'augment.color_jitter.hue': 0.1, 'augment.mixup_alpha': 1.0,
             'label_smoothing': 0.1}


def image_size(path):
  with Image.open(path) as image:
    assert image.format == 'PNG'
    return image.size


@flax.struct.dataclass
class _State:
  """What the train step reads of a state, and what the input half gave it."""
  step: jax.Array
  rng: jax.Array
  image_mean: jax.Array
  image_std: jax.Array
  inputs: jax.Array
  targets: jax.Array


def the_train_steps_inputs(config, images, labels, stats, step, monkeypatch):
  """(inputs, targets) of train step `step` of a one-device run: the compiled train function's
  own loop and step, with an update half that only keeps what the input half gave it."""

  def keep_inputs(state, inputs, targets, labels, step_key, **unused):
    return state.replace(inputs=inputs, targets=targets), {'count': jnp.sum(labels >= 0)}

  monkeypatch.setattr(update_lib, 'update', keep_inputs)
  steps_per_epoch = len(labels) // config.batch_size
  step_fn = setup_lib.train_step_fn(config, types.SimpleNamespace(num_classes=10), None,
                                    total_steps=2 * steps_per_epoch)
  per_device = functools.partial(
      step_lib.train_steps, num_train=len(labels), batch_size=config.batch_size,
      steps_per_epoch=steps_per_epoch, step_fn=step_fn, device_loop=False)
  # One device, so its share is the whole batch (`check_vma` off: the kept share is replicated).
  train = jax.jit(jax.shard_map(per_device, mesh=mesh_of(1),
                                in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS), P()),
                                out_specs=(P(), P()), check_vma=False))
  state = _State(step=jnp.int32(step), rng=explore.run_key_of(config.seed),
                 image_mean=jnp.asarray(stats[0]), image_std=jnp.asarray(stats[1]),
                 inputs=jnp.zeros(()), targets=jnp.zeros(()))
  state, _ = train(state, images, labels, jnp.int32(step + 1))
  return np.asarray(state.inputs), np.asarray(state.targets)


def test_explore_shows_synthetic_cifar10_and_the_train_steps_own_batch(tmp_path, monkeypatch):
  config = tiny_config(**AUGMENTED)
  step = 8 + 3  # In the second epoch (8 steps each): another order, the flips inverted.
  result = explore.explore(config, str(tmp_path), step)
  assert [p.rsplit('/', 1)[1] for p in result['files']] == [
      'samples.png', 'class_counts.png', 'counts.json', 'normalization.json',
      'augmented_batch.png']
  # 10 rows of 8 images at 2x with the names beside them; 2 panels; 4 rows of 8 at 3x.
  assert image_size(tmp_path / 'samples.png') == (638, 744)
  assert image_size(tmp_path / 'class_counts.png') == (750, 631)
  assert image_size(tmp_path / 'augmented_batch.png') == (822, 548)

  dataset = data.load('cifar10', 'synthetic', synthetic_train_size=256, synthetic_test_size=100)
  counts = json.loads((tmp_path / 'counts.json').read_text())
  assert counts['class_names'] == list(dataset.class_names)
  for split in ('train', 'test'):
    labels = getattr(dataset, split).labels
    assert counts['splits'][split]['images'] == len(labels)
    assert list(counts['splits'][split]['per_class'].values()) == np.bincount(labels).tolist()
    assert 'per_superclass' not in counts['splits'][split]
  stats = json.loads((tmp_path / 'normalization.json').read_text())
  mean, std = normalize.channel_stats(dataset.train.images)
  assert stats['normalization'] == 'split'
  np.testing.assert_allclose(stats['mean'], mean, atol=1e-6)
  np.testing.assert_allclose(stats['std'], std, atol=1e-6)

  # The batch is the one the train step takes at that step...
  inputs, targets = result['batch']
  step_inputs, step_targets = the_train_steps_inputs(
      config, dataset.train.images, dataset.train.labels, (mean, std), step, monkeypatch)
  np.testing.assert_allclose(inputs, step_inputs, atol=1e-5)
  np.testing.assert_allclose(targets, step_targets, atol=1e-6)
  # ...and the PNG's tiles are its first 32 images, pixel for pixel, denormalised.
  png = np.asarray(Image.open(tmp_path / 'augmented_batch.png'))[..., :3]
  grid = data_figures.batch_grid(inputs[:32])
  for index in (0, 13, 31):
    top, left = grid.box(index)
    tile = png[top:top + grid.tile, left:left + grid.tile]
    np.testing.assert_array_equal(tile[::3, ::3],
                                  explore.displayed(step_inputs[index], (mean, std)))
  # Mixup with a weight of Beta(1, 1): captions name the two classes and their shares.
  assert len(result['captions']) == 32
  assert sum('\n+ ' in c for c in result['captions']) >= 24, result['captions']
  names = dataset.class_names
  for target, caption in zip(targets, result['captions'], strict=False):
    first, second = (int(i) for i in np.argsort(-target)[:2])
    weight = (target[first] - 0.1 / 10) / 0.9  # Before label smoothing.
    assert caption == (f'{weight:.2f} {names[first]}\n+ {1 - weight:.2f} {names[second]}'
                       if weight < 0.995 else names[first])


def test_without_augmentation_the_batch_shown_is_the_batchs_own_pixels():
  # What `displayed` undoes is the normalisation alone: with no augmentation the denormalised
  # inputs are the training images of the batch's rows, exactly.
  config = tiny_config(**{'augment.crop_padding': 0, 'augment.flip': False})
  dataset = data.load('cifar10', 'synthetic', synthetic_train_size=256, synthetic_test_size=100)
  stats = normalize.channel_stats(dataset.train.images)
  model_inputs, targets, rows = explore.augmented_batch(
      config, dataset.train.images, dataset.train.labels, stats, 10, step=3)
  assert len(set(rows.tolist())) == len(rows) == config.batch_size
  np.testing.assert_array_equal(explore.displayed(model_inputs, stats), dataset.train.images[rows])
  np.testing.assert_array_equal(targets.argmax(-1), dataset.train.labels[rows])


def test_a_black_training_image_is_shown_and_only_missing_ones_are_blank():
  images = np.full((5, 32, 32, 3), 200, np.uint8)
  images[0] = 0  # A black image of class 0.
  labels = np.array([0, 0, 1, 1, 1])
  chosen, present = explore.samples(images, labels, num_classes=2, per_class=3)
  assert present.tolist() == [True, True, False, True, True, True]
  assert sorted(chosen[:2].reshape(2, -1).max(axis=1).tolist()) == [0, 200]


def test_explore_command_on_a_synthetic_cifar100_in_the_official_format(tmp_path):
  write_official_cifar100(tmp_path)
  out = tmp_path / 'explore'
  result = run('cifar_jax.explore', '--config=configs/smoke.py', f'--out={out}',
               '--config.dataset.name=cifar100', '--config.dataset.source=local',
               f'--config.dataset.data_dir={tmp_path}', '--config.dataset.validation_size=20',
               '--config.augment.cutmix_alpha=1.0')
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[0].startswith("normalisation 'split' (the 300 training images): mean R 0.")
  assert lines[1:] == [str(out / name) for name in (
      'samples.png', 'class_counts.png', 'superclass_counts.png', 'counts.json',
      'normalization.json', 'augmented_batch.png')]
  # 100 rows of 8 images at 1x; 3 panels (train, val, test) of 100 and of 20 bars.
  assert image_size(out / 'samples.png') == (376, 3844)
  assert image_size(out / 'class_counts.png') == (1750, 910)
  assert image_size(out / 'superclass_counts.png') == (1350, 962)
  assert image_size(out / 'augmented_batch.png') == (822, 548)

  dataset = data.load('cifar100', 'local', str(tmp_path), download=False)
  counts = json.loads((out / 'counts.json').read_text())['splits']
  assert list(counts) == ['train', 'test', 'val']
  assert counts['train']['images'] == 300 and counts['val']['images'] == 20
  for split in ('train', 'val'):  # Together, the whole training split.
    assert sum(counts[split]['per_class'].values()) == counts[split]['images']
  per_class = np.add(*(list(counts[s]['per_class'].values()) for s in ('train', 'val')))
  assert per_class.tolist() == np.bincount(dataset.train.labels, minlength=100).tolist()
  per_superclass = np.add(*(list(counts[s]['per_superclass'].values())
                            for s in ('train', 'val')))
  assert per_superclass.tolist() == np.bincount(dataset.train.coarse_labels).tolist()
  assert list(counts['test']['per_superclass']) == list(dataset.coarse_class_names)
  assert list(counts['test']['per_superclass'].values()) == np.bincount(
      dataset.test.coarse_labels).tolist()


@pytest.mark.parametrize('overrides, step, message', [
    ({'augment.mixup_alpha': -1.0}, 0, 'config.augment.mixup_alpha must be >= 0'),
    ({'batch_size': 512}, 0, 'config.batch_size=512 is larger than the 256 training examples'),
    ({}, -1, '--step must be >= 0'),
])
def test_mistakes_are_one_line(tmp_path, overrides, step, message):
  with pytest.raises(UserError, match=message):
    explore.explore(tiny_config(**overrides), str(tmp_path), step)
