"""Weights & Biases, optional: a run's scalars and, when it ends, its report's figures.

`config.logging.wandb_project` turns it on. The W&B run's id is kept in `WORKDIR/wandb_id`, so
a training run that restarts (resumes) logs on in the same W&B run (`resume='allow'`). W&B's
own files go to `WORKDIR/wandb/` (or `$WANDB_DIR/wandb/`); an offline run is uploaded later
with `wandb sync WORKDIR/wandb/offline-run-*`. Process 0 alone logs in a multi-host job.

wandb is an optional extra (`pip install -e ".[wandb]"`), imported only by runs that use it.
"""
import logging
import numbers
import os
import secrets
import string

from cifar_jax import workdir as workdir_lib
from cifar_jax.errors import Preempted, UserError, check_choice

log = logging.getLogger(__name__)

ID_FILE = 'wandb_id'
# '' leaves it to W&B ($WANDB_MODE, else online); 'disabled' logs nothing.
MODES = ('', 'online', 'offline', 'disabled')


def check_config(logging_config) -> None:
  """Raises a UserError for a `config.logging` field no run can use, or for W&B asked for
  without wandb installed."""
  check_choice('config.logging.wandb_mode', logging_config.wandb_mode, MODES)
  if not logging_config.wandb_project:
    return
  try:
    import wandb  # noqa: F401, PLC0415 (only runs that log to W&B import it)
  except ImportError:
    raise UserError('config.logging.wandb_project is set, but wandb is not installed: '
                    'pip install -e ".[wandb]" (or pip install wandb), or leave '
                    'config.logging.wandb_project empty.') from None


class WandbLog:
  """The W&B run of a training run in `workdir`, or nothing when W&B is off or not `enabled`.

  Use as a context manager: the W&B run starts at `start()` (once the workdir is locked) and
  finishes when the block ends, as failed if it ends with an error (a preemption is a clean
  stop).
  """

  def __init__(self, config, workdir: str, enabled: bool = True):
    self._config, self._workdir = config, workdir
    self._enabled = enabled and bool(config.logging.wandb_project)
    self._run = None

  def __enter__(self) -> 'WandbLog':
    return self

  def __exit__(self, kind, value, traceback) -> None:
    failed = kind is not None and not issubclass(kind, Preempted)
    if self._run is not None:
      self._run.finish(exit_code=1 if failed else 0)
      self._run = None

  def start(self) -> None:
    """Starts the W&B run, or resumes the one whose id the workdir holds."""
    if not self._enabled or self._run is not None:
      return
    import wandb  # noqa: PLC0415 (only runs that log to W&B import it)
    settings = self._config.logging
    run_id = self._run_id()
    try:
      self._run = wandb.init(
          project=settings.wandb_project, entity=settings.wandb_entity or None,
          mode=settings.wandb_mode or None, id=run_id, resume='allow',
          name=os.path.basename(os.path.abspath(self._workdir)),
          dir=os.environ.get('WANDB_DIR') or self._workdir,
          config=self._config.to_dict())
    except Exception as e:  # noqa: BLE001 (no login, no network: W&B raises many kinds)
      detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
      raise UserError(f'W&B could not start run {run_id} of project '
                      f'{settings.wandb_project!r} ({detail}). Log in with `wandb login`, or '
                      'log offline with --config.logging.wandb_mode=offline.') from None
    # Every scalar against the train step, which a resumed run may repeat (W&B's own step
    # may only grow).
    self._run.define_metric('step')
    self._run.define_metric('*', step_metric='step')
    log.info('Logging to W&B run %s (%s).', run_id, self._run.url or 'offline')

  def _run_id(self) -> str:
    """The id in WORKDIR/wandb_id, or a new one written there (8 characters from [a-z0-9], as
    W&B draws its own)."""
    path = os.path.join(self._workdir, ID_FILE)
    if os.path.exists(path):
      with open(path) as f:
        run_id = f.read().strip()
      if run_id:
        return run_id
    run_id = ''.join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    workdir_lib.write_atomically(path, run_id + '\n')
    return run_id

  def log(self, record: dict) -> None:
    """The numbers of a metrics.jsonl record, at its `step`."""
    if self._run is not None:
      self._run.log({k: v for k, v in record.items()
                     if isinstance(v, numbers.Number) and not isinstance(v, bool)})

  def log_figures(self, directory: str, step: int) -> None:
    """The PNG figures in `directory` (a report's) as images `report/NAME`, at `step`."""
    if self._run is None:
      return
    import wandb  # noqa: PLC0415
    images = {f'report/{name[:-4]}': wandb.Image(os.path.join(directory, name))
              for name in sorted(os.listdir(directory)) if name.endswith('.png')}
    self._run.log({'step': step, **images})
