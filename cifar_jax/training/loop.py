"""The training loop: `train_and_evaluate(config, workdir)` reads top to bottom.

It builds the run (`setup.py`), resumes from the workdir's latest checkpoint, and calls the
compiled train function until the end, evaluating, logging, checkpointing and adjusting the
learning rate on plateaus as it goes.
"""
import logging
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from cifar_jax import sharding
from cifar_jax import workdir as workdir_lib
from cifar_jax.errors import Preempted, UserError
from cifar_jax.training import checkpoint as checkpoint_lib
from cifar_jax.training import evaluation, multihost, optim, profiling, wandb_log
from cifar_jax.training import setup as setup_lib
from cifar_jax.training.checkpoint import Checkpoints
from cifar_jax.training.metrics import TrainMeter
from cifar_jax.training.state import TrainState

log = logging.getLogger(__name__)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       wandb_run: wandb_log.WandbLog | None = None) -> TrainState:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the final state.

  The scalars go to W&B too when `config.logging.wandb_project` is set: to `wandb_run` when
  given (the caller finishes it, after logging more), else to a W&B run that ends with training.

  Raises:
    errors.Preempted: after saving, when SIGTERM reached any process.
    errors.UserError: when another run holds the workdir (see `workdir.locked`), and for the
      mistakes of config and data it reports.
  """
  os.makedirs(workdir, exist_ok=True)
  with workdir_lib.locked(workdir, enabled=multihost.is_main_process()):
    if wandb_run is None:
      with wandb_log.WandbLog(config, workdir, enabled=multihost.is_main_process()) as wandb_run:
        return _train(config, workdir, wandb_run)
    return _train(config, workdir, wandb_run)


def _train(config: ml_collections.ConfigDict, workdir: str,
           wandb_run: wandb_log.WandbLog) -> TrainState:
  # 1. The run: config checked, data on the mesh, model, optimiser, compiled functions. With
  # several processes, process 0 alone writes the run's files; all of them write the
  # checkpoints, together.
  run = setup_lib.setup(config, sharding.create_mesh())
  is_main = multihost.is_main_process()
  if is_main:
    workdir_lib.save_config(config, workdir)
    workdir_lib.save_classes(run.classes, workdir)
  wandb_run.start()  # With the workdir locked: a second run on it never reaches here.

  # 2. The state. The resume order: build a fresh state (its structure and shardings), fill
  # in pretrained weights when a new run starts from them, then overwrite it from the latest
  # checkpoint if there is one: parameters, optimiser, plateau and early-stopping state, step
  # and RNG. The data order and augmentation derive from (rng, step), so they resume too.
  state = run.new_state()
  checkpoints = Checkpoints(workdir, config.checkpoint.keep_latest)
  if config.model.init_from and checkpoints.latest_step() is None:
    state = run.load_pretrained(state)
  # A damaged checkpoint is named, moved to WORKDIR/checkpoints_damaged and skipped.
  state, restored_step = checkpoints.restore_latest_intact(state)
  if restored_step is not None:
    log.info('Resuming from the checkpoint at step %d in %s.', restored_step,
             checkpoints.directory)

  # 3. Train, evaluating every `eval_every` steps and at the end.
  splits, steps_per_epoch = run.splits, run.steps_per_epoch
  monitored_split = 'val' if 'val' in splits.eval_sets else 'test'
  step = int(state.step)
  metrics_log = workdir_lib.MetricsLog(workdir, enabled=is_main, resume_step=step)
  patience = config.early_stopping.patience if config.early_stopping.enabled else np.inf
  meter = TrainMeter()
  loss_scaled = setup_lib.loss_scaling(config) is not None  # float16 compute.
  # Wall time carries on across resumes from the last record (the time between
  # that record and an interruption is not counted).
  previous = workdir_lib.read_metrics(workdir)
  wall_start = time.perf_counter() - (previous[-1].get('wall_seconds', 0.0) if previous else 0.0)
  # The bar redraws itself in a terminal only: a redirected log gets the evaluation lines.
  show_progress = is_main and sys.stderr.isatty()
  progress, preempted = None, False
  preemption = multihost.PreemptionWatch(run.mesh)
  profiler = profiling.StepProfiler(workdir, config.profile_steps)  # Every process, its host.
  preemption.start()
  try:
    while step < run.total_steps:
      # All processes ask at the same step, and all stop there if any was signalled.
      if preemption.requested():
        if checkpoints.latest_step() != step:
          # Not ranked as the best: it was not evaluated.
          checkpoints.save(state, score=-np.inf)
        preempted = True
        break
      if state.early_stopping.should_stop(patience):
        log.info('Early stopping at step %d: no improvement in %d evaluations.', step, patience)
        break
      epoch_start = step // steps_per_epoch * steps_per_epoch
      if progress is None:
        progress = tqdm.tqdm(total=steps_per_epoch, initial=step - epoch_start, leave=False,
                             desc=f'epoch {step // steps_per_epoch + 1}', unit='step',
                             disable=not show_progress)
      stop_step = run.next_stop(step)  # At the next evaluation at the latest, within the epoch.
      profiler.before(step, stop_step)
      start_time = time.perf_counter()
      state, totals = run.train_fn(state, splits.train_images, splits.train_labels,
                                   jnp.asarray(stop_step, jnp.int32))
      totals = jax.device_get(totals)  # Waits for the call: a few scalars, once per call.
      seconds = time.perf_counter() - start_time
      profiler.after(stop_step, state)
      check_finite(totals, step, stop_step, checkpoints, state)
      meter.add(totals, seconds)
      progress.update(stop_step - step)
      step = stop_step
      # The rate costs a small device computation and copy: only if shown. A call whose steps
      # were all skipped (float16's loss scaling) has no loss to show.
      if show_progress and totals['count']:
        progress.set_postfix(loss=f'{totals["loss_sum"] / totals["count"]:.3f}',
                             acc=f'{totals["correct"] / totals["count"]:.3f}',
                             lr=f'{learning_rate(run, state, step):.3g}',
                             img_s=f'{totals["count"] / seconds:.0f}')
      if step % steps_per_epoch == 0 or step == run.total_steps:
        progress.close()
        progress = None
      if step % run.eval_every and step != run.total_steps:
        continue

      # Evaluate, feed the monitors, log, checkpoint. The logged rate is the one this
      # interval trained with, before the monitors may cut it.
      rate = learning_rate(run, state, step)
      results = {name: evaluation.summarize_eval(run.eval_fn(state, *arrays))
                 for name, arrays in splits.eval_sets.items()}
      if config.ema_decay:
        ema_state = state.replace(params=state.ema_params)
        results.update({f'ema_{name}': evaluation.summarize_eval(run.eval_fn(ema_state, *arrays))
                        for name, arrays in splits.eval_sets.items()})
      monitored = optim.monitor_loss(results[monitored_split], config.monitor)
      # Only scheduled evaluations count towards plateau and early stopping, so
      # stopping early (max_steps) and resuming changes nothing.
      if step % run.eval_every == 0:
        state = run.monitor_fn(state, jnp.asarray(monitored, jnp.float32))
      record = {'step': step, 'epoch': step / steps_per_epoch, 'learning_rate': rate,
                'plateau_scale': float(state.plateau.scale),
                'wall_seconds': time.perf_counter() - wall_start,
                **meter.summary(config.batch_size, with_hem=config.hem.mode != 'off',
                                with_skipped=loss_scaled)}
      if loss_scaled:
        record['loss_scale'] = float(state.loss_scale.scale)
      for name, result in results.items():
        record.update({f'{name}_{k}': v for k, v in result.items() if k != 'per_class_accuracy'})
      metrics_log.write(record)
      wandb_run.log(record)
      log.info('step %d: %s', step, ', '.join(
          f'{k}={v:.4g}' for k, v in record.items() if isinstance(v, float)))
      checkpoints.save(state, score=-monitored)
  finally:
    profiler.close()
    preemption.stop()
    if progress is not None:
      progress.close()
    checkpoints.wait()
    checkpoints.close()
    metrics_log.close()
  if preempted:  # Raised once the checkpoint is on disk.
    raise Preempted(f'saved step {step} in {checkpoints.directory}; the same command '
                              'resumes from it.')
  return state


def learning_rate(run: setup_lib.Run, state: TrainState, step: int) -> float:
  """The rate of the last step before `step`: the schedule's times the plateau's scale.

  The schedule reads the optimiser's step count, which the steps float16's loss scaling
  skipped did not advance.
  """
  skipped = int(state.loss_scale.skipped_steps) if state.loss_scale else 0
  return float(run.schedule(step - 1 - skipped) * state.plateau.scale)


def check_finite(totals: dict, first_step: int, stop_step: int, checkpoints: Checkpoints,
                 state: TrainState | None) -> None:
  """Stops a diverged run before it saves anything, so the last good checkpoint stays: a
  non-finite loss, or non-finite parameters or optimiser state (`state`, when given).

  The steps float16's loss scaling skipped add nothing to `totals['loss_sum']`: an overflow
  the scaler handled does not stop the run (a non-finite step at its floor is applied, and
  does).
  """
  if not np.isfinite(totals['loss_sum']):
    what = f'the training loss became {totals["loss_sum"]}'
  elif state is not None and not checkpoint_lib.all_finite(state):
    what = 'the parameters or optimiser state became non-finite'
  else:
    return
  latest = checkpoints.latest_step()
  kept = (f'the last good checkpoint (step {latest}) is kept in {checkpoints.directory}'
          if latest is not None else 'no checkpoint had been saved yet')
  raise UserError(
      f'{what} between steps {first_step} and {stop_step}; stopped without saving, so {kept}. '
      'Try a lower config.optimizer.learning_rate or a warm-up.')
