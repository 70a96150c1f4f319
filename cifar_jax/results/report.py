"""Plots and a Markdown summary of a trained run, in WORKDIR/report/.

Written by `python -m cifar_jax.report`, at the end of every training run and by
`cifar_jax.evaluate`:
  learning_curves.png     train/test loss and accuracy per epoch, learning rate, plateau cuts
  confusion_matrix.png    CIFAR-10's classes, or CIFAR-100's 20 superclasses
  per_class_accuracy.png  test accuracy of each class, worst first
  test_predictions.png    test images with predicted and true labels, right and wrong marked
  hardest_train_images.png  the highest-loss training images (what hard example mining upweights)
  report.md               the figures and the numbers (and CIFAR-100's most-confused pairs)
The figures also go to TensorBoard (WORKDIR/tensorboard, the "images" tab).
"""
import logging
import os

import jax
import numpy as np

from cifar_jax import workdir as workdir_lib
from cifar_jax.data import splits as splits_lib
from cifar_jax.results import plots, restore

log = logging.getLogger(__name__)

# Training images scored to find the hardest: a fixed sample, so reports are quick and repeatable.
TRAIN_SAMPLE = 5000
GRID_IMAGES = 32


def confusion(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """Counts [true, predicted]."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels, predictions), 1)
  return matrix


def analyse(trained: restore.Trained, host_splits: dict, split: str = 'test') -> dict:
  """Predictions and metrics on `split`, and the highest-loss images of a training sample."""
  images, labels = host_splits[split]
  num_classes = len(trained.classes['class_names'])
  log_probs = np.asarray(jax.nn.log_softmax(trained.logits(images)))
  predictions = log_probs.argmax(-1)
  losses = -log_probs[np.arange(len(labels)), labels]
  top5 = np.argsort(-log_probs, -1)[:, :5]
  matrix = confusion(labels, predictions, num_classes)
  train_images, train_labels = host_splits['train']
  sample = np.random.default_rng(0).permutation(len(train_labels))[:TRAIN_SAMPLE]
  train_log_probs = np.asarray(jax.nn.log_softmax(trained.logits(train_images[sample])))
  train_losses = -train_log_probs[np.arange(len(sample)), train_labels[sample]]
  hardest = sample[np.argsort(-train_losses)[:GRID_IMAGES]]
  return {
      'split': split, 'checkpoint_step': trained.step,
      'class_names': trained.classes['class_names'], 'images': images, 'labels': labels,
      'predictions': predictions,
      'loss': float(losses.mean()), 'accuracy': float(np.mean(predictions == labels)),
      'top5_accuracy': float(np.mean(np.any(top5 == labels[:, None], -1))),
      'confusion': matrix,
      'per_class_accuracy': np.diag(matrix) / np.maximum(matrix.sum(1), 1),
      'hardest_train': (train_images[hardest], train_labels[hardest],
                        train_log_probs.argmax(-1)[np.argsort(-train_losses)[:GRID_IMAGES]],
                        np.sort(train_losses)[::-1][:GRID_IMAGES]),
  }


def grid_sample(correct: np.ndarray) -> np.ndarray:
  """Up to GRID_IMAGES indices, half right and half wrong where there are enough of each.

  Drawn from a fixed random order, so a split stored class by class shows all its classes.
  """
  order = np.random.default_rng(0).permutation(len(correct))
  right, wrong = order[correct[order]], order[~correct[order]]
  wrong = wrong[:max(GRID_IMAGES // 2, GRID_IMAGES - len(right))]
  right = right[:GRID_IMAGES - len(wrong)]
  return np.sort(np.concatenate([right, wrong]))


def most_confused_pairs(matrix: np.ndarray, names: list[str], count: int = 10) -> list[tuple]:
  """The `count` largest off-diagonal cells as (true name, predicted name, images)."""
  off_diagonal = matrix - np.diag(np.diag(matrix))
  cells = np.argsort(-off_diagonal, axis=None)[:count]
  return [(names[t], names[p], int(off_diagonal[t, p]))
          for t, p in zip(*np.unravel_index(cells, matrix.shape), strict=True)
          if off_diagonal[t, p] > 0]


def write(workdir: str, trained: restore.Trained, analysis: dict, out: str = '') -> str:
  """Writes the figures and report.md into `out` (default WORKDIR/report, and then the figures
  to the workdir's TensorBoard too); returns report.md's path."""
  in_workdir = not out
  out = out or os.path.join(workdir, 'report')
  os.makedirs(out, exist_ok=True)
  names = trained.classes['class_names']
  split = analysis['split']
  figures = {}
  records = workdir_lib.read_metrics(workdir)
  if records:
    figures['learning_curves'] = plots.learning_curves(
        records, os.path.join(out, 'learning_curves.png'))
  coarse = trained.classes.get('coarse_class_names')
  pairs = []
  if coarse:
    fine_to_coarse = np.asarray(trained.classes['fine_to_coarse'])
    matrix = confusion(fine_to_coarse[analysis['labels']],
                       fine_to_coarse[analysis['predictions']], len(coarse))
    figures['confusion_matrix'] = plots.confusion_matrix(
        matrix, coarse, os.path.join(out, 'confusion_matrix.png'),
        f'Confusion between the 20 superclasses ({split} split)')
    pairs = most_confused_pairs(analysis['confusion'], names)
  else:
    figures['confusion_matrix'] = plots.confusion_matrix(
        analysis['confusion'], names, os.path.join(out, 'confusion_matrix.png'),
        f'Confusion matrix ({split} split)')
  figures['per_class_accuracy'] = plots.per_class_accuracy(
      analysis['per_class_accuracy'], names, os.path.join(out, 'per_class_accuracy.png'))
  correct = analysis['predictions'] == analysis['labels']
  shown = grid_sample(correct)
  figures['test_predictions'] = plots.image_grid(
      analysis['images'][shown],
      [f'{names[analysis["predictions"][i]]}\n(true: {names[analysis["labels"][i]]})'
       for i in shown], correct[shown], os.path.join(out, 'test_predictions.png'),
      f'{split.capitalize()} images: predicted (true) labels')
  images, labels, predictions, losses = analysis['hardest_train']
  figures['hardest_train_images'] = plots.image_grid(
      images, [f'{names[t]}, loss {loss:.2f}\n(predicted: {names[p]})'
               for t, p, loss in zip(labels, predictions, losses, strict=True)],
      None, os.path.join(out, 'hardest_train_images.png'),
      f'Highest-loss training images (of a sample of {TRAIN_SAMPLE})')
  if in_workdir:  # Elsewhere, the workdir is left as it is (it may be read-only).
    _to_tensorboard(workdir, figures, trained.step)
  return _write_markdown(out, trained, analysis, figures, pairs)


def _to_tensorboard(workdir: str, figures: dict, step: int) -> None:
  import matplotlib.image  # noqa: PLC0415 (plots chose the backend)
  writer = workdir_lib.tensorboard_writer(workdir)
  try:
    for name, path in figures.items():
      writer.add_image(f'report/{name}', matplotlib.image.imread(path)[..., :3], step,
                       dataformats='HWC')
  finally:
    writer.close()


def _write_markdown(out: str, trained: restore.Trained, analysis: dict, figures: dict,
                    pairs: list) -> str:
  config, names = trained.config, trained.classes['class_names']
  accuracy = analysis['per_class_accuracy']
  worst = ', '.join(f'{names[i]} ({accuracy[i]:.3f})' for i in np.argsort(accuracy)[:3])
  dataset = config.dataset.name
  if config.dataset.source == 'folder':  # Its name is whatever the config says: show the folder.
    dataset += f' (the images in {config.dataset.data_dir})'
  lines = [
      f'# {config.model.name} on {dataset}', '',
      f'Checkpoint step {trained.step}, {analysis["split"]} split of '
      f'{len(analysis["labels"])} images.', '',
      '| metric | value |', '| --- | --- |',
      f'| accuracy | {analysis["accuracy"]:.4f} |',
      f'| top-5 accuracy | {analysis["top5_accuracy"]:.4f} |',
      f'| loss | {analysis["loss"]:.4f} |',
      f'| worst classes | {worst} |',
      '',
  ]
  if pairs:
    lines += ['Most-confused classes (true → predicted: images):', '']
    lines += [f'- {t} → {p}: {n}' for t, p, n in pairs]
    lines.append('')
  lines += [f'![{name}]({os.path.basename(path)})' for name, path in figures.items()]
  path = os.path.join(out, 'report.md')
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return path


def create(workdir: str, which: str = 'best', config=None, out: str = '',
           skip_unwritable: bool = False) -> tuple[str | None, dict]:
  """Restores checkpoint `which`, analyses the test split, writes the report into `out`
  (default WORKDIR/report).

  Returns report.md's path and the analysis. With `skip_unwritable`, a report that cannot be
  written (a read-only workdir, a full disk) is skipped with a warning, and the path is None.
  """
  trained = restore.from_workdir(workdir, which, config)
  _, host_splits = splits_lib.load_splits(trained.config)
  analysis = analyse(trained, host_splits)
  try:
    return write(workdir, trained, analysis, out), analysis
  except OSError as e:
    if not skip_unwritable:
      raise
    log.warning('The report was not written (%s: %s); `python -m cifar_jax.report '
                '--workdir=%s --out=DIR` writes it elsewhere.', e.strerror or e,
                e.filename or out or workdir, workdir)
    return None, analysis
