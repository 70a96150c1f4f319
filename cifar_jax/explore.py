"""Looks at the data a config trains on, before training.

    python -m cifar_jax.explore --config=configs/X.py [--out=explore] [--step=0]
        [--config.FIELD=VALUE ...]

Loads the configured dataset from its source, as training would, and writes into OUT:
  samples.png           8 training images of each class, a row per class
  class_counts.png      images per class in each split (training after any validation hold-out)
  superclass_counts.png the same by CIFAR-100's 20 superclasses (datasets with superclasses)
  counts.json           the same counts
  normalization.json    the per-channel mean and standard deviation inputs are normalised with
  augmented_batch.png   train step `--step`'s batch as the compiled step sees it: the first 32
                        of its images after crop, flip, colour jitter, cutout, RandAugment and
                        mixup or CutMix, denormalised for display, each with its target ("0.70
                        cat + 0.30 dog" when mixed)
and prints the normalisation and the files' paths.

The batch is the one the run draws (the run's key from `config.seed`, the step's rows of the
epoch's order) through the input half of the step, `augment.inputs.train_inputs`, run on this
host's CPU as a one-device run: mixing pairs images within each device's share of a batch, so a
run on several devices pairs and mixes differently; everything else is the same on any number.
"""
import json
import os

import jax
import numpy as np
from absl import app, flags
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from cifar_jax import cli, workdir
from cifar_jax.augment import color_jitter, inputs, normalize
from cifar_jax.data import splits as splits_lib
from cifar_jax.errors import UserError
from cifar_jax.results import data_figures
from cifar_jax.sharding import DATA_AXIS
from cifar_jax.training import state as state_lib
from cifar_jax.training import step as step_lib


def define_flags():
  """Defines this command's flags: when it runs, so that its functions import anywhere (a
  notebook may use several commands' functions, whose flags share names)."""
  global _CONFIG, _OUT, _STEP
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (a get_config() module).',
                                            lock_config=True)
  _OUT = flags.DEFINE_string('out', 'explore', 'Folder for the figures and JSON files.')
  _STEP = flags.DEFINE_integer('step', 0, 'The train step whose batch augmented_batch.png shows.')
  flags.mark_flags_as_required(['config'])


SAMPLES_PER_CLASS = 8
BATCH_SHOWN = 32


def class_counts(labels: np.ndarray, names: list[str]) -> dict[str, int]:
  """{class name: images}, in class order."""
  return dict(zip(names, np.bincount(labels, minlength=len(names)).tolist(), strict=True))


