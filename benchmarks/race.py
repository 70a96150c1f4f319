"""The fast config raced against airbench, on the same data and machine, in one invocation.

    python benchmarks/race.py --runs=2 [--epochs=2] [--config=configs/airbench94_c10.py] \
        [--config.dataset.data_dir=DIR] [--out=DIR]

Trains the config `--runs` times after a warm-up and, when `torch` and `airbench` are
importable, airbench94 (`airbench.train94`, unchanged) as many times on the same training and
test images, alternating the two sides run by run so drift in the machine's speed hits both.
Timing counts what airbench counts: the data-dependent initialisation, training, and the final
test-time-augmented evaluation; not data loading, not compilation (the warm-up pays for it, and
its seconds are reported), not the evaluation without augmentation. `--epochs` runs both sides
at the same shorter schedule. On a machine without CUDA, airbench runs on the CPU in float32:
`.cuda()` and `.half()` become no-ops and CUDA timing events become wall-clock ones; its recipe
is untouched. Prints one table; with `--out`, also writes race.json and race.md there.

cifar_jax's seeds are 0..runs-1 (`config.seed` plus the run's number); airbench's are set with
`torch.manual_seed` to the same numbers. Accuracy is on the config's test split.
"""
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from cifar_jax.data import splits as splits_lib
from cifar_jax.training import evaluation
from cifar_jax.training import setup as setup_lib


def define_flags():
  """This script's flags, defined when it runs (not when another script imports it)."""
  global _CONFIG, _RUNS, _EPOCHS, _SIDES, _OUT
  _CONFIG = config_flags.DEFINE_config_file(
      'config', os.path.join(os.path.dirname(__file__), '..', 'configs', 'airbench94_c10.py'),
      'The fast config.', lock_config=True)
  _RUNS = flags.DEFINE_integer('runs', 2, 'Timed runs per side, after a warm-up.')
  _EPOCHS = flags.DEFINE_float('epochs', 0.0, 'Epochs of both sides; 0 keeps each recipe\'s own.')
  _SIDES = flags.DEFINE_enum('sides', 'both', ['both', 'cifar_jax', 'airbench'], 'Who races.')
  _OUT = flags.DEFINE_string('out', '', 'Directory for race.json and race.md; empty: print only.')


class CifarJaxSide:
  """The fast config: set up once (data on the devices, compiled on the warm-up)."""
  name = 'cifar_jax'

  def __init__(self, config):
    self.config = config
    self.run = setup_lib.setup(config)
    plain = config.copy_and_resolve_references()
    plain.eval_flip_tta, plain.eval_translate_tta = False, 0
    self.plain_eval_fn = setup_lib.compile_eval_fn(plain, self.run.model, self.run.mesh,
                                                   self.run.splits.num_classes)
    self.test = self.run.splits.eval_sets['test']
    self.device = f'{jax.device_count()} x {jax.devices()[0].device_kind}'
    self.dtype = config.model.dtype
    start = time.perf_counter()
    self.train(seed=-1, stop=1)  # Compiles the initialisation, a train call and both evaluations.
    self.compile_seconds = time.perf_counter() - start

  def train(self, seed: int, stop: int | None = None) -> dict:
    run = self.run
    start = time.perf_counter()
    state = run.new_state(seed)  # Includes the whitening, as airbench's timing does.
    step, stop = 0, stop or run.total_steps
    while step < stop:
      next_step = min(run.next_stop(step), stop)
      state, _ = run.train_fn(state, run.splits.train_images, run.splits.train_labels,
                              np.int32(next_step))
      step = next_step
    tta = evaluation.summarize_eval(run.eval_fn(state, *self.test))  # Waits for the device.
    seconds = time.perf_counter() - start
    plain = evaluation.summarize_eval(self.plain_eval_fn(state, *self.test))
    return {'seconds': seconds, 'accuracy': plain['accuracy'], 'tta_accuracy': tta['accuracy']}


class _WallClockEvent:
  """`torch.cuda.Event(enable_timing=True)` on a machine without CUDA: wall-clock times.

  airbench adds every `elapsed_time` to its total; the events also keep that sum here.
  """
  total_ms = 0.0

  def __init__(self, **kwargs):
    self.time = None

  def record(self):
    self.time = time.perf_counter()

  def elapsed_time(self, end):
    ms = 1e3 * (end.time - self.time)
    _WallClockEvent.total_ms += ms
    return ms


