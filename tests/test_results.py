"""The commands that show results: report (written by main), evaluate, predict and compare."""
import csv
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, tiny_config, write_official_cifar100
from conftest import run_command as run
from PIL import Image

from cifar_jax import compare, data, models, workdir
from cifar_jax.augment import normalize
from cifar_jax.errors import UserError
from cifar_jax.results import report, restore
from cifar_jax.training import loop

# (width, height) in pixels of each figure of the smoke run (CIFAR-10: 10 classes).
FIGURES = {
    'learning_curves.png': (800, 900),
    'confusion_matrix.png': (650, 650),
    'per_class_accuracy.png': (700, 320),
    'test_predictions.png': (1520, 960),
    'hardest_train_images.png': (1520, 960),
}


def test_training_ends_with_a_report_of_valid_pngs(smoke_workdir):
  out = smoke_workdir / 'report'
  for name, size in FIGURES.items():
    with Image.open(out / name) as image:
      assert image.format == 'PNG' and image.size == size, name
      image.verify()
  text = (out / 'report.md').read_text()
  assert text.startswith('# resnet10 on cifar10')
  for name in FIGURES:
    assert f']({name})' in text
  # The figures are in TensorBoard too: an event file holds an image summary per figure.
  events = [p for p in (smoke_workdir / 'tensorboard').iterdir() if 'events' in p.name]
  assert events
  written = b''.join(p.read_bytes() for p in events)
  for name in FIGURES:
    assert f'report/{name[:-4]}'.encode() in written, name


def test_evaluate_reports_the_models_own_predictions(smoke_workdir):
  result = run('cifar_jax.evaluate', f'--workdir={smoke_workdir}', '--checkpoint=latest')
  assert result.returncode == 0, result.stderr[-3000:]
  evaluated = json.loads(result.stdout)
  assert evaluated['report'].endswith('report/report.md')
  # Its numbers agree with the test accuracy the training loop logged at the same checkpoint.
  assert evaluated['test_accuracy'] == pytest.approx(
      workdir.read_metrics(smoke_workdir)[-1]['test_accuracy'])


def write_test_images(directory, count=3):
  """The smoke run's first `count` test images as (lossless) PNGs; returns their arrays."""
  dataset = data.load('cifar10', 'synthetic', synthetic_train_size=512, synthetic_test_size=256,
                      synthetic_seed=0)
  directory.mkdir()
  for i in range(count):
    Image.fromarray(dataset.test.images[i]).save(directory / f'test_{i}.png')
  return dataset.test.images[:count]


def test_predict_gives_the_probabilities_the_model_computes(smoke_workdir, tmp_path):
  images = write_test_images(tmp_path / 'images')
  result = run('cifar_jax.predict', f'--workdir={smoke_workdir}', '--json', '--top_k=10',
               str(tmp_path / 'images'))
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
  assert [line['file'].rsplit('/', 1)[-1] for line in lines] == [
      'test_0.png', 'test_1.png', 'test_2.png']

  # The reference: the restored model applied directly, by hand.
  trained = restore.from_workdir(str(smoke_workdir))
  state = jax.device_get(trained.weights)
  inputs = normalize.normalize(images, state.image_mean, state.image_std)
  logits = trained.model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                               inputs, train=False)
  expected = np.asarray(jax.nn.softmax(logits))
  names = trained.classes['class_names']
  for line, probabilities in zip(lines, expected, strict=True):
    got = {p['class']: p['probability'] for p in line['predictions']}
    assert got == pytest.approx({names[i]: float(p) for i, p in enumerate(probabilities)},
                                abs=1e-5)
    assert list(got.values()) == sorted(got.values(), reverse=True)


def test_predict_reports_bad_files_and_still_predicts_the_others(smoke_workdir, tmp_path):
  (tmp_path / 'notes.txt').write_text('not an image')
  big = tmp_path / 'photo.jpg'
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 200, 3), np.uint8)).save(big)
  result = run('cifar_jax.predict', f'--workdir={smoke_workdir}', str(big),
               str(tmp_path / 'notes.txt'), str(tmp_path / 'missing.png'))
  assert result.returncode == 1
  assert result.stdout.startswith(f'{big}: ')  # Any size is resized to the model's input.
  assert f'{tmp_path / "notes.txt"}: not an image Pillow can read' in result.stderr
  assert f'{tmp_path / "missing.png"}: no such file' in result.stderr
  assert 'Traceback' not in result.stderr


def png_claiming(width, height):
  """A few bytes of PNG whose header claims `width` x `height` 1-bit pixels: Pillow reads the size
  when it opens the file, as it would from a decompression bomb's few compressed kilobytes."""
  def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
  header = struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(b''))
          + chunk(b'IEND', b''))


