"""The figures of a run, as PNG files: each function draws one figure from plain arrays.

Drawn with matplotlib's non-interactive Agg backend, so they work on machines with no display.
Right and wrong are told apart by colour and by a mark, so they read in greyscale too.
"""
import matplotlib

matplotlib.use('Agg')

import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)
import numpy as np  # noqa: E402

RIGHT, WRONG = '#1a7f37', '#cf222e'  # Green and red.
DPI = 100


def _figure(rows: int, columns: int, size: tuple[float, float], **kwargs):
  # Constrained layout keeps labels inside the figure, so a PNG is exactly `size` * DPI pixels.
  return plt.subplots(rows, columns, figsize=size, layout='constrained', **kwargs)


def _save(figure, path: str) -> str:
  figure.savefig(path, dpi=DPI)
  plt.close(figure)
  return path


def learning_curves(records: list[dict], path: str) -> str:
  """Train and test loss and accuracy per epoch, the learning rate below, plateau cuts marked.

  Args:
    records: The lines of `metrics.jsonl` (one per evaluation).
    path: Where to write the PNG.
  """
  epochs = np.array([r['epoch'] for r in records])
  # Few evaluations are drawn as visible points (one alone is no line), and labelled.
  few = len(records) <= 3
  marker = {'marker': 'o', 'markersize': 6} if few else {'marker': '.'}
  figure, (loss_axis, accuracy_axis, rate_axis) = _figure(
      3, 1, (8, 9), sharex=True, gridspec_kw={'height_ratios': [3, 3, 1.4]})
  for axis, metric in ((loss_axis, 'loss'), (accuracy_axis, 'accuracy')):
    for split, style in (('train', '-'), ('val', ':'), ('test', '--')):
      values = [r.get(f'{split}_{metric}') for r in records]
      if any(v is not None for v in values):
        points = [np.nan if v is None else v for v in values]
        axis.plot(epochs, points, style, label=split, **marker)
        if few:
          for x, y in zip(epochs, points, strict=True):
            axis.annotate(f'{y:.3g}', (x, y), textcoords='offset points', xytext=(6, 4),
                          fontsize=8)
    axis.set_ylabel(metric)
    axis.grid(alpha=0.3)
    axis.legend(loc='best')
  rates = np.array([r['learning_rate'] for r in records])
  rate_axis.plot(epochs, rates, color='black', **marker)
  rate_axis.set_ylabel('learning rate')
  rate_axis.set_xlabel('epoch')
  rate_axis.grid(alpha=0.3)
  if np.all(rates > 0):
    rate_axis.set_yscale('log')
  # A plateau cut: the rate falls to a fraction of the schedule's between two evaluations.
  scales = [r.get('plateau_scale') for r in records]
  for previous, record, scale in zip([None, *scales], records, scales, strict=False):
    if previous is not None and scale is not None and scale < previous:
      for axis in (loss_axis, accuracy_axis, rate_axis):
        axis.axvline(record['epoch'], color='grey', linestyle='-.', linewidth=1)
      accuracy_axis.annotate('plateau cut', (record['epoch'], accuracy_axis.get_ylim()[0]),
                             rotation=90, va='bottom', ha='right', fontsize=8, color='grey')
  if few:
    # From the start of training, so a lone first evaluation is not centred in an empty plot.
    rate_axis.set_xlim(0, max(epochs.max(), 1e-3) * 1.15)
  loss_axis.set_title('Learning curves' + (' (one evaluation so far)' if len(records) == 1 else ''))
  return _save(figure, path)


def confusion_matrix(matrix: np.ndarray, names: list[str], path: str, title: str) -> str:
  """Row-normalised confusion matrix (rows: true class, columns: predicted), counts in cells."""
  rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
  size = max(6.0, 0.45 * len(names) + 2)
  figure, axis = _figure(1, 1, (size, size))
  image = axis.imshow(rates, cmap='Blues', vmin=0, vmax=1)
  axis.set_xticks(range(len(names)), names, rotation=60, ha='right', fontsize=9)
  axis.set_yticks(range(len(names)), names, fontsize=9)
  axis.set_xlabel('predicted')
  axis.set_ylabel('true')
  axis.set_title(title)
  if len(names) <= 20:
    for (row, column), count in np.ndenumerate(matrix):
      axis.text(column, row, str(count), ha='center', va='center', fontsize=7,
                color='white' if rates[row, column] > 0.5 else 'black')
  figure.colorbar(image, ax=axis, shrink=0.8, label='share of the true class')
  return _save(figure, path)


def per_class_accuracy(accuracy: np.ndarray, names: list[str], path: str) -> str:
  """Horizontal bars of each class's test accuracy, worst at the top."""
  order = np.argsort(accuracy)
  figure, axis = _figure(1, 1, (7, max(3.0, 0.22 * len(names) + 1)))
  axis.barh(range(len(names)), accuracy[order], color='#0969da')
  if len(names) <= 20:  # Values beside the bars, so a zero still reads as one.
    for row, value in enumerate(accuracy[order]):
      axis.text(min(value + 0.01, 0.93), row, f'{value:.2f}', va='center', fontsize=7)
  axis.set_yticks(range(len(names)), [names[i] for i in order], fontsize=8)
  axis.invert_yaxis()
  axis.set_xlim(0, 1)
  axis.axvline(float(np.mean(accuracy)), color='black', linestyle='--', linewidth=1,
               label=f'mean {np.mean(accuracy):.3f}')
  axis.set_xlabel('test accuracy')
  axis.set_title('Per-class accuracy')
  axis.legend(loc='best')
  return _save(figure, path)


def image_grid(images: np.ndarray, captions: list[str], correct: np.ndarray | None, path: str,
               title: str, columns: int = 8) -> str:
  """A grid of uint8 images [N, 32, 32, 3] with a caption each.

  Args:
    correct: Per image, whether the prediction was right: a green caption and frame with a check
      mark, or a red one with a cross. None draws every caption in black (no verdict).
  """
  rows = int(np.ceil(len(images) / columns))
  figure, axes = _figure(rows, columns, (1.9 * columns, 2.4 * rows), squeeze=False)
  for index, axis in enumerate(axes.flat):
    axis.set_xticks([])
    axis.set_yticks([])
    if index >= len(images):
      axis.set_axis_off()
      continue
    axis.imshow(images[index], interpolation='nearest')
    caption, colour = captions[index], 'black'
    if correct is not None:
      colour = RIGHT if correct[index] else WRONG
      caption = f'{"✓" if correct[index] else "✗"} {caption}'
      for spine in axis.spines.values():
        spine.set_color(colour)
        spine.set_linewidth(3)
    axis.set_title(caption, color=colour, fontsize=8)
  figure.suptitle(title)
  return _save(figure, path)


def accuracy_bars(labels: list[str], final: list[float], best: list[float], path: str) -> str:
  """Final and best test accuracy of several runs, side by side."""
  positions = np.arange(len(labels))
  figure, axis = _figure(1, 1, (max(5.0, 1.3 * len(labels) + 2), 4.5))
  axis.bar(positions - 0.2, final, 0.4, label='final', color='#0969da')
  axis.bar(positions + 0.2, best, 0.4, label='best', color='#8250df')
  for x, value in zip(positions, final, strict=True):
    axis.text(x - 0.2, value, f'{value:.3f}', ha='center', va='bottom', fontsize=8)
  axis.set_xticks(positions, labels, rotation=20, ha='right')
  axis.set_ylim(0, 1.08)
  axis.set_ylabel('test accuracy')
  axis.set_title('Runs compared')
  axis.legend(loc='upper left')
  return _save(figure, path)