@contextlib.contextmanager
def _cuda_on_cpu(torch, airbench):
  """airbench's CUDA calls mapped to the CPU in float32, restored on exit."""
  nn = torch.nn
  loader_init = airbench.CifarLoader.__init__
  saved = (nn.Module.cuda, nn.Module.half, torch.Tensor.half, torch.cuda.Event,
           torch.cuda.synchronize, torch.load, loader_init.__defaults__)
  load = torch.load
  # Its loaders' default device is GPU 0; the last default is the `gpu` argument's.
  assert loader_init.__code__.co_varnames[loader_init.__code__.co_argcount - 1] == 'gpu'
  loader_init.__defaults__ = (*loader_init.__defaults__[:-1], 'cpu')
  nn.Module.cuda = lambda self, *args, **kwargs: self
  nn.Module.half = lambda self: self
  torch.Tensor.half = lambda self, *args, **kwargs: self.float()
  torch.cuda.Event = _WallClockEvent
  torch.cuda.synchronize = lambda *args, **kwargs: None
  torch.load = lambda f, *args, map_location=None, **kwargs: load(f, map_location='cpu', **kwargs)
  try:
    yield
  finally:
    (nn.Module.cuda, nn.Module.half, torch.Tensor.half, torch.cuda.Event,
     torch.cuda.synchronize, torch.load, loader_init.__defaults__) = saved


_SCHEMAS = []


