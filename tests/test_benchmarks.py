"""The benchmark scripts run and report what they measured (on tiny synthetic runs)."""
import importlib.util
import json

import pytest
from conftest import run_command

TINY_AIRBENCH = ('--config.dataset.source=synthetic', '--config.dataset.synthetic_train_size=512',
                 '--config.dataset.synthetic_test_size=200', '--config.eval_batch_size=200',
                 '--config.batch_size=256', '--config.model.widths=(8,16,16)',
                 '--config.model.whiten_examples=256')


def test_race_times_and_scores_the_fast_config(tmp_path):
  result = run_command('benchmarks/race.py', '--sides=cifar_jax', '--runs=2', '--epochs=1',
                       f'--out={tmp_path}', *TINY_AIRBENCH)
  assert result.returncode == 0, result.stderr[-3000:]
  assert '| cifar_jax |' in result.stdout
  race = json.loads((tmp_path / 'race.json').read_text())
  (row,) = race['rows']
  assert row['system'] == 'cifar_jax' and row['runs'] == 2 and row['epochs'] == 1
  for run in race['runs']['cifar_jax']:
    assert 0 <= run['accuracy'] <= 1 and 0 <= run['tta_accuracy'] <= 1 and run['seconds'] > 0
  # Different seeds, so the two runs differ.
  assert race['runs']['cifar_jax'][0] != race['runs']['cifar_jax'][1]
  assert (tmp_path / 'race.md').read_text().startswith('| system |')


def test_race_runs_airbench_on_the_same_images(tmp_path):
  if not all(importlib.util.find_spec(name) for name in ('torch', 'torchvision', 'airbench')):
    pytest.skip('airbench, torch or torchvision is not installed')
  # airbench trains at its own batch of 1024 and drops the last partial batch: two steps.
  result = run_command('benchmarks/race.py', '--sides=airbench', '--runs=1', '--epochs=1',
                       f'--out={tmp_path}', *TINY_AIRBENCH,
                       '--config.dataset.synthetic_train_size=2048')
  assert result.returncode == 0, result.stderr[-3000:]
  (row,) = json.loads((tmp_path / 'race.json').read_text())['rows']
  assert row['system'] == 'airbench' and row['seconds'][0] > 0


def test_throughput_reports_one_json_line():
  result = run_command('benchmarks/throughput.py', '--config=configs/smoke.py', '--steps=2')
  assert result.returncode == 0, result.stderr[-3000:]
  line = json.loads(result.stdout.strip().splitlines()[-1])
  assert line['model'] == 'resnet10' and line['compilations_after_warmup'] == 0
  assert line['step_seconds'] > 0 and line['fixed_batch_step_seconds'] > 0


def test_gpu_suite_smoke_runs_every_section(tmp_path):
  result = run_command('benchmarks/gpu_suite.py', '--smoke', f'--out={tmp_path}')
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((tmp_path / 'suite.json').read_text())
  sections = report['sections']
  assert list(sections) == ['race', 'mining', 'throughput', 'simple_cnn', 'airbench96',
                            'mining_sweep']
  assert all(section['seconds'] > 0 for section in sections.values())
  (row,) = sections['race']['rows']
  assert row['system'] == 'cifar_jax' and row['dtype'] == 'bfloat16'
  mining = sections['mining']['tta_accuracy']
  assert list(mining) == ['off', 'softmax']  # The smoke mode's share of the modes.
  assert all(len(v) == 2 and all(0 <= a <= 1 for a in v) for v in mining.values())
  (throughput,) = sections['throughput']['rows']
  assert throughput['cifar_jax_step_s'] > 0 and throughput['cifar_jax_fixed_batch_step_s'] > 0
  (run,) = sections['simple_cnn']['runs']
  assert run['epoch'] == 1 and 0 <= run['test_accuracy'] <= 1
  (run,) = sections['airbench96']['runs']
  assert 0 <= run['tta_accuracy'] <= 1
  sweep = sections['mining_sweep']['tta_accuracy']
  assert list(sweep) == ['topk 0.1 x2.0']
  assert all(len(v) == 1 for v in sweep.values())
  assert (tmp_path / 'suite.md').read_text().startswith('# cifar_jax on')


def test_gpu_suite_skips_what_its_budget_does_not_cover(tmp_path):
  result = run_command('benchmarks/gpu_suite.py', '--smoke', '--budget_s=0', f'--out={tmp_path}')
  assert result.returncode == 0, result.stderr[-3000:]
  sections = json.loads((tmp_path / 'suite.json').read_text())['sections']
  assert all(s['markdown'].startswith('Skipped') for s in sections.values())