def samples(images: np.ndarray, labels: np.ndarray, num_classes: int,
            per_class: int = SAMPLES_PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
  """uint8 [num_classes * per_class, 32, 32, 3]: the first `per_class` images of each class in a
  fixed random order of the split, and bool [num_classes * per_class]: which slots hold one
  (a class with fewer images leaves the rest empty, zeros)."""
  order = np.random.default_rng(0).permutation(len(labels))
  chosen = np.zeros((num_classes, per_class, *images.shape[1:]), images.dtype)
  present = np.zeros((num_classes, per_class), bool)
  for label in range(num_classes):
    rows = order[labels[order] == label][:per_class]
    chosen[label, :len(rows)] = images[rows]
    present[label, :len(rows)] = True
  return chosen.reshape(-1, *images.shape[1:]), present.reshape(-1)


def augmented_batch(config, images: np.ndarray, labels: np.ndarray, image_stats, num_classes: int,
                    step: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Train step `step`'s batch after the input half of the step, on this host's CPU.

  The run's key, the epoch's order of the training rows, the batch's rows and the step's key are
  the training run's (`step.epoch_permutation`, `step.batch_indices`, `step.key_for_step`); the
  batch goes through `inputs.train_inputs` under `shard_map` on a one-device mesh, as a run on one
  device takes it.

  Returns:
    float32 inputs [B, S, S, 3] in standard units, float32 targets [B, classes], and the batch's
    training rows [B].
  """
  num_train = len(labels)
  steps_per_epoch = step_lib.steps_per_epoch(config.batch_size, num_train)
  cpu = jax.devices('cpu')[0]
  mesh = jax.sharding.Mesh(np.array([cpu]), (DATA_AXIS,))
  epoch = step // steps_per_epoch
  with jax.default_device(cpu):
    run_key = run_key_of(config.seed)
    rows = step_lib.batch_indices(step_lib.epoch_permutation(run_key, epoch, num_train), step,
                                  batch_size=config.batch_size, steps_per_epoch=steps_per_epoch)
    rows = np.asarray(rows)

    def input_half(step_key, batch_images, batch_labels, example_ids, mean, std):
      return inputs.train_inputs(
          step_key, batch_images, batch_labels, augment_config=config.augment,
          label_smoothing=config.label_smoothing, num_classes=num_classes, image_mean=mean,
          image_std=std, input_size=config.model.input_size, run_key=run_key,
          example_ids=example_ids, epoch=epoch)

    mapped = jax.jit(jax.shard_map(
        input_half, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS), P(DATA_AXIS), P(), P()),
        out_specs=(P(DATA_AXIS), P(DATA_AXIS))))
    mean, std = (np.asarray(s, np.float32) for s in image_stats)
    model_inputs, targets = mapped(step_lib.key_for_step(run_key, step), images[rows],
                                   labels[rows], rows.astype(np.int32), mean, std)
  return np.asarray(model_inputs), np.asarray(targets), rows


def run_key_of(seed: int):
  """The run's key, as a fresh train state holds it (`state.run_key`)."""
  return state_lib.run_key(jax.random.PRNGKey(seed))


def displayed(model_inputs: np.ndarray, image_stats) -> np.ndarray:
  """The model's inputs (standard units) back in uint8 pixels: x * std + mean, clipped."""
  mean, std = (np.asarray(s, np.float32) for s in image_stats)
  return np.clip(np.rint((model_inputs * std + mean) * 255), 0, 255).astype(np.uint8)


def target_caption(target: np.ndarray, names: list[str], label_smoothing: float) -> str:
  """'cat', or '0.70 cat\n+ 0.30 dog' for a mixed target: its classes before label smoothing."""
  mixed = (target - label_smoothing / len(names)) / (1 - label_smoothing)
  parts = [(float(mixed[i]), names[i]) for i in np.argsort(-mixed)[:2] if mixed[i] > 0.005]
  if len(parts) == 1 or parts[0][0] > 0.995:
    return parts[0][1]
  return '\n+ '.join(f'{weight:.2f} {name}' for weight, name in parts)


def _augmentations(config) -> str:
  """The augmentations the config turns on, in the order the step applies them."""
  a = config.augment
  jitter = any(a.color_jitter[name] for name in color_jitter.OP_NAMES)
  mixing = ' or '.join(name for name, alpha in (('mixup', a.mixup_alpha),
                                                ('CutMix', a.cutmix_alpha)) if alpha)
  steps = [a.crop_padding and f'crop (padding {a.crop_padding})',
           a.flip and ('alternating flip' if a.alternating_flip else 'flip'),
           jitter and 'colour jitter', a.cutout_size and f'cutout {a.cutout_size}',
           a.randaugment_ops and f'RandAugment {a.randaugment_ops}x{a.randaugment_magnitude:g}',
           mixing, config.label_smoothing and f'label smoothing {config.label_smoothing:g}']
  return ', '.join(s for s in steps if s) or 'no augmentation'


def explore(config, out: str, step: int = 0) -> dict:
  """Writes the figures and JSON files into `out` (see the module's docstring).

  Returns:
    {'files': [paths written], 'normalization': what normalization.json holds, 'captions': the
    targets written under the batch's images, 'batch': `augmented_batch`'s inputs and targets}.
  """
  if step < 0:
    raise UserError(f'--step must be >= 0, got {step}.')
  inputs.check_config(config.augment, config.label_smoothing)
  normalize.check_normalization(config.model.normalization)
  if config.batch_size <= 0:
    raise UserError(f'config.batch_size must be positive, got {config.batch_size}.')
  dataset, host_splits = splits_lib.load_splits(config)
  classes = workdir.classes_of(dataset)
  names = classes['class_names']
  train_images, train_labels = host_splits['train']
  step_lib.steps_per_epoch(config.batch_size, len(train_labels))  # Before any work: it fits.
  os.makedirs(out, exist_ok=True)
  files = []
  what = f'{config.dataset.name} ({config.dataset.source})'

  files.append(data_figures.samples_per_class(
      *samples(train_images, train_labels, len(names)), names, os.path.join(out, 'samples.png'),
      f'{what}: {SAMPLES_PER_CLASS} training images per class'))

  counts = {'class_names': names, 'splits': {}}
  fine_to_coarse = classes['fine_to_coarse']
  for split, (_, labels) in host_splits.items():
    entry = {'images': len(labels), 'per_class': class_counts(labels, names)}
    if fine_to_coarse is not None:
      entry['per_superclass'] = class_counts(np.asarray(fine_to_coarse)[labels],
                                             classes['coarse_class_names'])
    counts['splits'][split] = entry
  files.append(data_figures.class_counts(
      {split: np.array(list(e['per_class'].values())) for split, e in counts['splits'].items()},
      names, os.path.join(out, 'class_counts.png'), f'{what}: images per class'))
  if fine_to_coarse is not None:
    files.append(data_figures.class_counts(
        {split: np.array(list(e['per_superclass'].values()))
         for split, e in counts['splits'].items()},
        classes['coarse_class_names'], os.path.join(out, 'superclass_counts.png'),
        f'{what}: images per superclass', unit='superclass'))
  files.append(_write_json(os.path.join(out, 'counts.json'), counts))

  image_stats = normalize.input_stats(config.model.normalization, train_images)
  kind = config.model.normalization
  stats = {'normalization': kind,
           'from': (f'the {len(train_labels)} training images' if kind == 'split' else
                    'fixed statistics'),
           'units': 'fractions of 255: inputs are (pixel / 255 - mean) / std',
           'mean': [round(float(v), 6) for v in image_stats[0]],
           'std': [round(float(v), 6) for v in image_stats[1]]}
  files.append(_write_json(os.path.join(out, 'normalization.json'), stats))

  model_inputs, targets, _ = augmented_batch(config, train_images, train_labels, image_stats,
                                             len(names), step)
  shown = displayed(model_inputs[:BATCH_SHOWN], image_stats)
  captions = [target_caption(t, names, config.label_smoothing) for t in targets[:BATCH_SHOWN]]
  files.append(data_figures.augmented_batch(
      shown, captions, os.path.join(out, 'augmented_batch.png'),
      f'Step {step}: {len(shown)} of the {config.batch_size} images of its batch as the step '
      f'sees them (one device)\n{_augmentations(config)}'))
  return {'files': files, 'normalization': stats, 'captions': captions,
          'batch': (model_inputs, targets)}


def _write_json(path: str, content: dict) -> str:
  workdir.write_atomically(path, json.dumps(content, indent=1) + '\n')
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  result = cli.run_reporting_user_errors(explore, _CONFIG.value, _OUT.value, _STEP.value)
  stats = result['normalization']
  print(f"normalisation '{stats['normalization']}' ({stats['from']}): mean "
        + ' '.join(f'{c} {v:.4f}' for c, v in zip('RGB', stats['mean'], strict=True)) + ', std '
        + ' '.join(f'{c} {v:.4f}' for c, v in zip('RGB', stats['std'], strict=True)))
  for path in result['files']:
    print(path)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.flags_parser())