def import_airbench():
  """(torch, airbench), or None when either is missing."""
  try:
    import torch
  except ImportError:
    return None
  with contextlib.suppress(RuntimeError):
    # torchvision wheels built for CUDA register these operators from their C++ library; on a
    # CPU-only torch the schemas are missing and the import fails. airbench uses none of them.
    library = torch.library.Library('torchvision', 'DEF')
    library.define('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    library.define('qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    _SCHEMAS.append(library)  # The schemas live as long as their library object.
  try:
    import airbench
  except ImportError:
    return None
  return torch, airbench


class AirbenchSide:
  """airbench94 on the same images: its loader reads them from `train.pt`/`test.pt`."""
  name = 'airbench'

  def __init__(self, torch, airbench, host_splits, class_names, epochs: float):
    self.torch, self.airbench = torch, airbench
    self.epochs = epochs
    self.cpu = not torch.cuda.is_available()
    self.device = 'cpu (float32)' if self.cpu else torch.cuda.get_device_name()
    self.dtype = 'float32' if self.cpu else 'float16'
    self.directory = tempfile.mkdtemp(prefix='race_airbench_')
    os.makedirs(os.path.join(self.directory, 'cifar10'))
    for split, name in (('train', 'train.pt'), ('test', 'test.pt')):
      images, labels = host_splits[split]
      torch.save({'images': torch.tensor(images), 'labels': torch.tensor(labels).long(),
                  'classes': list(class_names)}, os.path.join(self.directory, 'cifar10', name))
    from airbench.lib_airbench94 import hyp
    self.hyp = hyp
    with self._context():
      self.train_loader = airbench.CifarLoader(
          'cifar10', train=True, batch_size=hyp['opt']['batch_size'], aug=hyp['aug'],
          altflip=True)
      self.test_loader = airbench.CifarLoader('cifar10', train=False, batch_size=2000)
      start = time.perf_counter()
      airbench.warmup94(self.train_loader, epochs=self.epochs)  # One step, as airbench does.
      self.compile_seconds = time.perf_counter() - start

  @contextlib.contextmanager
  def _context(self):
    cwd = os.getcwd()
    os.chdir(self.directory)  # airbench's evaluation loader reads ./cifar10/test.pt.
    try:
      with _cuda_on_cpu(self.torch, self.airbench) if self.cpu else contextlib.nullcontext():
        yield
    finally:
      os.chdir(cwd)

  def train(self, seed: int) -> dict:
    torch, airbench = self.torch, self.airbench
    torch.manual_seed(seed)
    with self._context():
      if self.cpu:
        _WallClockEvent.total_ms = 0.0
        model = airbench.train94(self.train_loader, epochs=self.epochs, run=seed)
        seconds = _WallClockEvent.total_ms / 1e3
      else:  # airbench's own CUDA events, read back from the same arithmetic.
        model, seconds = self._timed_on_cuda(seed)
      accuracy = airbench.evaluate(model, self.test_loader, tta_level=0)
      tta_accuracy = airbench.evaluate(model, self.test_loader, tta_level=2)
    return {'seconds': seconds, 'accuracy': accuracy, 'tta_accuracy': tta_accuracy}

  def _timed_on_cuda(self, seed):
    """train94 with CUDA events that also add up what airbench adds up."""
    torch = self.torch
    event_class, total = torch.cuda.Event, [0.0]

    class SummingEvent(event_class):
      def elapsed_time(self, end):
        ms = super().elapsed_time(end)
        total[0] += ms
        return ms

    torch.cuda.Event = SummingEvent
    try:
      model = self.airbench.train94(self.train_loader, epochs=self.epochs, run=seed)
    finally:
      torch.cuda.Event = event_class
    return model, total[0] / 1e3


def mean_sd(values) -> str:
  if len(values) < 2:
    return f'{values[0]:.4g}'
  return f'{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}'


def summary(sides: dict, results: dict, runs: int, epochs) -> tuple[list, str]:
  """Per side: the table's row; and the table in Markdown."""
  rows = []
  for name, side in sides.items():
    r = results[name]
    rows.append({
        'system': name, 'device': side.device, 'dtype': side.dtype, 'runs': runs,
        'epochs': epochs, 'accuracy': [x['accuracy'] for x in r],
        'tta_accuracy': [x['tta_accuracy'] for x in r], 'seconds': [x['seconds'] for x in r],
        'compile_seconds': side.compile_seconds})
  header = ('| system | device | runs | epochs | accuracy % | TTA accuracy % | training s | '
            'warm-up s | time ratio |')
  lines = [header, '|' + ' --- |' * 9]
  base = statistics.mean(rows[-1]['seconds']) if 'airbench' in sides else None
  for row in rows:
    ratio = f'{statistics.mean(row["seconds"]) / base:.3g}' if base else '-'
    lines.append(
        f'| {row["system"]} | {row["device"]}, {row["dtype"]} | {row["runs"]} | {row["epochs"]} '
        f'| {mean_sd([100 * a for a in row["accuracy"]])} '
        f'| {mean_sd([100 * a for a in row["tta_accuracy"]])} '
        f'| {mean_sd(row["seconds"])} | {row["compile_seconds"]:.1f} | {ratio} |')
  return rows, '\n'.join(lines)


def make_sides(config, which: str = 'both') -> dict:
  """Name -> side, set up and warmed up: cifar_jax with `config`, and airbench94 on the same
  images and epochs where it is importable. `which`: 'both', 'cifar_jax' or 'airbench'."""
  sides = {}
  if which in ('both', 'cifar_jax'):
    sides['cifar_jax'] = CifarJaxSide(config)
  if which in ('both', 'airbench'):
    imported = import_airbench()
    if imported is None:
      print('airbench or torch is not importable: racing cifar_jax alone.', file=sys.stderr)
    else:
      dataset, host_splits = splits_lib.load_splits(config)
      sides['airbench'] = AirbenchSide(*imported, host_splits, dataset.class_names,
                                       epochs=config.num_epochs)
  return sides


def race(sides: dict, runs: int, first_seed: int) -> dict:
  """Name -> the results of `runs` runs per side, seeds first_seed, first_seed + 1, ...,
  the sides alternating (A B A B) so drift in the machine's speed hits both."""
  results = {name: [] for name in sides}
  for i in range(runs):
    for name, side in sides.items():
      result = side.train(seed=first_seed + i)
      results[name].append(result)
      print(f'{name} run {i}: {json.dumps(result)}', file=sys.stderr, flush=True)
  return results


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)
  config = _CONFIG.value
  if _EPOCHS.value:
    config.num_epochs = _EPOCHS.value
  sides = make_sides(config, _SIDES.value)
  results = race(sides, _RUNS.value, config.seed)
  rows, table = summary(sides, results, _RUNS.value, config.num_epochs)
  print(table)
  if _OUT.value:
    os.makedirs(_OUT.value, exist_ok=True)
    with open(os.path.join(_OUT.value, 'race.json'), 'w') as f:
      json.dump({'rows': rows, 'runs': results}, f, indent=1)
    with open(os.path.join(_OUT.value, 'race.md'), 'w') as f:
      f.write(table + '\n')


if __name__ == '__main__':
  define_flags()
  app.run(main)
