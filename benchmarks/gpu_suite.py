"""Everything worth measuring on one accelerator, in one invocation, most valuable first.

    python benchmarks/gpu_suite.py --data_dir=DIR_WITH_cifar-10-batches-py --out=DIR \
        [--budget_s=480]
    python benchmarks/gpu_suite.py --smoke --out=DIR    # tiny sizes, synthetic data, any CPU

Sections, in this order; each adds its results to DIR/suite.json and DIR/suite.md as soon as it
ends, and a section that would start after `--budget_s` seconds is recorded as skipped, so a
timeout loses only the tail:

1. race: `configs/airbench94_c10.py` in bfloat16 against airbench94, 5 runs per side,
   alternating (`race.py`'s two sides; airbench is raced only where it is importable).
2. mining: the same recipe with hard example mining `off`, `topk` and `softmax`, 5 seeds each;
   accuracy per mode and its paired difference from `off` (same seed, same data order).
3. throughput: ResNet-18 train steps at batch 128 and 512 in bfloat16: cifar_jax's train
   function (data gathered and augmented on the device) and its fixed-batch step, PyTorch eager
   (channels_last, bfloat16 autocast) and `torch.compile`, on one fixed batch on the device.
4. simple_cnn: `configs/simple_cnn_c10.py` at its full 50 epochs, 3 seeds.
5. airbench96: `configs/airbench96_c10.py` in bfloat16, 3 seeds (cifar_jax alone).
6. mining_sweep: 2 seeds each of `topk` at fractions 0.1/0.25/0.5 x boosts 2/4, `softmax` at
   temperatures 0.5/1/2, and each mode switched on for the last third of the run only, paired
   with the mining section's `off` runs of the same seeds.

Needs jax, flax, optax, orbax and, for the PyTorch parts, torch (airbench and torchvision travel
as wheels when wanted). `--smoke` runs every section at tiny sizes (1-2 runs, synthetic data,
no `torch.compile`, fewer mining variants) so that a test keeps this script working.
"""
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time

import jax
from absl import app, flags
from absl import logging as absl_logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_step  # noqa: E402 (scripts beside this one)
import race  # noqa: E402
import throughput  # noqa: E402

from cifar_jax import config as config_lib  # noqa: E402
from cifar_jax import workdir as workdir_lib  # noqa: E402
from cifar_jax.training import loop  # noqa: E402

_DATA_DIR = flags.DEFINE_string('data_dir', '', 'Directory holding cifar-10-batches-py/.')
_OUT = flags.DEFINE_string('out', None, 'Directory for suite.json and suite.md.', required=True)
_SMOKE = flags.DEFINE_bool('smoke', False, 'Tiny sizes on synthetic data (a test runs it).')
_BUDGET = flags.DEFINE_float('budget_s', 480.0, 'No section starts after this many seconds.')

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'configs')
MINING_MODES = ('off', 'topk', 'softmax')
# The smoke mode's overrides of every config: synthetic splits, small batches.
SMOKE_DATA = {'dataset.source': 'synthetic', 'dataset.synthetic_train_size': 256,
              'dataset.synthetic_test_size': 128, 'eval_batch_size': 64}


def load_config(name: str, **overrides):
  """configs/`name`.py with the data of this invocation, then `overrides`."""
  config = config_lib.from_file(os.path.join(CONFIGS, f'{name}.py'))
  if _SMOKE.value:
    config.update_from_flattened_dict(SMOKE_DATA)
  else:
    config.dataset.update(data_dir=_DATA_DIR.value, download=False)
  config.update_from_flattened_dict(overrides)
  return config


def fast_config(name: str = 'airbench94_c10', **overrides):
  """A fast recipe in bfloat16 (smoke mode: widths 8/16/16, 1 epoch of batch 64)."""
  smoke = {'model.widths': (8, 16, 16), 'model.whiten_examples': 64, 'batch_size': 64,
           'num_epochs': 1} if _SMOKE.value else {}
  return load_config(name, **{'model.dtype': 'bfloat16', **smoke, **overrides})


def section_race() -> dict:
  runs = 1 if _SMOKE.value else 5
  config = fast_config()
  sides = race.make_sides(config, 'cifar_jax' if _SMOKE.value else 'both')
  results = race.race(sides, runs, config.seed)
  rows, table = race.summary(sides, results, runs, config.num_epochs)
  note = '' if 'airbench' in sides else '\n\nairbench was not raced (not importable, or smoke).'
  return {'rows': rows, 'runs': results, 'markdown': table + note}


