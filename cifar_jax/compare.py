"""One table of several runs, as Markdown (printed) and CSV, and a bar chart of their accuracy.

    python -m cifar_jax.compare DIR... [--out=compare]
    python -m cifar_jax.compare DIR... --group_by=hem.mode [--pair_by=seed] [--baseline=off]

Reads only each workdir's `config.json`, `classes.json` and `metrics.jsonl`, so it works on
finished, interrupted and running workdirs alike, without the data or a device. Writes
OUT/runs.md, OUT/runs.csv and OUT/accuracy.png.

An ablation is several groups of runs that differ in one config field and repeat over seeds.
`--group_by=FIELD` adds one row per value of FIELD (OUT/groups.md and .csv): the final test
accuracy's mean and sample standard deviation over the group's finished runs, and each group
minus the baseline group paired by `--pair_by` (runs with equal seeds are compared, so the
seed's own spread cancels): the mean and sd of those differences and how many were positive.
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


def define_flags():
  """Defines this command's flags: when it runs, so that its functions import anywhere (a
  notebook may use several commands' functions, whose flags share names)."""
  global _OUT, _GROUP_BY, _PAIR_BY, _BASELINE
  _OUT = flags.DEFINE_string('out', 'compare', 'Folder for runs.md, runs.csv and accuracy.png.')
  _GROUP_BY = flags.DEFINE_string(
      'group_by', '', 'A config field, e.g. hem.mode: also tabulate the runs grouped by its value '
      '(groups.md, groups.csv).')
  _PAIR_BY = flags.DEFINE_string('pair_by', 'seed', 'The config field that pairs runs of '
                                 'different groups for the differences (with --group_by).')
  _BASELINE = flags.DEFINE_string('baseline', '', 'The group the others are compared with '
                                  '(with --group_by); default: the first group named.')


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
  # A run writes classes.json as it starts; before that, CIFAR's name tells the class count,
  # while an image folder's is unknown (the table reads no data): no parameter count then.
  if os.path.exists(os.path.join(workdir, 'classes.json')):
    num_classes = len(workdir_lib.load_classes(workdir)['class_names'])
  elif config.dataset.source == 'folder':
    num_classes = None
  else:
    num_classes = {'cifar10': 10, 'cifar100': 100}[config.dataset.name]
  speeds = [r['images_per_sec'] for r in records if r.get('images_per_sec')]
  accuracies = [r['test_accuracy'] for r in records if 'test_accuracy' in r]
  last = records[-1] if records else {}
  return {
      'run': os.path.basename(os.path.normpath(workdir)),
      'model': config.model.name,
      'dataset': config.dataset.name,
      # 'local' (the official archives), 'tfds', 'synthetic' (random data, not CIFAR) or
      # 'folder' (image files).
      'source': config.dataset.source,
      'parameters': count_parameters(config, num_classes) if num_classes else '',
      'epochs': f'{last["epoch"]:g}' if records else '0',
      'status': status(config, records),
      'wall_time': _duration(last.get('wall_seconds')),
      'images_per_sec': round(float(np.mean(speeds))) if speeds else '',
      'best_test_accuracy': max(accuracies) if accuracies else '',
      'final_test_accuracy': last.get('test_accuracy', ''),
      'final_test_top5_accuracy': last.get('test_top5_accuracy', ''),
      'hem_mode': config.hem.mode,
  }


def markdown(rows: list[dict], columns=COLUMNS) -> str:
  def cell(value):
    if isinstance(value, float):
      return f'{value:.4f}'
    if isinstance(value, int) and not isinstance(value, bool):
      return f'{value:,}'
    return str(value)

  lines = ['| ' + ' | '.join(columns) + ' |', '|' + ' --- |' * len(columns)]
  lines += ['| ' + ' | '.join(cell(row[c]) for c in columns) + ' |' for row in rows]
  return '\n'.join(lines) + '\n'


def config_value(config, field: str, workdir: str) -> str:
  """The value of a dotted config field ('hem.mode') as text."""
  value = config
  for name in field.split('.'):
    if name not in value:
      raise UserError(f'{workdir}/config.json has no field {field!r} (--group_by / --pair_by '
                      'name a config field such as hem.mode or seed).')
    value = value[name]
  return str(value)


