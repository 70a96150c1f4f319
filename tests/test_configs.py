"""Every config in configs/ trains two steps on synthetic data and evaluates, on CPU.

Batch sizes and synthetic split sizes are shrunk (to 16 and 64/32 examples) so that the large
models fit the test time; everything else — model, optimiser, schedule, recipes — is the
config's own. Fine-tuning configs, which require a pretrained file, start from a fresh
initialisation at an input size of at most 64 here; loading is tested in test_pretrained.py.
"""
import glob
import os

import pytest
from conftest import CONFIG_DIR, load_config_file

from cifar_jax import workdir
from cifar_jax.training import loop

CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, '*.py')))


def test_every_config_is_listed():
  assert len(CONFIGS) >= 14


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.basename(p)[:-3])
def test_config_runs_two_steps_on_synthetic_data(path, tmp_path):
  config = load_config_file(path)
  config.update_from_flattened_dict({
      'dataset.source': 'synthetic', 'max_steps': 2, 'dataset.synthetic_train_size': 64,
      'dataset.synthetic_test_size': 32, 'batch_size': 16, 'eval_batch_size': 32})
  if config.model.init_from is None:
    config.model.init_from = ''
    config.model.input_size = min(config.model.input_size, 64)
  state = loop.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 2
  (record,) = workdir.read_metrics(str(tmp_path))
  assert record['step'] == 2 and record['test_num_examples'] == 32
