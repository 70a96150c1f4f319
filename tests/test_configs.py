"""Every config in configs/: its model at full size is well-formed, and its recipe trains two
steps on synthetic data and evaluates, on CPU.

The full-size model is checked by shapes alone (`jax.eval_shape`: nothing is compiled). The two
steps run with the config's model family at its tiny size (`models.TINY`), keeping every other
field of the config — optimiser, schedule, augmentation, mining, EMA, the model's dtype and
regularisers — so that compiling WRN-28-10 or ViT-B/16 on CPU does not dominate the suite;
each family at its tiny size is tested in test_models.py. Batch sizes and synthetic split sizes
are shrunk (to 16 and 64/32 examples). Fine-tuning configs, which require a pretrained file,
start from a fresh initialisation at an input size of at most 64 here; loading is tested in
test_pretrained.py.
"""
import glob
import os

import jax
import ml_collections
import numpy as np
import pytest
from conftest import CONFIG_DIR, load_config_file

from cifar_jax import models, workdir
from cifar_jax.config import MODEL_SETTINGS
from cifar_jax.training import loop

CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, '*.py')))


def test_every_config_is_listed():
  assert len(CONFIGS) >= 14


def synthetic_config(path):
  config = load_config_file(path)
  config.update_from_flattened_dict({
      'dataset.source': 'synthetic', 'max_steps': 2, 'dataset.synthetic_train_size': 64,
      'dataset.synthetic_test_size': 32, 'batch_size': 16, 'eval_batch_size': 32})
  if config.model.init_from is None:
    config.model.init_from = ''
    config.model.input_size = min(config.model.input_size, 64)
  return config


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.basename(p)[:-3])
def test_config_model_is_well_formed_at_full_size(path):
  config = synthetic_config(path)
  num_classes = 100 if config.dataset.name == 'cifar100' else 10
  model = models.from_config(config.model, num_classes)
  size = config.model.input_size
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                np.zeros((1, size, size, 3)), train=False))
  assert variables['params']['head']['kernel'].shape[-1] == num_classes


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.basename(p)[:-3])
def test_config_recipe_trains_two_steps_on_synthetic_data(path, tmp_path, monkeypatch):
  config = synthetic_config(path)
  name = config.model.name
  monkeypatch.setitem(models.MODELS, name, models.TINY[name])
  # The tiny variant fixes its sizes, so they are no longer config fields: drop the config's.
  kept = (*MODEL_SETTINGS, *models.config_fields(name))
  config.model = ml_collections.ConfigDict(
      {k: v for k, v in config.model.items() if k in kept})
  state = loop.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 2
  (record,) = workdir.read_metrics(str(tmp_path))
  assert record['step'] == 2 and record['test_num_examples'] == 32
  assert np.isfinite(record['train_loss']) and np.isfinite(record['test_loss'])
