"""What survives what: damaged checkpoints and metrics, a second run, interrupts at any moment.

Every recovery here ends where an uninterrupted run ends: the same final parameters.
"""
import fcntl
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REPO, assert_trees_close, run_command, tiny_config

from cifar_jax import sharding
from cifar_jax import workdir as workdir_lib
from cifar_jax.errors import UserError
from cifar_jax.training import checkpoint as checkpoint_lib
from cifar_jax.training import loop
from cifar_jax.training import setup as setup_lib
from cifar_jax.training.checkpoint import Checkpoints

# `tiny_config`: 8 steps an epoch, 2 epochs, evaluated and saved at steps 8 and 16.
FINAL_STEP = 16


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """An uninterrupted run's workdir and final state; tests damage copies of the workdir."""
  workdir = tmp_path_factory.mktemp('trained')
  state = loop.train_and_evaluate(tiny_config(), str(workdir))
  return workdir, jax.device_get(state)


def copy_of(trained, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(trained[0], workdir)
  return workdir


def checkpoint_files(workdir, step):
  """The data files of checkpoint `step`, largest first."""
  root = workdir / 'checkpoints' / str(step)
  files = [p for p in root.rglob('*') if p.is_file() and p.name != checkpoint_lib.CHECKSUMS]
  return sorted(files, key=lambda p: -p.stat().st_size)


def garble(path, size=4096):
  data = bytearray(path.read_bytes())
  start = len(data) // 2 - min(size, len(data)) // 2
  data[start:start + size] = os.urandom(len(data[start:start + size]))
  path.write_bytes(bytes(data))


def damage(workdir, how, step=FINAL_STEP):
  largest = checkpoint_files(workdir, step)[0]
  default = workdir / 'checkpoints' / str(step) / 'default'
  if how == 'garbled':
    garble(largest)
  elif how == 'truncated':
    largest.write_bytes(largest.read_bytes()[:len(largest.read_bytes()) // 3])
  elif how == 'missing_process_files':
    shutil.rmtree(default / 'ocdbt.process_0')
  elif how == 'missing_metadata':
    (default / '_METADATA').unlink()
  elif how == 'garbled_without_checksums':
    (workdir / 'checkpoints' / str(step) / checkpoint_lib.CHECKSUMS).unlink()
    for path in checkpoint_files(workdir, step):
      if '/d/' in str(path):
        garble(path)
  elif how == 'all_garbled':
    for path in checkpoint_files(workdir, step):
      path.write_bytes(os.urandom(path.stat().st_size))
  else:
    raise ValueError(how)


@pytest.mark.parametrize('how', ['garbled', 'truncated', 'missing_process_files',
                                 'missing_metadata', 'garbled_without_checksums'])
def test_a_damaged_checkpoint_is_set_aside_and_training_resumes_from_the_intact_one(
    trained, tmp_path, how, caplog):
  workdir = copy_of(trained, tmp_path)
  damage(workdir, how)
  state = loop.train_and_evaluate(tiny_config(), str(workdir))
  assert f'checkpoint {FINAL_STEP} is damaged' in caplog.text
  # Nothing is deleted: the damaged checkpoint is kept aside, and the redone steps saved anew.
  assert (workdir / checkpoint_lib.DAMAGED_DIR / str(FINAL_STEP)).is_dir()
  assert Checkpoints(str(workdir), read_only=True).latest_step() == FINAL_STEP
  assert_trees_close(jax.device_get(state), trained[1], rtol=1e-5, atol=1e-6)
  # Every step is recorded once, the redone one with its new record.
  assert [r['step'] for r in workdir_lib.read_metrics(str(workdir))] == [8, FINAL_STEP]
  assert len((workdir / 'metrics.jsonl').read_text().splitlines()) == 2


def test_no_intact_checkpoint_is_one_error_that_changes_nothing(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  for step in (8, FINAL_STEP):
    damage(workdir, 'all_garbled', step)
  with pytest.raises(UserError, match=r'no intact checkpoint in .*step 16: .*step 8: .*move '):
    loop.train_and_evaluate(tiny_config(), str(workdir))
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['16', '8']
  assert not (workdir / checkpoint_lib.DAMAGED_DIR).exists()


def test_evaluating_a_damaged_checkpoint_names_it(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  damage(workdir, 'garbled')
  garbled = checkpoint_files(workdir, 16)[0].relative_to(workdir / 'checkpoints' / '16')
  result = run_command('cifar_jax.evaluate', f'--workdir={workdir}', '--checkpoint=16')
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      f'error: checkpoint 16 is damaged: {garbled} differs from its checksum. Choose another '
      'with --checkpoint=STEP (saved: [8, 16]).']


def test_a_checkpoint_saved_with_non_finite_parameters_stops_the_run(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  checkpoints = Checkpoints(str(workdir))
  target = setup_lib.setup(tiny_config(), sharding.create_mesh()).new_state()
  state = checkpoints.restore(target, FINAL_STEP)
  state = state.replace(params=jax.tree.map(lambda x: x * np.nan, state.params))
  shutil.rmtree(workdir / 'checkpoints' / str(FINAL_STEP))
  checkpoints._manager.reload()
  checkpoints.save(state, score=0.0)
  checkpoints.close()
  config = tiny_config(num_epochs=3)
  with pytest.raises(UserError, match='checkpoint 16 .* holds non-finite parameters'):
    loop.train_and_evaluate(config, str(workdir))


def test_non_finite_parameters_after_a_step_stop_the_run_with_a_finite_loss(tmp_path):
  state = setup_lib.setup(tiny_config(), sharding.create_mesh()).new_state()
  checkpoints = Checkpoints(str(tmp_path))
  loop.check_finite({'loss_sum': 1.0}, 0, 3, checkpoints, state)  # Finite: passes.
  broken = state.replace(opt_state=jax.tree.map(lambda x: x * np.inf, state.opt_state))
  with pytest.raises(UserError, match='optimiser state became non-finite between steps 0 and 3'):
    loop.check_finite({'loss_sum': 1.0}, 0, 3, checkpoints, broken)
  checkpoints.close()


@pytest.mark.parametrize('tail', ['{"step": 24, "train_lo', 'garbage\x00\xff\n'])
def test_a_torn_or_damaged_metrics_line_is_set_aside_never_merged(trained, tmp_path, tail):
  workdir = copy_of(trained, tmp_path)
  with open(workdir / 'metrics.jsonl', 'a', encoding='utf-8', errors='replace') as f:
    f.write(tail)
  # The commands that only read skip it.
  assert [r['step'] for r in workdir_lib.read_metrics(str(workdir))] == [8, 16]
  loop.train_and_evaluate(tiny_config(num_epochs=3), str(workdir))
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(line)['step'] for line in lines] == [8, 16, 24]
  assert (workdir / workdir_lib.DISCARDED_METRICS).read_text().startswith(tail[:5])


def test_a_record_written_before_its_checkpoint_is_replaced_when_the_step_is_redone(
    trained, tmp_path):
  # A kill between the metrics line of step 16 and its checkpoint.
  workdir = copy_of(trained, tmp_path)
  shutil.rmtree(workdir / 'checkpoints' / str(FINAL_STEP))
  state = loop.train_and_evaluate(tiny_config(), str(workdir))
  assert [r['step'] for r in workdir_lib.read_metrics(str(workdir))] == [8, 16]
  assert len((workdir / 'metrics.jsonl').read_text().splitlines()) == 2
  assert_trees_close(jax.device_get(state), trained[1], rtol=1e-5, atol=1e-6)


def test_a_second_run_on_a_locked_workdir_exits_at_once_naming_the_first(tmp_path):
  with workdir_lib.locked(str(tmp_path)):
    start = time.perf_counter()
    result = run_command('cifar_jax.main', '--config=configs/smoke.py', f'--workdir={tmp_path}')
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f'error: {tmp_path} is in use by another training run (pid '
                           f'{os.getpid()} on ')
    assert time.perf_counter() - start < 60  # Before loading data or compiling.
  assert not (tmp_path / 'checkpoints').exists()


def test_a_stale_lock_of_a_dead_process_does_not_block(tmp_path):
  (tmp_path / workdir_lib.LOCK).write_text('pid 999999 on elsewhere, since long ago\n')
  with workdir_lib.locked(str(tmp_path)):
    with open(tmp_path / workdir_lib.LOCK) as f, pytest.raises(BlockingIOError):
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # Held by us now.


def test_the_damaged_files_of_a_save_cut_short_are_ignored(trained, tmp_path):
  # A kill in the middle of a save leaves orbax's temporary directory, never a step.
  workdir = copy_of(trained, tmp_path)
  shutil.copytree(workdir / 'checkpoints' / '16',
                  workdir / 'checkpoints' / '24.orbax-checkpoint-tmp-1700000000000000')
  garble(checkpoint_files(workdir, '24.orbax-checkpoint-tmp-1700000000000000')[0])
  state = loop.train_and_evaluate(tiny_config(num_epochs=3), str(workdir))
  assert int(state.step) == 24


def interrupted(workdir, delay, sig):
  """Starts training `tiny_config` with the CLI, sends `sig` `delay` seconds after the
  command began importing JAX (or when the first checkpoint directory appears, for 'save'),
  and returns the result.

  Counting from the import of JAX, not from the launch: a loaded machine can take more than
  a second to start Python at all, and a signal before Python runs the command's first line
  meets Python's own start-up, not cifar_jax (it dies by the signal or prints Python's
  traceback from site.py)."""
  flags = ['--config=configs/smoke.py', *_flat_flags(tiny_config()), f'--workdir={workdir}',
           '--noreport']
  process = subprocess.Popen([sys.executable, '-m', 'cifar_jax.main', *flags], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.perf_counter() + 300

  def wait_for(ready):
    while not ready():
      assert time.perf_counter() < deadline and process.poll() is None
      time.sleep(0.01)

  if delay == 'save':
    wait_for(lambda: (workdir / 'checkpoints').is_dir() and os.listdir(workdir / 'checkpoints'))
  else:
    # main.py installs its handlers on its first lines, before `import jax` maps jaxlib.
    wait_for(lambda: 'jaxlib' in pathlib.Path(f'/proc/{process.pid}/maps').read_text())
    time.sleep(delay)
  process.send_signal(sig)
  _, stderr = process.communicate(timeout=300)
  return process.returncode, stderr


def _flat_flags(config, prefix=''):
  flags = []
  for key, value in config.items():
    if hasattr(value, 'items'):
      flags += _flat_flags(value, f'{prefix}{key}.')
    elif key in ('synthetic_train_size', 'synthetic_test_size', 'width', 'batch_size',
                 'eval_batch_size', 'num_epochs', 'steps_per_call'):
      flags.append(f'--config.{prefix}{key}={value}')
  return flags


def test_interrupts_at_every_moment_exit_cleanly_and_the_relaunch_ends_as_uninterrupted(
    trained, tmp_path):
  # While importing, while loading data and compiling, at the first save, and by SIGTERM.
  workdir = tmp_path / 'run'
  outcomes = [interrupted(workdir, moment, sig) for moment, sig in
              ((0, signal.SIGINT), (4, signal.SIGINT), ('save', signal.SIGINT),
               (2, signal.SIGTERM))]
  for status, stderr in outcomes:
    assert 'Fatal Python error' not in stderr and 'Traceback' not in stderr, stderr[-2000:]
    assert status in (0, 128 + signal.SIGINT, 128 + signal.SIGTERM), stderr[-2000:]
  state = loop.train_and_evaluate(tiny_config(), str(workdir))
  assert int(state.step) == FINAL_STEP
  assert_trees_close(jax.device_get(state), trained[1], rtol=1e-5, atol=1e-6)


def test_a_finished_run_ignores_a_signal_while_python_shuts_down(trained, tmp_path):
  # Python gives SIGINT and SIGTERM their default action back while it shuts down (half a
  # second here), so a signal then killed a finished run with status -15. main leaves them
  # ignored once the work is saved; the shut-down's own handlers are what this reads.
  workdir = copy_of(trained, tmp_path)  # Finished: the relaunch has nothing left to do.
  flags = ['--config=configs/smoke.py', *_flat_flags(tiny_config()), f'--workdir={workdir}',
           '--noreport']
  after = ('import runpy, signal\n'
           'try:\n'
           "  runpy.run_module('cifar_jax.main', run_name='__main__', alter_sys=True)\n"
           'finally:\n'
           '  print(signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGTERM)'
           ' == signal.SIG_IGN)')
  result = subprocess.run([sys.executable, '-c', after, *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == 'True'


def test_a_full_disk_during_a_save_is_one_line_and_the_relaunch_resumes(trained, tmp_path):
  # Files may not grow past the largest file of the run outside its checkpoints: the first
  # save fails as on a full disk ("File too large" here), the rest is written.
  limit = 1 + max(p.stat().st_size for p in trained[0].rglob('*')
                  if p.is_file() and 'checkpoints' not in p.parts)
  assert checkpoint_files(trained[0], 8)[0].stat().st_size > limit
  workdir = tmp_path / 'run'
  flags = ['--config=configs/smoke.py', *_flat_flags(tiny_config()), f'--workdir={workdir}',
           '--noreport']
  limited = ('import resource, runpy; '
             f'resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); '
             "runpy.run_module('cifar_jax.main', run_name='__main__', alter_sys=True)")
  result = subprocess.run([sys.executable, '-c', limited, *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 1
  lines = [line for line in result.stderr.splitlines() if not line.startswith(('I1', 'W1'))]
  assert len(lines) == 1 and lines[0].startswith(
      f'error: saving checkpoint 8 in {workdir}/checkpoints failed: File too large. '
      'Nothing was saved; no checkpoint was complete.'), result.stderr[-3000:]
  state = loop.train_and_evaluate(tiny_config(), str(workdir))
  assert_trees_close(jax.device_get(state), trained[1], rtol=1e-5, atol=1e-6)


def test_a_workdir_that_cannot_be_made_is_one_line(tmp_path):
  (tmp_path / 'file').write_text('')
  result = run_command('cifar_jax.main', '--config=configs/smoke.py',
                       f'--workdir={tmp_path}/file/run')
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      f'error: Not a directory: {tmp_path}/file/run. Fix that (free space, permissions, the '
      'path) and run the same command again: training resumes from its latest checkpoint.']


def test_evaluate_on_an_unwritable_workdir_still_gives_its_metrics(trained, monkeypatch, caplog):
  from cifar_jax import evaluate  # noqa: PLC0415
  from cifar_jax.results import report  # noqa: PLC0415

  def read_only(*args, **kwargs):
    raise OSError(30, 'Read-only file system', str(trained[0] / 'report'))

  monkeypatch.setattr(report, 'write', read_only)
  result = evaluate.evaluate(workdir_lib.load_config(str(trained[0])), str(trained[0]))
  assert result['report'] is None and result['num_examples'] == 100
  assert 'The report was not written (Read-only file system' in caplog.text
