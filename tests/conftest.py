"""Test set-up and the helpers the test modules share.

JAX sees 8 CPU devices, so parallel code runs as on 8 GPUs.
"""
import functools
import importlib
import importlib.util
import os
import pickle
import subprocess
import sys

# Compiling is most of the suite's time. At LLVM's optimisation level 0 XLA compiles the same
# programs about a fifth faster into slower machine code; the commands the tests start
# inherit it. Must happen before JAX initialises its backends.
XLA_TEST_FLAGS = '--xla_backend_optimization_level=0'
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" {XLA_TEST_FLAGS} --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, 'configs')

# XLA:CPU compilation is most of the suite's time, and many tests (and the commands they start
# as subprocesses, which inherit these variables) compile the same programs: JAX's persistent
# cache compiles each once per checkout.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(REPO, '.pytest_cache', 'jax'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
# XLA:CPU compiles JAX's default (partitionable) threefry several times slower than the classic
# one, and random initialisers and augmentation are in most programs here; the tests need random
# numbers, not particular ones. Our draws are per device and per example in either form, and
# `test_loop.py` checks parallel against serial with the default form as well.
os.environ.setdefault('JAX_THREEFRY_PARTITIONABLE', 'false')

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from cifar_jax import config as config_lib
from cifar_jax import data, sharding


def tiny_config(**overrides):
  """`configs/smoke.py` made smaller: 256 training and 100 test images, a width-4 ResNet-10,
  batch 32 (8 steps an epoch), 2 epochs, 3 steps per call; then `overrides`."""
  config = load_config_file(os.path.join(CONFIG_DIR, 'smoke.py'))
  config.update_from_flattened_dict({
      'dataset.synthetic_train_size': 256, 'dataset.synthetic_test_size': 100,
      'model.width': 4, 'batch_size': 32, 'eval_batch_size': 64, 'num_epochs': 2,
      'steps_per_call': 3, **overrides})
  return config


def tiny_airbench_config(**overrides):
  """`configs/airbench94_c10.py` on `tiny_config`'s synthetic data, at widths 8/16/16, batch 32
  (8 steps an epoch), 2 epochs, whitened from 64 images; then `overrides`."""
  config = load_config_file(os.path.join(CONFIG_DIR, 'airbench94_c10.py'))
  config.update_from_flattened_dict({
      'dataset.source': 'synthetic', 'dataset.synthetic_train_size': 256,
      'dataset.synthetic_test_size': 100, 'model.widths': (8, 16, 16),
      'model.whiten_examples': 64, 'batch_size': 32, 'eval_batch_size': 64, 'num_epochs': 2,
      **overrides})
  return config


def random_images(n, size=32, seed=0):
  """uint8 [n, size, size, 3] uniform random images."""
  return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def assert_load_refused(path, model, message):
  """`pretrained.load` refuses the file at `path` for `model` with one line matching `message`."""
  from cifar_jax import pretrained  # noqa: PLC0415 (only the loader tests need it)
  from cifar_jax.errors import UserError  # noqa: PLC0415
  with pytest.raises(UserError, match=message) as raised:
    pretrained.load(str(path), model, *zero_variables(model))
  assert '\n' not in str(raised.value)


def zero_variables(model, size=32):
  """Zeros of the model's variable shapes, found without compiling its initialisation: enough
  for the tests that only check which files and shapes a loader refuses."""
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                jnp.zeros((1, size, size, 3)), train=False))
  variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables)
  return variables['params'], variables.get('batch_stats', {})


def import_torchvision():
  """torchvision, or a skip of the calling test when torch or torchvision is not installed.

  A torchvision whose compiled operators do not load into the installed torch stops its import
  at `operator torchvision::nms does not exist`: its Python side registers fake kernels for
  `nms` and `qnms`, whose schemas the compiled library would have defined. Defining the two
  schemas lets the import finish; the transforms the tests compare with are plain torch code.
  """
  if not all(importlib.util.find_spec(name) for name in ('torch', 'torchvision')):
    pytest.skip('torch or torchvision is not installed')
  import torch
  if not hasattr(torch.ops.torchvision, 'nms'):
    _torchvision_schemas()
  return importlib.import_module('torchvision')


@functools.cache  # Defined once per process; the cache keeps the library, and so the schemas.
def _torchvision_schemas():
  import torch
  library = torch.library.Library('torchvision', 'DEF')
  library.define('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
  library.define('qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
  return library


def import_keras():
  """Keras 3 on the JAX backend, or a skip of the calling test when Keras 3 is not installed.

  The backend is set before Keras' first import: its default, TensorFlow, is not a dependency.
  """
  if importlib.util.find_spec('keras') is None:
    pytest.skip('keras is not installed')
  if 'keras' not in sys.modules:
    os.environ['KERAS_BACKEND'] = 'jax'
  keras = importlib.import_module('keras')
  if int(keras.__version__.split('.')[0]) < 3:
    pytest.skip(f'Keras 3 is needed, not {keras.__version__}')
  return keras


def keras_application(keras, name, **kwargs):
  """keras.applications' `name` for 32x32 inputs, without weights, its initial weights drawn
  from a fixed seed: Keras draws them from an unseeded stream, and a test's reference must not
  change from one run to the next."""
  keras.utils.set_random_seed(0)
  return getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), **kwargs)


