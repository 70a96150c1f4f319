"""notebooks/quickstart.ipynb runs top to bottom (tiny network, synthetic data), as users run it."""
import json
import os

import pytest
from conftest import REPO, XLA_TEST_FLAGS

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')
pytest.importorskip('ipykernel')

NOTEBOOK = os.path.join(REPO, 'notebooks', 'quickstart.ipynb')


def test_the_notebook_is_kept_without_outputs():
  with open(NOTEBOOK) as f:
    cells = json.load(f)['cells']
  code = [cell for cell in cells if cell['cell_type'] == 'code']
  assert code and all(not c['outputs'] and c['execution_count'] is None for c in code)


def test_quickstart_runs_top_to_bottom(tmp_path, monkeypatch):
  monkeypatch.setenv('CIFAR_JAX_NOTEBOOK_SMOKE', '1')
  monkeypatch.setenv('CIFAR_JAX_NOTEBOOK_WORKDIR', str(tmp_path / 'run'))
  monkeypatch.setenv('XLA_FLAGS', XLA_TEST_FLAGS)  # One device, as on a laptop or in Colab.
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(notebook, timeout=300, kernel_name='python3',
                          resources={'metadata': {'path': os.path.dirname(NOTEBOOK)}}).execute()
  outputs = {i: ''.join(o.get('text', '') for o in cell.outputs)
             for i, cell in enumerate(notebook.cells) if cell.cell_type == 'code'}
  text = '\n'.join(outputs.values())
  # Interrupted half way, resumed to the end: the two training calls' own words.
  assert 'stopped at step 4' in text and 'Resuming from the checkpoint at step 4' in text
  assert 'finished at step 8' in text
  # The curves and the confusion matrix shown inline, four predictions, the evaluation.
  images = [o for cell in notebook.cells if cell.cell_type == 'code' for o in cell.outputs
            if o.output_type == 'display_data' and 'image/png' in o.data]
  assert len(images) == 2
  assert text.count('true class') == 4
  assert "'test_accuracy'" in text
  assert os.path.exists(tmp_path / 'run' / 'report' / 'learning_curves.png')
