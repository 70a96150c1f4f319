"""Several processes as one job, on this machine: CPU devices, gloo collectives, loopback only.

Each test starts `python -m cifar_jax.main` processes with 4 CPU devices each, and compares
their checkpoints with runs of one process on this test process's 8 devices. Every wait is
bounded: the processes' own start-up timeout and the subprocess timeouts.
"""
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest
from conftest import REPO, XLA_TEST_FLAGS, assert_trees_close, load_config_file

from cifar_jax import sharding
from cifar_jax.results import restore
from cifar_jax.training import loop, multihost

TIMEOUT_S = 300
# The smoke config, shortened: 8 steps an epoch, one step per call, no report.
FLAGS = ['--config=configs/smoke.py', '--noreport', '--config.steps_per_call=1']


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start(workdir, num_processes: int, devices_each: int, *flags) -> list[subprocess.Popen]:
  """`num_processes` training processes of `devices_each` CPU devices, as one job."""
  port = free_port()
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'{XLA_TEST_FLAGS} --xla_force_host_platform_device_count={devices_each}')
  job = []
  for i in range(num_processes):
    distributed = ([f'--coordinator_address=127.0.0.1:{port}',
                    f'--num_processes={num_processes}', f'--process_id={i}']
                   if num_processes > 1 else [])
    job.append(subprocess.Popen(
        [sys.executable, '-m', 'cifar_jax.main', *FLAGS, *flags, f'--workdir={workdir}',
         *distributed], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True))
  return job


def wait_for_first_evaluation(workdir, processes) -> None:
  deadline = time.monotonic() + TIMEOUT_S
  while not (workdir / 'metrics.jsonl').exists():
    assert time.monotonic() < deadline, 'no evaluation in time'
    assert all(p.poll() is None for p in processes), 'a process ended early'
    time.sleep(0.1)


def finish(processes) -> list[str]:
  """Waits (bounded) for every process; returns their stderr. Kills all on a timeout."""
  try:
    outputs = [p.communicate(timeout=TIMEOUT_S) for p in processes]
  finally:
    for p in processes:
      p.kill()
  for p, (_, err) in zip(processes, outputs, strict=True):
    assert p.returncode == 0, err[-3000:]
  return [err for _, err in outputs]


def reference_run(workdir, **overrides):
  """The same config run by this process on its 8 devices."""
  config = load_config_file(os.path.join(REPO, 'configs', 'smoke.py'))
  config.steps_per_call = 1
  config.update_from_flattened_dict(overrides)
  return loop.train_and_evaluate(config, str(workdir))


# gloo sums the 8 devices' gradients in another order than one process does. The difference
# starts at rounding (1.6e-9 after one step) but this small net amplifies it about tenfold a
# step, so runs are compared after few steps; a wrong batch or a missing share of the data
# would differ by orders of magnitude more.
LOOSE = {'rtol': 1e-3, 'atol': 1e-4}


def latest_params(workdir):
  trained = restore.from_workdir(str(workdir), 'latest')
  return trained.step, jax.device_get(trained.weights.params)


def test_two_processes_of_four_devices_train_as_one_of_eight(tmp_path):
  finish(start(tmp_path / 'two', 2, 4, '--config.max_steps=3'))
  # Process 0 alone wrote the run's files (and held the workdir's lock).
  assert sorted(os.listdir(tmp_path / 'two')) == [
      'checkpoints', 'classes.json', 'config.json', 'metrics.jsonl', 'run.lock',
      'tensorboard']
  reference = reference_run(tmp_path / 'one', max_steps=3)
  step, params = latest_params(tmp_path / 'two')
  assert step == 3
  assert_trees_close(params, jax.device_get(reference.params))

  # The 2-process checkpoint resumes in 1 process (8 devices) and trains on alike.
  resumed = reference_run(tmp_path / 'two', max_steps=5)
  uninterrupted = reference_run(tmp_path / 'one', max_steps=5)
  assert int(resumed.step) == 5
  assert_trees_close(jax.device_get(resumed.params), jax.device_get(uninterrupted.params),
                     **LOOSE)


def test_sigterm_to_one_process_stops_both_at_the_same_saved_step(tmp_path):
  workdir = tmp_path / 'preempted'
  flags = ['--config.num_epochs=2']  # 16 steps: the signal lands with 8 to go.
  processes = start(workdir, 2, 4, *flags)
  wait_for_first_evaluation(workdir, processes)
  processes[1].send_signal(signal.SIGTERM)  # Process 0 is not signalled.
  errors = finish(processes)
  assert all('preempted: saved step' in err for err in errors)
  step = int(errors[0].split('preempted: saved step ')[1].split()[0])
  assert step == int(errors[1].split('preempted: saved step ')[1].split()[0])
  assert 8 <= step < 16
  assert latest_params(workdir)[0] == step

  finish(start(workdir, 2, 4, *flags))  # The same command finishes the run.
  assert latest_params(workdir)[0] == 16


def test_sigterm_mid_epoch_saves_and_the_relaunch_ends_as_uninterrupted(tmp_path):
  workdir = tmp_path / 'preempted'
  flags = ['--config.num_epochs=4']  # 32 steps, 8 an epoch.
  processes = start(workdir, 1, 8, *flags)
  wait_for_first_evaluation(workdir, processes)
  processes[0].send_signal(signal.SIGTERM)
  (error,) = finish(processes)
  assert 'preempted: saved step' in error and 'Traceback' not in error
  stopped_at = latest_params(workdir)[0]
  assert 8 <= stopped_at < 32

  finish(start(workdir, 1, 8, *flags))
  step, params = latest_params(workdir)
  uninterrupted = reference_run(tmp_path / 'uninterrupted', num_epochs=4)
  assert step == 32
  assert_trees_close(params, jax.device_get(uninterrupted.params))


def test_process_id_out_of_range_is_one_clear_error(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'cifar_jax.main', *FLAGS, f'--workdir={tmp_path}',
       '--coordinator_address=127.0.0.1:1', '--num_processes=2', '--process_id=2'],
      cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
  assert result.returncode != 0
  assert '--process_id=2 must be in [0, --num_processes=2)' in result.stderr
  assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('signalled', [False, True])
def test_a_single_process_sees_its_own_sigterm(signalled):
  watch = multihost.PreemptionWatch(sharding.create_mesh())
  watch.start()
  try:
    if signalled:
      os.kill(os.getpid(), signal.SIGTERM)
    assert watch.requested() == signalled
  finally:
    watch.stop()
