"""Weights & Biases in offline mode (no network): a run's scalars and figures, read back from
W&B's own files, and one W&B run across a resume; without wandb installed, one error line."""
import json
import os
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, tiny_config

from cifar_jax import workdir as workdir_lib
from cifar_jax.errors import UserError
from cifar_jax.training import loop, wandb_log


def read_records(path):
  """The protobuf records of a W&B run file (`run-ID.wandb`).

  The file is a LevelDB-style log: a 7-byte header (':W&B', a magic number and a version),
  then 32 KiB blocks of chunks, each a 7-byte header (CRC-32C, little-endian length, type:
  1 a whole record, 2-4 its first, middle and last parts) and its bytes; a block's tail too
  short for a header is padding. Each record is a `wandb_internal_pb2.Record`.
  """
  from wandb.proto import wandb_internal_pb2

  data = path.read_bytes()
  assert data[:4] == b':W&B'
  position, block, pieces = 7, 32768, b''
  while position + 7 <= len(data):
    if block - position % block < 7:
      position += block - position % block
      continue
    _, length, kind = struct.unpack('<IHB', data[position:position + 7])
    if kind == 0:
      break
    pieces += data[position + 7:position + 7 + length]
    position += 7 + length
    if kind in (1, 4):  # A whole record, or its last part.
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pieces)
      pieces = b''
      yield record


def history(run_directory):
  """The rows a W&B run directory's run file logged, as {key: value}.

  W&B's service process writes the file and may still be writing after `finish()` returns (a
  loaded machine once gave only the first run's rows): it is read once it ends with the run's
  'exit' record, waiting up to a minute.
  """
  (path,) = run_directory.glob('run-*.wandb')
  deadline = time.monotonic() + 60
  while True:
    records = list(read_records(path))
    if (records and records[-1].WhichOneof('record_type') == 'exit') or (
        time.monotonic() > deadline):
      break
    time.sleep(0.1)
  return [{item.key or '/'.join(item.nested_key): json.loads(item.value_json)
           for item in record.history.item}
          for record in records if record.WhichOneof('record_type') == 'history']


def test_offline_run_logs_the_scalars_and_figures_and_resumes_the_same_w_and_b_run(
    tmp_path, monkeypatch):
  pytest.importorskip('wandb')
  for variable, folder in (('WANDB_DIR', 'wandb_dir'), ('WANDB_CACHE_DIR', 'cache'),
                           ('WANDB_CONFIG_DIR', 'config'), ('WANDB_DATA_DIR', 'data')):
    monkeypatch.setenv(variable, str(tmp_path / folder))
  monkeypatch.setenv('WANDB_MODE', 'offline')
  monkeypatch.setenv('WANDB_SILENT', 'true')
  workdir = tmp_path / 'run'
  config = tiny_config(**{'num_epochs': 1, 'max_steps': 4, 'logging.wandb_project': 'cifar'})
  loop.train_and_evaluate(config, str(workdir))  # Stopped after 4 of 8 steps...
  config.max_steps = 0
  # ...and resumed as `cifar_jax.main` runs it: the figures once training ends.
  figures = tmp_path / 'figures'
  figures.mkdir()
  import matplotlib.pyplot as plt
  plt.imsave(figures / 'learning_curves.png', np.zeros((4, 4, 3)))
  with wandb_log.WandbLog(config, str(workdir)) as wandb_run:
    state = loop.train_and_evaluate(config, str(workdir), wandb_run)
    wandb_run.log_figures(str(figures), int(state.step))

  run_id = (workdir / wandb_log.ID_FILE).read_text().strip()
  first, resumed = sorted((tmp_path / 'wandb_dir' / 'wandb').glob('offline-run-*'))
  assert first.name.endswith(f'-{run_id}') and resumed.name.endswith(f'-{run_id}')
  records = workdir_lib.read_metrics(str(workdir))
  logged = history(first) + history(resumed)
  assert [row['step'] for row in logged] == [4, 8, 8]
  for row, record in zip(logged, records, strict=False):
    for key, value in record.items():
      if isinstance(value, (int, float)):
        assert row[key] == pytest.approx(value), key
  assert 'train_loss' in logged[0] and 'test_accuracy' in logged[1]
  assert logged[2]['report/learning_curves/_type'] == 'image-file'
  assert (resumed / 'files' / logged[2]['report/learning_curves/path']).is_file()


def test_asking_for_w_and_b_without_wandb_installed_is_one_line(tmp_path, monkeypatch):
  config = tiny_config(**{'logging.wandb_project': 'cifar'})
  monkeypatch.setitem(sys.modules, 'wandb', None)  # As if not installed.
  with pytest.raises(UserError, match=r'wandb is not installed: pip install -e "\.\[wandb\]"'):
    wandb_log.check_config(config.logging)
  config.logging.wandb_project = ''
  wandb_log.check_config(config.logging)  # Off: wandb is never imported.


def test_training_imports_no_wandb_unless_asked(tmp_path):
  # The command line, with wandb made unimportable: importing and checking the config work
  # without it, and asking for W&B is one line before anything is loaded.
  script = ("import runpy, sys; sys.modules['wandb'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_module('cifar_jax.main', run_name='__main__')")
  result = subprocess.run(
      [sys.executable, '-c', script, 'main', '--config=configs/smoke.py', f'--workdir={tmp_path}',
       '--config.logging.wandb_project=cifar'], cwd=REPO, capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(
      'error: config.logging.wandb_project is set, but wandb is not installed')
  assert not os.path.exists(tmp_path / wandb_log.ID_FILE)