def test_predict_survives_bombs_fifos_and_special_files(smoke_workdir, tmp_path):
  images = tmp_path / 'images'
  write_test_images(images, count=2)
  (images / 'bomb.png').write_bytes(png_claiming(30000, 30000))
  fifo, sock = tmp_path / 'pipe.png', tmp_path / 'sock.png'
  os.mkfifo(fifo)  # Opening it for reading would wait for a writer forever.
  (tmp_path / 'notes.txt').write_text('not an image')
  named = [images, fifo, sock, '/dev/null', tmp_path / 'notes.txt']
  with socket.socket(socket.AF_UNIX) as listening:
    listening.bind(str(sock))
    # Not `run`: a hang must fail the test within minutes.
    result = subprocess.run([sys.executable, '-m', 'cifar_jax.predict',
                             f'--workdir={smoke_workdir}', *map(str, named)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert [line.split(':')[0] for line in result.stdout.splitlines()] == [
      str(images / 'test_0.png'), str(images / 'test_1.png')]
  errors = result.stderr.splitlines()  # One line per failed file, in the order named.
  expected = [f'{images / "bomb.png"}: refused as a possible decompression bomb (Image size',
              f'{fifo}: not a regular file (a FIFO)', f'{sock}: not a regular file (a socket)',
              '/dev/null: not a regular file (a character device)',
              f'{tmp_path / "notes.txt"}: not an image Pillow can read']
  assert len(errors) == len(expected), result.stderr[-3000:]
  for line, start in zip(errors, expected, strict=True):
    assert line.startswith(f'error: {start}'), line


@pytest.mark.parametrize('files,args,message', [
    # A run that has started (config written) but saved no checkpoint yet.
    (['config.json', 'classes.json'], ['cifar_jax.predict', '--workdir=EMPTY', 'IMAGE'],
     'holds no checkpoints'),
    ([], ['cifar_jax.predict', '--workdir=EMPTY', 'IMAGE'], 'holds no config.json'),
    ([], ['cifar_jax.compare', 'EMPTY'], 'holds no config.json'),
    ([], ['cifar_jax.report', '--workdir=EMPTY'], 'config.json not found'),
])
def test_empty_workdirs_get_one_clear_error(tmp_path, files, args, message):
  empty = tmp_path / 'empty'
  empty.mkdir()
  for name in files:
    (empty / name).write_text('{}')
  image = tmp_path / 'image.png'
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
  result = run(*[a.replace('EMPTY', str(empty)).replace('IMAGE', str(image)) for a in args])
  assert result.returncode != 0
  assert message in result.stderr, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr


def test_compare_tabulates_finished_and_interrupted_runs(smoke_workdir, tmp_path):
  # An interrupted copy: only its first evaluation was logged.
  interrupted = tmp_path / 'interrupted'
  shutil.copytree(smoke_workdir, interrupted)
  records = workdir.read_metrics(str(smoke_workdir))
  (interrupted / 'metrics.jsonl').write_text(json.dumps(records[0]) + '\n')
  out = tmp_path / 'table'
  result = run('cifar_jax.compare', f'--out={out}', str(smoke_workdir), str(interrupted))
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout == (out / 'runs.md').read_text()
  with open(out / 'runs.csv') as f:
    rows = list(csv.DictReader(f))
  assert [row['run'] for row in rows] == [smoke_workdir.name, 'interrupted']
  finished, partial = rows
  model = models.create_model('resnet10', num_classes=10, width=8)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                             train=False))['params']
  assert int(finished['parameters']) == models.count_params(params)
  assert finished['status'] == 'finished' and partial['status'] == 'partial'
  assert finished['epochs'] == '3' and partial['epochs'] == '1'
  assert float(finished['final_test_accuracy']) == pytest.approx(records[-1]['test_accuracy'])
  assert float(finished['best_test_accuracy']) == pytest.approx(
      max(r['test_accuracy'] for r in records))
  assert float(partial['final_test_accuracy']) == pytest.approx(records[0]['test_accuracy'])
  assert finished['hem_mode'] == 'off'
  assert finished['dataset'] == 'cifar10' and finished['source'] == 'synthetic'
  with Image.open(out / 'accuracy.png') as image:
    assert image.format == 'PNG' and image.size == (500, 450)


