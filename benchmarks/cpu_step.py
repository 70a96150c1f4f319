"""Train-step time of cifar_jax and of PyTorch on the same network, batch and dtype, side by side.

    python benchmarks/cpu_step.py [--networks=airbench,simple_cnn,resnet18] \
        [--dtypes=float32,bfloat16] [--steps=5] [--rounds=2]

For each network and dtype, times the median train step (forward, backward, SGD with momentum,
on one fixed batch of random images, nothing else) of cifar_jax's compiled step and of the same
network written in PyTorch (channels_last; bfloat16 through CPU autocast, as PyTorch users run
it), alternating the two `--rounds` times so drift in the machine's speed hits both. Prints a
Markdown table with the ratio cifar_jax / PyTorch. Meant for CPUs; it runs wherever both
frameworks do. The PyTorch networks below mirror cifar_jax's: airbench94, the simple CNN and the
CIFAR ResNet-18 (3x3 stem, no max-pool).
"""
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from absl import logging as absl_logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import first_rows, fixed_batch_fn  # noqa: E402 (a script beside this one)

from cifar_jax import config as config_lib  # noqa: E402
from cifar_jax import sharding  # noqa: E402
from cifar_jax.training import setup as setup_lib  # noqa: E402


def define_flags():
  """This script's flags, defined when it runs (not when another script imports it)."""
  global _NETWORKS, _DTYPES, _STEPS, _ROUNDS
  _NETWORKS = flags.DEFINE_list('networks', ['airbench', 'simple_cnn', 'resnet18'], 'Networks.')
  _DTYPES = flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes.')
  _STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per round and side.')
  _ROUNDS = flags.DEFINE_integer('rounds', 2, 'Alternations of the two sides.')

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'configs')
# Network -> (config file, batch): the batch each recipe trains with.
NETWORKS = {'airbench': ('airbench94_c10.py', 1024), 'simple_cnn': ('simple_cnn_c10.py', 64),
            'resnet18': ('resnet_c10.py', 128)}


def jax_step(network: str, dtype: str, batch: int | None = None):
  """() -> seconds of one compiled train step of cifar_jax's network (at the recipe's batch
  unless `batch` is given)."""
  config = config_lib.from_file(os.path.join(CONFIGS, NETWORKS[network][0]))
  batch = batch or NETWORKS[network][1]
  config.update_from_flattened_dict({
      'dataset.source': 'synthetic', 'dataset.synthetic_train_size': batch,
      'dataset.synthetic_test_size': 100, 'eval_batch_size': 100, 'batch_size': batch,
      'model.dtype': dtype})
  mesh = sharding.create_mesh()
  run = setup_lib.setup(config, mesh)
  fn = fixed_batch_fn(config, run.model, run.optimizer, mesh, device_loop=False)
  images, labels = (sharding.shard_rows(jax.device_get(first_rows(a, batch, mesh)), mesh)
                    for a in (run.splits.train_images, run.splits.train_labels))
  state = [run.new_state()]

  def step():
    start = time.perf_counter()
    state[0] = jax.block_until_ready(fn(state[0], images, labels,
                                        jnp.int32(int(state[0].step) + 1)))
    return time.perf_counter() - start

  step()  # Compiles.
  return step


def torch_networks(torch):
  nn = torch.nn

  class ConvGroup(nn.Module):
    def __init__(self, cin, cout):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
      self.norm1 = nn.BatchNorm2d(cout, eps=1e-12, momentum=0.4)
      self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
      self.norm2 = nn.BatchNorm2d(cout, eps=1e-12, momentum=0.4)

    def forward(self, x):
      x = nn.functional.gelu(self.norm1(nn.functional.max_pool2d(self.conv1(x), 2)))
      return nn.functional.gelu(self.norm2(self.conv2(x)))

  def airbench():
    return nn.Sequential(nn.Conv2d(3, 24, 2), nn.GELU(), ConvGroup(24, 64), ConvGroup(64, 256),
                         ConvGroup(256, 256), nn.MaxPool2d(3), nn.Flatten(),
                         nn.Linear(256, 10, bias=False))

  def simple_cnn():
    def block(cin, cout, rate):
      return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(cout),
              nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(cout),
              nn.MaxPool2d(2), nn.Dropout(rate)]
    return nn.Sequential(*block(3, 32, 0.2), *block(32, 64, 0.3), nn.Flatten(),
                         nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.BatchNorm1d(128),
                         nn.Dropout(0.5), nn.Linear(128, 10))

  class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                     nn.BatchNorm2d(cout)) if stride != 1 or cin != cout
                       else nn.Identity())

    def forward(self, x):
      y = nn.functional.relu(self.bn1(self.conv1(x)))
      return nn.functional.relu(self.bn2(self.conv2(y)) + self.shortcut(x))

  def resnet18():
    layers, cin = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()], 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
      layers += [Basic(cin, cout, stride), Basic(cout, cout, 1)]
      cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10))

  return {'airbench': airbench, 'simple_cnn': simple_cnn, 'resnet18': resnet18}


def torch_step(network: str, dtype: str, batch: int | None = None, compiled: bool = False):
  """() -> seconds of one PyTorch train step of the same network, on the GPU when there is one
  (at the recipe's batch unless `batch` is given; `compiled`: through `torch.compile`)."""
  import torch
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  batch = batch or NETWORKS[network][1]
  net = torch_networks(torch)[network]().to(device, memory_format=torch.channels_last)
  optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
  x = torch.randn(batch, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
  y = torch.randint(0, 10, (batch,), device=device)
  forward = torch.compile(net) if compiled else net

  def step():
    start = time.perf_counter()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == 'bfloat16'):
      loss = torch.nn.functional.cross_entropy(forward(x).float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if device == 'cuda':
      torch.cuda.synchronize()
    return time.perf_counter() - start

  step()
  step()
  return step


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)
  rows = ['| network, batch | dtype | PyTorch | cifar_jax | ratio |', '|' + ' --- |' * 5]
  for network in _NETWORKS.value:
    for dtype in _DTYPES.value:
      sides = {'torch': torch_step(network, dtype), 'jax': jax_step(network, dtype)}
      times = {name: [] for name in sides}
      for _ in range(_ROUNDS.value):
        for name, step in sides.items():
          times[name] += [step() for _ in range(_STEPS.value)]
      median = {name: statistics.median(t) for name, t in times.items()}
      rows.append(f'| {network}, {NETWORKS[network][1]} | {dtype} | {median["torch"]:.3g} s '
                  f'| {median["jax"]:.3g} s | {median["jax"] / median["torch"]:.2f}x |')
      print(rows[-1], file=sys.stderr, flush=True)
  print('\n'.join(rows))
  import torch
  print(f'\njax {jax.__version__}, torch {torch.__version__}, numpy {np.__version__}, '
        f'{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs')


if __name__ == '__main__':
  define_flags()
  app.run(main)