def _tta_accuracies(config, seeds) -> list:
  side = race.CifarJaxSide(config)
  return [side.train(seed=seed)['tta_accuracy'] for seed in seeds]


def _mining_table(accuracy: dict, off: list) -> str:
  """Markdown: per variant, TTA accuracy per seed, mean ± sd, and paired differences from
  `off` (the same seeds, `off[i]` for seed i)."""
  lines = ['| HEM | TTA accuracy % per seed | mean ± sd | minus `off`, paired (mean ± sd) '
           '| seeds better than `off` |', '|' + ' --- |' * 5]
  for name, values in accuracy.items():
    diffs = [100 * (a - b) for a, b in zip(values, off, strict=False)]
    paired = '' if name == 'off' else race.mean_sd(diffs) + ' points'
    better = '' if name == 'off' else f'{sum(d > 0 for d in diffs)} of {len(diffs)}'
    lines.append(f'| {name} | {" / ".join(f"{100 * a:.2f}" for a in values)} '
                 f'| {race.mean_sd([100 * a for a in values])} | {paired} | {better} |')
  return '\n'.join(lines)


def section_mining() -> dict:
  seeds = list(range(2 if _SMOKE.value else 5))
  modes = ('off', 'softmax') if _SMOKE.value else MINING_MODES  # The sweep runs `topk` too.
  accuracy = {mode: _tta_accuracies(fast_config(**{'hem.mode': mode}), seeds) for mode in modes}
  return {'tta_accuracy': accuracy, 'seeds': seeds,
          'markdown': _mining_table(accuracy, accuracy['off'])}


# The sweep around the default modes: name -> `config.hem` fields.
MINING_SWEEP = {
    **{f'topk {fraction} x{boost}': {'mode': 'topk', 'fraction': fraction, 'boost': boost}
       for fraction in (0.1, 0.25, 0.5) for boost in (2.0, 4.0)},
    **{f'softmax T={t}': {'mode': 'softmax', 'temperature': t} for t in (0.5, 1.0, 2.0)},
    'topk, last third': {'mode': 'topk', 'start_fraction': 2 / 3},
    'softmax, last third': {'mode': 'softmax', 'start_fraction': 2 / 3},
}


def section_mining_sweep(off: list) -> dict:
  """2 seeds per variant (smoke: the first variant, 1 seed), paired with `off`."""
  names, seeds = (list(MINING_SWEEP)[:1], [0]) if _SMOKE.value else (list(MINING_SWEEP), [0, 1])
  accuracy = {name: _tta_accuracies(
      fast_config(**{f'hem.{k}': v for k, v in MINING_SWEEP[name].items()}), seeds)
      for name in names}
  return {'tta_accuracy': accuracy, 'seeds': seeds, 'markdown': _mining_table(accuracy, off)}


def section_airbench96() -> dict:
  """`configs/airbench96_c10.py` in bfloat16, cifar_jax alone, 3 seeds (smoke: 1)."""
  seeds = [0] if _SMOKE.value else [0, 1, 2]
  side = race.CifarJaxSide(fast_config('airbench96_c10'))
  runs = [side.train(seed=seed) for seed in seeds]
  markdown = (f'airbench96_c10, seeds {seeds}: TTA accuracy '
              f'{race.mean_sd([100 * r["tta_accuracy"] for r in runs])}%, training '
              f'{race.mean_sd([r["seconds"] for r in runs])} s, warm-up '
              f'{side.compile_seconds:.1f} s')
  return {'runs': runs, 'markdown': markdown}


def _median_step(step, count: int) -> float:
  return statistics.median(step() for _ in range(count))


