"""One table of several runs, as Markdown (printed) and CSV, and a bar chart of their accuracy.

    python -m cifar_jax.compare DIR... [--out=compare]

Reads only each workdir's `config.json`, `classes.json` and `metrics.jsonl`, so it works on
finished, interrupted and running workdirs alike, without the data or a device. Writes
OUT/runs.md, OUT/runs.csv and OUT/accuracy.png.
"""
import csv
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from cifar_jax import cli, models
from cifar_jax import workdir as workdir_lib
from cifar_jax.errors import UserError
from cifar_jax.results import plots

_OUT = flags.DEFINE_string('out', 'compare', 'Folder for runs.md, runs.csv and accuracy.png.')

COLUMNS = ('run', 'model', 'dataset', 'source', 'parameters', 'epochs', 'status', 'wall_time',
           'images_per_sec', 'best_test_accuracy', 'final_test_accuracy',
           'final_test_top5_accuracy', 'hem_mode')


def count_parameters(config, num_classes: int) -> int:
  """Parameters of the run's model, from shapes alone (nothing is computed)."""
  model = models.from_config(config.model, num_classes)
  size = config.model.input_size
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, size, size, 3)), train=False))
  return models.count_params(shapes['params'])


def status(config, records: list[dict]) -> str:
  """'finished', 'partial' (interrupted or still running) or 'not evaluated yet'."""
  if not records:
    return 'not evaluated yet'
  last = records[-1]
  if last['epoch'] >= config.num_epochs - 1e-9 or (config.max_steps and
                                                  last['step'] >= config.max_steps):
    return 'finished'
  return 'partial'


def _duration(seconds: float | None) -> str:
  if seconds is None:
    return ''
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s'


def summarize(workdir: str) -> dict:
  """One row of the table for `workdir`.

  Raises:
    UserError: if `workdir` holds no config.json (it is not a workdir).
  """
  if not os.path.exists(os.path.join(workdir, 'config.json')):
    raise UserError(f'{workdir} holds no config.json: is it a workdir written by '
                    '`python -m cifar_jax.main`?')
  config = workdir_lib.load_config(workdir)
  records = workdir_lib.read_metrics(workdir)
  # A run writes classes.json as it starts; the dataset's name tells as much before that.
  num_classes = (len(workdir_lib.load_classes(workdir)['class_names'])
                 if os.path.exists(os.path.join(workdir, 'classes.json'))
                 else {'cifar10': 10, 'cifar100': 100}[config.dataset.name])
  speeds = [r['images_per_sec'] for r in records if r.get('images_per_sec')]
  accuracies = [r['test_accuracy'] for r in records if 'test_accuracy' in r]
  last = records[-1] if records else {}
  return {
      'run': os.path.basename(os.path.normpath(workdir)),
      'model': config.model.name,
      'dataset': config.dataset.name,
      # 'local' (the official archives), 'tfds' or 'synthetic' (random data, not CIFAR).
      'source': config.dataset.source,
      'parameters': count_parameters(config, num_classes),
      'epochs': f'{last["epoch"]:g}' if records else '0',
      'status': status(config, records),
      'wall_time': _duration(last.get('wall_seconds')),
      'images_per_sec': round(float(np.mean(speeds))) if speeds else '',
      'best_test_accuracy': max(accuracies) if accuracies else '',
      'final_test_accuracy': last.get('test_accuracy', ''),
      'final_test_top5_accuracy': last.get('test_top5_accuracy', ''),
      'hem_mode': config.hem.mode,
  }


def markdown(rows: list[dict]) -> str:
  def cell(value):
    if isinstance(value, float):
      return f'{value:.4f}'
    if isinstance(value, int) and not isinstance(value, bool):
      return f'{value:,}'
    return str(value)

  lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + ' --- |' * len(COLUMNS)]
  lines += ['| ' + ' | '.join(cell(row[c]) for c in COLUMNS) + ' |' for row in rows]
  return '\n'.join(lines) + '\n'


def compare(workdirs: list[str], out: str) -> str:
  """Writes runs.md, runs.csv and accuracy.png into `out`; returns the Markdown table."""
  rows = [summarize(workdir) for workdir in workdirs]
  os.makedirs(out, exist_ok=True)
  table = markdown(rows)
  with open(os.path.join(out, 'runs.md'), 'w') as f:
    f.write(table)
  with open(os.path.join(out, 'runs.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  evaluated = [row for row in rows if row['final_test_accuracy'] != '']
  if evaluated:
    plots.accuracy_bars([row['run'] for row in evaluated],
                        [row['final_test_accuracy'] for row in evaluated],
                        [row['best_test_accuracy'] for row in evaluated],
                        os.path.join(out, 'accuracy.png'))
  return table


def main(argv):
  if len(argv) < 2:
    raise app.UsageError('name one or more workdirs after the flags.')
  print(cli.run_reporting_user_errors(compare, argv[1:], _OUT.value), end='')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser())