def mesh_of(num_devices):
  """A 1-D `data` mesh over the first `num_devices` devices."""
  return Mesh(np.array(jax.devices()[:num_devices]), (sharding.DATA_AXIS,))


def assert_trees_close(a, b, rtol=1e-4, atol=1e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y),
                                                       rtol=rtol, atol=atol), a, b)


def assert_trees_close_to_scale(a, b, tol):
  """Every leaf of `b` within `tol` times the largest magnitude of the same leaf of `a`: for
  leaves whose small entries carry rounding amplified by the rest of the network."""
  def close(x, y):
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == y.shape
    if x.size:
      assert np.abs(x - y).max() <= tol * np.abs(x).max(), (np.abs(x - y).max(), np.abs(x).max())
  jax.tree.map(close, a, b)


def load_config_file(path):
  """`get_config()` of a config file."""
  return config_lib.from_file(path)


def run_command(module, *flags, **kwargs):
  """Runs `python -m module flags...` (or `python script.py flags...` for a path ending in .py)
  from the repository as a user would."""
  target = [module] if module.endswith('.py') else ['-m', module]
  return subprocess.run([sys.executable, *target, *flags], cwd=REPO, capture_output=True,
                        text=True, timeout=600, **kwargs)


def write_official_cifar100(directory):
  """A small CIFAR-100 in the official `cifar-100-python/` layout, from synthetic images."""
  dataset = data.load('cifar100', 'synthetic', synthetic_train_size=320, synthetic_test_size=100)
  folder = directory / 'cifar-100-python'
  folder.mkdir()
  for name, split in (('train', dataset.train), ('test', dataset.test)):
    rows = split.images.transpose(0, 3, 1, 2).reshape(len(split.labels), -1)  # 1024 R, G, B.
    content = {'data': rows, 'fine_labels': split.labels.tolist(),
               'coarse_labels': split.coarse_labels.tolist(),
               'filenames': [f'{i}.png' for i in range(len(split.labels))]}
    (folder / name).write_bytes(pickle.dumps(content, protocol=4))
  (folder / 'meta').write_bytes(pickle.dumps(
      {'fine_label_names': list(dataset.class_names),
       'coarse_label_names': list(dataset.coarse_class_names)}, protocol=4))


def write_official_cifar10(directory, train_images, train_labels, test_images, test_labels,
                           class_names):
  """These images in the official `cifar-10-batches-py/` layout: the training rows split in order
  over `data_batch_1`..`5`, the test rows in `test_batch`."""
  folder = directory / 'cifar-10-batches-py'
  folder.mkdir(parents=True)
  batches = zip(np.array_split(np.arange(len(train_labels)), 5), range(1, 6), strict=True)
  files = [(f'data_batch_{i}', train_images[rows], train_labels[rows]) for rows, i in batches]
  for name, images, labels in [*files, ('test_batch', test_images, test_labels)]:
    rows = images.transpose(0, 3, 1, 2).reshape(len(labels), -1)  # 1024 R, G, B.
    content = {'data': rows, 'labels': [int(label) for label in labels],
               'filenames': [f'{i}.png' for i in range(len(labels))]}
    (folder / name).write_bytes(pickle.dumps(content, protocol=4))
  (folder / 'batches.meta').write_bytes(pickle.dumps({'label_names': list(class_names)},
                                                     protocol=4))


class WritesAFileWhenUnpickled:
  """An object whose unpickling would run code: create the file at `marker`."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return open, (self.marker, 'w')


@pytest.fixture(scope='session')
def smoke_workdir(tmp_path_factory):
  """A workdir trained by `python -m cifar_jax.main --config=configs/smoke.py`, shared by the
  tests of the commands that read workdirs. Tests must not change it."""
  workdir = tmp_path_factory.mktemp('smoke')
  result = run_command('cifar_jax.main', '--config=configs/smoke.py', f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-3000:]
  # Redirected, the log holds the evaluation lines, not a progress bar's redraws.
  assert '\r' not in result.stderr and 'step 24:' in result.stderr
  return workdir


@pytest.hookimpl(tryfirst=True)  # Before xdist's own hook reads the groups.
def pytest_collection_modifyitems(items):
  """With `pytest -n 2 --dist loadgroup`, the tests of `smoke_workdir` share one worker, so the
  smoke run trains once."""
  for item in items:
    if 'smoke_workdir' in getattr(item, 'fixturenames', ()):
      item.add_marker(pytest.mark.xdist_group('smoke_workdir'))