def section_throughput() -> dict:
  """ResNet-18 (simple_cnn in smoke mode) train steps, bfloat16, cifar_jax and PyTorch."""
  network, batches, steps = (('simple_cnn', (16,), 2) if _SMOKE.value
                             else ('resnet18', (128, 512), 50))
  config_name = cpu_step.NETWORKS[network][0][:-3]
  rows = []
  for batch in batches:
    config = load_config(config_name, **{'model.dtype': 'bfloat16', 'batch_size': batch})
    if _SMOKE.value:
      config.dataset.synthetic_train_size = 4 * batch
    measured = throughput.measure(config, steps)
    row = {'network': network, 'batch': batch, 'device': measured['device_kind'],
           'cifar_jax_step_s': measured['step_seconds'],
           'cifar_jax_fixed_batch_step_s': measured['fixed_batch_step_seconds']}
    if importlib.util.find_spec('torch'):
      row['torch_eager_step_s'] = _median_step(
          cpu_step.torch_step(network, 'bfloat16', batch), steps)
      if not _SMOKE.value:
        row['torch_compile_step_s'] = _median_step(
            cpu_step.torch_step(network, 'bfloat16', batch, compiled=True), steps)
    rows.append(row)
  lines = ['| network, batch | device | cifar_jax train function | cifar_jax fixed batch | '
           'PyTorch eager | PyTorch compiled |', '|' + ' --- |' * 6]
  for row in rows:
    cells = [row.get(k) for k in ('cifar_jax_step_s', 'cifar_jax_fixed_batch_step_s',
                                  'torch_eager_step_s', 'torch_compile_step_s')]
    lines.append(f'| {row["network"]}, {row["batch"]} | {row["device"]} | '
                 + ' | '.join('-' if c is None else f'{1e3 * c:.3g} ms' for c in cells) + ' |')
  return {'rows': rows, 'markdown': '\n'.join(lines)}


def section_simple_cnn() -> dict:
  seeds = range(1 if _SMOKE.value else 3)
  smoke = {'num_epochs': 1, 'batch_size': 64} if _SMOKE.value else {}
  final = []
  for seed in seeds:
    with tempfile.TemporaryDirectory() as workdir:
      start = time.perf_counter()
      loop.train_and_evaluate(load_config('simple_cnn_c10', seed=seed, **smoke), workdir)
      record = workdir_lib.read_metrics(workdir)[-1]
      final.append({'seed': seed, 'test_accuracy': record['test_accuracy'],
                    'epoch': record['epoch'], 'seconds': time.perf_counter() - start})
  accuracy = [100 * r['test_accuracy'] for r in final]
  markdown = (f'simple_cnn_c10, {final[0]["epoch"]} epochs, seeds '
              f'{", ".join(str(r["seed"]) for r in final)}: test accuracy '
              f'{" / ".join(f"{a:.2f}" for a in accuracy)}% (mean ± sd {race.mean_sd(accuracy)}%),'
              f' {statistics.mean(r["seconds"] for r in final):.0f} s a run')
  return {'runs': final, 'markdown': markdown}


SECTIONS = {'race': section_race, 'mining': section_mining, 'throughput': section_throughput,
            'simple_cnn': section_simple_cnn, 'airbench96': section_airbench96,
            'mining_sweep': section_mining_sweep}


def write(out: str, report: dict) -> None:
  with open(os.path.join(out, 'suite.json'), 'w') as f:
    json.dump(report, f, indent=1)
  lines = [f'# cifar_jax on {report["device"]}', '',
           f'jax {report["jax"]}, data: {report["data"]}', '']
  for name, section in report['sections'].items():
    lines += [f'## {name} ({section["seconds"]:.0f} s)' if 'seconds' in section else
              f'## {name}', '', section['markdown'], '']
  with open(os.path.join(out, 'suite.md'), 'w') as f:
    f.write('\n'.join(lines))


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)
  start = time.perf_counter()
  os.makedirs(_OUT.value, exist_ok=True)
  data = ('synthetic (smoke)' if _SMOKE.value
          else f'CIFAR-10 from {_DATA_DIR.value} (the JPEG q75 copy, if built from it)')
  report = {'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
            'jax': jax.__version__, 'data': data, 'smoke': _SMOKE.value, 'sections': {}}
  for name, section in SECTIONS.items():
    if time.perf_counter() - start > _BUDGET.value:
      report['sections'][name] = {'markdown': f'Skipped: the budget of {_BUDGET.value:.0f} s '
                                              'was spent.'}
    else:
      begin = time.perf_counter()
      # The sweep pairs its seeds with the mining section's `off` runs.
      args = ([report['sections']['mining']['tta_accuracy']['off']]
              if name == 'mining_sweep' else [])
      report['sections'][name] = {**section(*args), 'seconds': time.perf_counter() - begin}
    write(_OUT.value, report)
    print(f'{name}: done at {time.perf_counter() - start:.0f} s', file=sys.stderr, flush=True)
  print(open(os.path.join(_OUT.value, 'suite.md')).read())


if __name__ == '__main__':
  app.run(main)
