"""Trains a classifier: `python -m cifar_jax.main --config=configs/resnet_c100.py --workdir=DIR`.

Any config field can be overridden as `--config.FIELD=VALUE`. Restarting with
the same workdir resumes from its latest checkpoint. At the end, the plots and
summary of `cifar_jax.report` are written to WORKDIR/report (`--noreport` skips them).

Several processes (one per host) run the same command: on Cloud TPU VMs and under SLURM
with `--multihost`, elsewhere with `--coordinator_address=HOST:PORT --num_processes=N
--process_id=I` (see launch/). SIGTERM makes every process save the same step and exit.
"""
# Ctrl-C or SIGTERM end the command at once, at any moment: importing, loading data, compiling,
# training, saving. Nothing is lost that the same command does not redo: every file a run
# writes is written whole or not at all (checkpoints, their checksums, config.json), a
# cut-short metrics line is set aside on the next start, and the workdir's lock goes with the
# process. Letting Python unwind instead crashed it during compilation (a segmentation fault
# while XLA's compiler threads ran) and was ignored at some moments of start-up. During
# training, SIGTERM is a preemption: `multihost.PreemptionWatch` takes it over to save first.
import os
import signal
import sys


def _exit_at_once(signum, frame):
  del frame
  print('interrupted: the same command resumes from the latest checkpoint.' if
        signum == signal.SIGINT else 'terminated: the same command resumes from the latest '
        'checkpoint.', file=sys.stderr, flush=True)
  os._exit(128 + signum)


signal.signal(signal.SIGINT, _exit_at_once)
signal.signal(signal.SIGTERM, _exit_at_once)

import jax  # noqa: E402 (after the signal handlers, which must cover imports too)
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cifar_jax import cli  # noqa: E402
from cifar_jax.results import report  # noqa: E402
from cifar_jax.training import loop, multihost, wandb_log  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (a get_config() module).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and logs.')
_REPORT = flags.DEFINE_bool('report', True, 'Write WORKDIR/report after training.')
_MULTIHOST = flags.DEFINE_bool(
    'multihost', False, 'Join the other hosts of a Cloud TPU VM slice or a SLURM job, found by '
    'jax.distributed.initialize() itself.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', '', 'HOST:PORT of process 0, for an explicit multi-process start.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 1, 'Processes in the job (explicit start).')
_PROCESS_ID = flags.DEFINE_integer('process_id', 0, "This process's rank (explicit start).")
flags.mark_flags_as_required(['config', 'workdir'])


def train_and_report(config, workdir: str, write_report: bool) -> None:
  multihost.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                       auto=_MULTIHOST.value)
  # One W&B run (when config.logging asks for one) for the scalars and the report's figures.
  with wandb_log.WandbLog(config, workdir, enabled=multihost.is_main_process()) as wandb_run:
    state = loop.train_and_evaluate(config, workdir, wandb_run)
    # A multi-process job's report needs every process: run cifar_jax.report after it instead.
    if write_report and jax.process_count() == 1:
      path = report.create(workdir, 'best', config)[0]
      print(path)
      wandb_run.log_figures(os.path.dirname(path), int(state.step))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  cli.run_reporting_user_errors(train_and_report, _CONFIG.value, _WORKDIR.value, _REPORT.value)
  # The work is done and saved. While Python shuts down (half a second with JAX's threads) it
  # gives SIGINT and SIGTERM their default action back, and a signal arriving then killed a
  # finished run with a signal's status. Ignored, it cannot: the process exits 0.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser())