GROUP_COLUMNS = ('group', 'runs', 'mean_test_accuracy', 'sd_test_accuracy', 'paired_runs',
                 'mean_difference', 'sd_difference', 'improved')


def _sd(values: list[float]) -> float | str:
  return float(np.std(values, ddof=1)) if len(values) > 1 else ''


def group_rows(rows: list[dict], groups: list[str], pairs: list[str],
               baseline: str) -> list[dict]:
  """One row per group of finished runs: accuracy mean ± sd, and minus `baseline` paired.

  `groups[i]` and `pairs[i]` are run i's group and pairing values; unfinished runs are left
  out, since their accuracy is not the recipe's.
  """
  accuracy = {}  # group -> {pair value: final test accuracy}
  for row, group, pair in zip(rows, groups, pairs, strict=True):
    if row['status'] != 'finished' or row['final_test_accuracy'] == '':
      continue
    by_pair = accuracy.setdefault(group, {})
    if pair in by_pair:
      raise UserError(f'two finished runs of group {group!r} have the same pairing value '
                      f'{pair!r} (runs {row["run"]} and another): name each run once, or pair '
                      'by another field with --pair_by.')
    by_pair[pair] = row['final_test_accuracy']
  if not accuracy:
    raise UserError('none of the runs has finished and been evaluated, so there is nothing '
                    'to group.')
  baseline = baseline or next(g for g in dict.fromkeys(groups) if g in accuracy)
  if baseline not in accuracy:
    raise UserError(f'no finished run has the baseline value {baseline!r}; the groups are: '
                    f'{", ".join(accuracy)}.')
  result = []
  for group in dict.fromkeys(groups):
    if group not in accuracy:
      continue
    values = list(accuracy[group].values())
    shared = [p for p in accuracy[group] if p in accuracy[baseline]]
    differences = [accuracy[group][p] - accuracy[baseline][p] for p in shared]
    compared = group != baseline and differences
    result.append({
        'group': group, 'runs': len(values),
        'mean_test_accuracy': float(np.mean(values)), 'sd_test_accuracy': _sd(values),
        'paired_runs': len(differences) if compared else '',
        'mean_difference': float(np.mean(differences)) if compared else '',
        'sd_difference': _sd(differences) if compared else '',
        'improved': f'{sum(d > 0 for d in differences)}/{len(differences)}' if compared else '',
    })
  return result


def _write_table(out: str, name: str, rows: list[dict], columns) -> str:
  table = markdown(rows, columns)
  with open(os.path.join(out, f'{name}.md'), 'w') as f:
    f.write(table)
  with open(os.path.join(out, f'{name}.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
  return table


def compare(workdirs: list[str], out: str, group_by: str = '', pair_by: str = 'seed',
            baseline: str = '') -> str:
  """Writes runs.md, runs.csv and accuracy.png into `out` (and groups.md, groups.csv with
  `group_by`); returns the Markdown table(s)."""
  rows = [summarize(workdir) for workdir in workdirs]
  groups_table = ''
  if group_by:
    configs = {w: workdir_lib.load_config(w) for w in workdirs}
    grouped = group_rows(rows, [config_value(configs[w], group_by, w) for w in workdirs],
                         [config_value(configs[w], pair_by, w) for w in workdirs], baseline)
  os.makedirs(out, exist_ok=True)
  table = _write_table(out, 'runs', rows, COLUMNS)
  if group_by:
    groups_table = (f'\nGrouped by {group_by}, differences paired by {pair_by}:\n\n'
                    + _write_table(out, 'groups', grouped, GROUP_COLUMNS))
  evaluated = [row for row in rows if row['final_test_accuracy'] != '']
  if evaluated:
    plots.accuracy_bars([row['run'] for row in evaluated],
                        [row['final_test_accuracy'] for row in evaluated],
                        [row['best_test_accuracy'] for row in evaluated],
                        os.path.join(out, 'accuracy.png'))
  return table + groups_table


def main(argv):
  if len(argv) < 2:
    raise app.UsageError('name one or more workdirs after the flags.')
  print(cli.run_reporting_user_errors(compare, argv[1:], _OUT.value, _GROUP_BY.value,
                                      _PAIR_BY.value, _BASELINE.value), end='')


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.flags_parser())