def test_compare_groups_an_ablation_and_pairs_it_by_seed(smoke_workdir, tmp_path):
  # Copies of the smoke run relabelled as an ablation: mode x seed, with chosen accuracies.
  accuracy = {('off', 0): 0.50, ('off', 1): 0.60, ('off', 2): 0.40,
              ('topk', 0): 0.52, ('topk', 1): 0.59, ('topk', 2): 0.46,
              ('softmax', 1): 0.70}  # Seeds 0 and 2 of softmax missing: one pair only.
  records = workdir.read_metrics(str(smoke_workdir))
  runs = []
  for (mode, seed), value in accuracy.items():
    run_dir = tmp_path / f'{mode}_s{seed}'
    shutil.copytree(smoke_workdir, run_dir)
    config = json.loads((run_dir / 'config.json').read_text())
    config['hem']['mode'], config['seed'] = mode, seed
    (run_dir / 'config.json').write_text(json.dumps(config))
    (run_dir / 'metrics.jsonl').write_text(
        ''.join(json.dumps(dict(r, test_accuracy=value)) + '\n' for r in records))
    runs.append(str(run_dir))
  # An unfinished run is left out of the groups (its accuracy is not the recipe's).
  partial = tmp_path / 'softmax_s0'
  shutil.copytree(tmp_path / 'softmax_s1', partial)
  (partial / 'metrics.jsonl').write_text(json.dumps(dict(records[0], test_accuracy=0.0)) + '\n')
  out = tmp_path / 'table'
  result = run('cifar_jax.compare', f'--out={out}', '--group_by=hem.mode', *runs, str(partial))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Grouped by hem.mode, differences paired by seed' in result.stdout
  with open(out / 'groups.csv') as f:
    groups = {row['group']: row for row in csv.DictReader(f)}
  assert list(groups) == ['off', 'topk', 'softmax']  # In the order first named.
  off, topk, softmax = groups.values()
  assert off['runs'] == '3' and float(off['mean_test_accuracy']) == pytest.approx(0.5)
  assert float(off['sd_test_accuracy']) == pytest.approx(0.1)
  assert off['mean_difference'] == ''  # The baseline: no differences from itself.
  # topk - off by seed: +0.02, -0.01, +0.06.
  assert topk['paired_runs'] == '3' and topk['improved'] == '2/3'
  assert float(topk['mean_difference']) == pytest.approx(0.07 / 3)
  assert float(topk['sd_difference']) == pytest.approx(np.std([0.02, -0.01, 0.06], ddof=1))
  assert softmax['runs'] == '1' and softmax['paired_runs'] == '1'
  assert float(softmax['mean_difference']) == pytest.approx(0.10)
  assert softmax['sd_difference'] == '' and softmax['improved'] == '1/1'

  # Another baseline, a field that does not exist, and a pairing that repeats (in this process:
  # the command's one-line form of a UserError is checked above and in test_cli.py).
  compare.compare(runs, str(out), group_by='hem.mode', baseline='topk')
  with open(out / 'groups.csv') as f:
    groups = {row['group']: row for row in csv.DictReader(f)}
  assert float(groups['off']['mean_difference']) == pytest.approx(-0.07 / 3)
  for fields, message in [({'group_by': 'hem.nope'}, "has no field 'hem.nope'"),
                          ({'group_by': 'hem.mode', 'baseline': 'none'}, "baseline value 'none'"),
                          ({'group_by': 'hem.mode', 'pair_by': 'hem.fraction'},
                           'have the same pairing value')]:
    with pytest.raises(UserError, match=message) as raised:
      compare.compare(runs, str(out), **fields)
    assert '\n' not in str(raised.value)


def test_cifar100_from_official_files_trains_and_reports_by_superclass(tmp_path):
  write_official_cifar100(tmp_path)
  config = tiny_config(**{'dataset.name': 'cifar100', 'dataset.source': 'local',
                          'dataset.data_dir': str(tmp_path), 'max_steps': 2,
                          'steps_per_call': 1})
  run_dir = tmp_path / 'workdir'
  state = loop.train_and_evaluate(config, str(run_dir))
  assert state.params['head']['kernel'].shape[-1] == 100
  (record,) = workdir.read_metrics(str(run_dir))
  assert record['step'] == 2 and record['test_num_examples'] == 100
  path, analysis = report.create(str(run_dir), 'latest')
  assert analysis['confusion'].shape == (100, 100)
  with Image.open(run_dir / 'report' / 'confusion_matrix.png') as image:
    assert image.size == (1100, 1100)  # 20 superclasses, not 100 classes.
  text = open(path).read()
  assert 'Most-confused classes' in text


def test_prediction_grid_samples_every_class_of_a_split_sorted_by_class():
  # 10 classes of 100 images, stored class by class, a third predicted wrong.
  labels = np.repeat(np.arange(10), 100)
  correct = np.arange(1000) % 3 != 0
  shown = report.grid_sample(correct)
  assert len(shown) == report.GRID_IMAGES == len(set(shown))
  assert np.sum(~correct[shown]) == report.GRID_IMAGES // 2  # Half wrong.
  assert len(set(labels[shown])) >= 8  # The first 32 of the split would all be class 0.
