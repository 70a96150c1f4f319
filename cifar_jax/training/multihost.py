"""Several processes (hosts) as one job: start-up through `jax.distributed`, and preemption.

One process runs per host (per TPU VM worker, or per SLURM task). After `initialize`, every
process sees the whole mesh; each feeds only the rows of the data its own devices hold
(`sharding.shard_rows`), and only process 0 writes logs, metrics and reports. Checkpoints are
written by all processes together through orbax.
"""
import logging
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np

from cifar_jax import sharding
from cifar_jax.errors import UserError

log = logging.getLogger(__name__)

# Waiting longer than this for the other processes to join is an error, not a hang.
INIT_TIMEOUT_S = 300


def initialize(coordinator_address: str = '', num_processes: int = 1, process_id: int = 0,
               auto: bool = False, timeout_s: int = INIT_TIMEOUT_S) -> None:
  """Joins the job's other processes; a no-op for a single process.

  Args:
    coordinator_address: 'HOST:PORT' of process 0, for an explicit start-up (e.g. several
      processes on one machine, or hosts without a cluster manager JAX knows).
    num_processes, process_id: This job's size and this process's rank (explicit start-up).
    auto: Let JAX find the cluster itself, as on Cloud TPU VMs and under SLURM.
    timeout_s: How long to wait for every process to connect.
  """
  if coordinator_address:
    if not 0 <= process_id < num_processes:
      raise UserError(f'--process_id={process_id} must be in [0, --num_processes='
                      f'{num_processes}).')
    # Cross-process collectives between CPU devices go through gloo (the setting leaves GPUs
    # and TPUs alone; asking for the backend here would start it too early).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    job = {'coordinator_address': coordinator_address, 'num_processes': num_processes,
           'process_id': process_id}
  elif auto:
    job = {}  # Found by JAX from the environment.
  else:
    return
  try:
    jax.distributed.initialize(**job, initialization_timeout=timeout_s)
  except (RuntimeError, ValueError) as e:  # XlaRuntimeError is a RuntimeError.
    where = coordinator_address or 'the coordinator JAX found'
    raise UserError(f'could not join the job through {where} within {timeout_s} s: '
                    f'{str(e).splitlines()[0]}') from None
  log.info('Process %d of %d, %d of %d devices local.', jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())


def is_main_process() -> bool:
  """Whether this process writes the run's files (config, metrics, TensorBoard, report)."""
  return jax.process_index() == 0


class PreemptionWatch:
  """Notices SIGTERM (what a preempted VM or a SLURM requeue sends) and agrees on it.

  Between `start()` and `stop()`, SIGTERM only sets a flag, and `requested()`, asked at the
  same step by every process, is True on all of them as soon as any one was signalled, so all
  save the same step and stop together.
  """

  def __init__(self, mesh):
    self._sharding = sharding.row_sharded(mesh)  # One flag per device.
    self._any = jax.jit(jnp.max, out_shardings=sharding.replicated(mesh))
    self._signalled = False
    self._previous = None

  def start(self) -> None:
    self._previous = signal.signal(signal.SIGTERM, self._on_signal)

  def stop(self) -> None:
    signal.signal(signal.SIGTERM, self._previous)

  def _on_signal(self, signum, frame):
    del signum, frame
    log.warning('SIGTERM received (pid %d): saving a checkpoint at the next step boundary.',
                os.getpid())
    self._signalled = True

  def requested(self) -> bool:
    """Whether any process has been signalled (a collective: call it on every process)."""
    if jax.process_count() == 1:
      return self._signalled
    # One row per device, each holding its own process's flag.
    flags = jax.make_array_from_callback((jax.device_count(),), self._sharding,
                                         lambda _: np.full(1, self._signalled, np.int32))
    return bool(self._any(flags))
