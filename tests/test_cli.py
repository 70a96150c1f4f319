"""The command-line entry points, run as a user runs them."""
import json
import os

import pytest
from conftest import run_command as run


def test_smoke_config_trains_and_writes_its_outputs(smoke_workdir):
  assert json.load(open(smoke_workdir / 'config.json'))['dataset']['source'] == 'synthetic'
  records = [json.loads(line) for line in open(smoke_workdir / 'metrics.jsonl')]
  assert [r['epoch'] for r in records] == [1, 2, 3]
  assert os.listdir(smoke_workdir / 'tensorboard')
  assert '24' in os.listdir(smoke_workdir / 'checkpoints')  # The latest; the best is kept too.


def test_evaluate_prints_one_json_line(smoke_workdir):
  result = run('cifar_jax.evaluate', f'--workdir={smoke_workdir}', '--checkpoint=latest')
  assert result.returncode == 0, result.stderr[-3000:]
  (line,) = result.stdout.strip().splitlines()
  assert 'read only' not in result.stderr and 'read_only' not in result.stderr  # No notices.
  metrics = json.loads(line)
  assert metrics['checkpoint_step'] == 24 and metrics['num_examples'] == 256
  assert set(metrics['per_class_accuracy']) >= {'airplane', 'truck'}
  last = [json.loads(line) for line in open(smoke_workdir / 'metrics.jsonl')][-1]
  assert metrics['test_accuracy'] == pytest.approx(last['test_accuracy'])
  assert metrics['test_top5_accuracy'] == pytest.approx(last['test_top5_accuracy'])


def test_evaluate_applies_config_overrides(smoke_workdir):
  result = run('cifar_jax.evaluate', f'--workdir={smoke_workdir}',
               '--config.dataset.synthetic_test_size=128')
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout)['num_examples'] == 128


@pytest.mark.parametrize('module,flags,message', [
    ('cifar_jax.main', ['--config=configs/smoke.py', '--config.bach_size=8'],
     'Did you mean "batch_size"'),
    ('cifar_jax.main', ['--config=configs/smoke.py', '--config.hem.mode=hardest'],
     "config.hem.mode='hardest' is not one of off, topk, softmax"),
    ('cifar_jax.main', ['--config=configs/no_such_config.py'], 'no_such_config.py'),
    ('cifar_jax.main', ['--config=configs/smoke.py', '--config.dataset.source=local',
                        '--config.dataset.data_dir=EMPTY', '--config.dataset.download=False'],
     'CIFAR-10 was not found'),
    ('cifar_jax.evaluate', [], 'config.json not found'),
])
def test_user_mistakes_get_one_clear_error_and_no_traceback(tmp_path, module, flags, message):
  empty = tmp_path / 'empty'
  empty.mkdir()
  flags = [f.replace('EMPTY', str(empty)) for f in flags]
  result = run(module, *flags, f'--workdir={tmp_path / "workdir"}')
  assert result.returncode != 0
  assert message in result.stderr
  assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('module', ['cifar_jax.main', 'cifar_jax.evaluate', 'cifar_jax.report',
                                    'cifar_jax.predict', 'cifar_jax.compare', 'cifar_jax.explore'])
def test_help_exits_cleanly_with_the_usage(module):
  result = run(module, '--help')
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'python -m {module}' in result.stdout and '--' in result.stdout


def test_predict_imports_no_training_code():
  result = run('cifar_jax.predict', '--help', env=dict(os.environ, PYTHONPROFILEIMPORTTIME='1'))
  assert result.returncode == 0
  imported = {line.rsplit('|', 1)[-1].strip() for line in result.stderr.splitlines()}
  assert 'cifar_jax.results.restore' in imported  # The profile lists the project's modules.
  for module in ('cifar_jax.training.loop', 'cifar_jax.training.setup',
                 'cifar_jax.training.step', 'cifar_jax.training.update',
                 'cifar_jax.augment.inputs', 'cifar_jax.training.optim'):
    assert module not in imported
