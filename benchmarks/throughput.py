"""Training throughput of a config on whatever devices exist, as one JSON line.

    python benchmarks/throughput.py --config=configs/resnet_c10.py --steps=100 \
        [--config.dataset.source=synthetic] [--config.FIELD=VALUE ...]

Times the compiled train function the main job uses (gather from the on-device
dataset, augmentation, forward, backward, update) after a warm-up call that
pays for compilation, and the same step on one fixed batch without the input
pipeline, so their ratio shows what the input pipeline costs. Also counts the
compilations after the warm-up call (there should be none).
"""
import json
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from absl import logging as absl_logging
from jax import lax
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from cifar_jax import sharding
from cifar_jax.sharding import DATA_AXIS
from cifar_jax.training import setup as setup_lib
from cifar_jax.training.metrics import CompilationCounter


def define_flags():
  """This script's flags, defined when it runs (not when another script imports it)."""
  global _CONFIG, _STEPS
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
  _STEPS = flags.DEFINE_integer('steps', 50, 'Timed train steps (after the warm-up call).')
  flags.mark_flag_as_required('config')


def fixed_batch_fn(config, model, optimizer, mesh, device_loop: bool):
  """Train steps on one fixed batch with no augmentation: the step without its input pipeline."""
  no_augment = config.copy_and_resolve_references()
  no_augment.augment.update(crop_padding=0, flip=False, alternating_flip=False, cutout_size=0,
                            randaugment_ops=0, mixup_alpha=0.0, cutmix_alpha=0.0)
  step_fn = setup_lib.train_step_fn(no_augment, model, optimizer, total_steps=2**30)

  def per_device(state, images, labels, stop_step):
    example_ids = lax.axis_index(DATA_AXIS) * labels.shape[0] + jnp.arange(labels.shape[0])

    def body(state):
      return step_fn(state, images, labels, jax.random.fold_in(state.rng, state.step),
                     example_ids, 0)[0]
    if not device_loop:  # As the train function does on CPU: one step per call.
      return body(state)
    return lax.while_loop(lambda s: s.step < stop_step, body, state)

  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS),
                                                                 P(DATA_AXIS), P()),
                               out_specs=P()), donate_argnums=0)


def first_rows(array, n: int, mesh):
  """The first `n` rows of a row-sharded array, replicated (slicing it in place would have to
  say how its result is sharded)."""
  return jax.jit(lambda a: jax.sharding.reshard(a[:n], sharding.replicated(mesh)))(array)


def timed(fn, state, *args, steps, steps_per_call):
  """Seconds per step over `steps` steps taken `steps_per_call` a call, `fn` compiled already.

  `fn` returns the state alone or (state, metrics).
  """
  start_step = int(state.step)
  begin = time.perf_counter()
  for stop_step in range(start_step + steps_per_call, start_step + steps + 1, steps_per_call):
    out = fn(state, *args, jnp.int32(stop_step))
    state = out[0] if isinstance(out, tuple) else out
  jax.block_until_ready(state)
  return (time.perf_counter() - begin) / (stop_step - start_step), state


def measure(config, steps: int) -> dict:
  """The figures this script prints, for `config`, over `steps` timed steps."""
  run = setup_lib.setup(config)
  splits, mesh = run.splits, run.mesh
  # Steady-state steps must not cross an epoch boundary within one call.
  steps = min(steps, run.steps_per_epoch - 1)
  call_steps = min(run.steps_per_call, steps)

  state = run.new_state()
  begin = time.perf_counter()
  state, _ = run.train_fn(state, splits.train_images, splits.train_labels, jnp.int32(1))
  jax.block_until_ready(state)
  first_call = time.perf_counter() - begin
  with CompilationCounter() as compilations:
    step_seconds, state = timed(run.train_fn, state, splits.train_images, splits.train_labels,
                                steps=steps, steps_per_call=call_steps)

  fixed_fn = fixed_batch_fn(config, run.model, run.optimizer, mesh, device_loop=call_steps > 1)
  # The training split's first rows as one fixed batch (only these rows come to the host).
  batch = [sharding.shard_rows(jax.device_get(first_rows(a, config.batch_size, mesh)), mesh)
           for a in (splits.train_images, splits.train_labels)]
  fixed_state = run.new_state()
  fixed_state = fixed_fn(fixed_state, *batch, jnp.int32(1))
  fixed_seconds, _ = timed(fixed_fn, fixed_state, *batch, steps=steps, steps_per_call=call_steps)

  return {
      'model': config.model.name, 'dtype': config.model.dtype, 'dataset': config.dataset.name,
      'source': config.dataset.source, 'devices': jax.device_count(),
      'device_kind': jax.devices()[0].device_kind, 'global_batch': config.batch_size,
      'timed_steps': steps, 'steps_per_call': call_steps,
      'compile_seconds': round(first_call - step_seconds, 3),
      'step_seconds': round(step_seconds, 5),
      'images_per_sec': round(config.batch_size / step_seconds, 1),
      'fixed_batch_step_seconds': round(fixed_seconds, 5),
      'input_pipeline_overhead': round(step_seconds / fixed_seconds - 1, 4),
      'compilations_after_warmup': compilations.count,
  }


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)
  print(json.dumps(measure(_CONFIG.value, _STEPS.value)))


if __name__ == '__main__':
  define_flags()
  app.run(main)
