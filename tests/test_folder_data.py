"""The 'folder' source: your own images in DIR/train/<class>/ and DIR/test/<class>/."""
import os

import numpy as np
import pytest
from conftest import random_images, tiny_config, write_official_cifar10
from PIL import Image

from cifar_jax import data, predict, workdir
from cifar_jax.data import folder, images
from cifar_jax.data.synthetic import CIFAR10_CLASS_NAMES
from cifar_jax.errors import UserError
from cifar_jax.training import loop


def write_tree(root, class_images: dict, split: str, suffix='.png'):
  """Writes {class name: uint8 images} as root/split/<class>/NN.png (lossless)."""
  for name, pictures in class_images.items():
    (root / split / name).mkdir(parents=True, exist_ok=True)
    for i, picture in enumerate(pictures):
      Image.fromarray(picture).save(root / split / name / f'{i:02d}{suffix}')


def small_tree(root, names=('cat', 'dog'), train=2, test=1):
  """A valid folder dataset of random images; returns {split: {class: images}}."""
  trees = {}
  for seed, (split, count) in enumerate((('train', train), ('test', test))):
    trees[split] = {name: random_images(count, seed=10 * seed + i) for i, name in enumerate(names)}
    write_tree(root, trees[split], split)
  return trees


def test_folder_gives_the_arrays_of_the_official_files_for_the_same_images(tmp_path):
  # CIFAR-10's class names are in sorted order, so the folder's labels are CIFAR-10's.
  assert list(CIFAR10_CLASS_NAMES) == sorted(CIFAR10_CLASS_NAMES)
  splits = {'train': random_images(30, seed=1), 'test': random_images(20, seed=2)}
  labels = {'train': np.repeat(np.arange(10), 3).astype(np.int32),
            'test': np.repeat(np.arange(10), 2).astype(np.int32)}
  for split in splits:
    write_tree(tmp_path / 'folder', {name: splits[split][labels[split] == i]
                                     for i, name in enumerate(CIFAR10_CLASS_NAMES)}, split)
  write_official_cifar10(tmp_path / 'official', splits['train'], labels['train'], splits['test'],
                         labels['test'], CIFAR10_CLASS_NAMES)

  from_folder = data.load('cifar10', 'folder', str(tmp_path / 'folder'))
  official = data.load('cifar10', 'local', str(tmp_path / 'official'), download=False)
  assert from_folder.class_names == official.class_names == CIFAR10_CLASS_NAMES
  assert from_folder.name == 'cifar10' and from_folder.coarse_class_names is None
  # The test split as listed; the training split in the folder source's fixed order.
  orders = {'train': folder.training_order(30), 'test': np.arange(20)}
  for split in ('train', 'test'):
    got, want = getattr(from_folder, split), getattr(official, split)
    np.testing.assert_array_equal(got.images, want.images[orders[split]])
    np.testing.assert_array_equal(got.labels, want.labels[orders[split]])
    np.testing.assert_array_equal(got.images, splits[split][orders[split]])


def test_the_first_training_images_of_a_folder_are_of_every_class(tmp_path):
  # Listed class by class, the first 10% of the images would be the first class's: a
  # data-dependent initialisation (airbench's whitening) from the first N saw one class.
  small_tree(tmp_path, names=tuple('abcdefghij'), train=10, test=1)
  labels = data.load('cifar10', 'folder', str(tmp_path)).train.labels
  assert sorted(labels.tolist()) == sorted(list(range(10)) * 10)
  assert set(labels[:50].tolist()) == set(range(10))


def test_images_of_any_size_and_mode_are_centre_squares_at_32x32(tmp_path):
  rng = np.random.default_rng(0)
  wide = rng.integers(0, 256, (32, 48, 3), np.uint8)  # 48 wide: the middle 32 columns stay.
  large = rng.integers(0, 256, (64, 64, 3), np.uint8)
  grey = rng.integers(0, 256, (32, 32), np.uint8)
  (tmp_path / 'train' / 'a').mkdir(parents=True)
  (tmp_path / 'train' / 'b' / 'nested').mkdir(parents=True)
  Image.fromarray(wide).save(tmp_path / 'train' / 'a' / 'wide.png')
  Image.fromarray(large).save(tmp_path / 'train' / 'a' / 'large.jpg', quality=90)
  Image.fromarray(grey).save(tmp_path / 'train' / 'b' / 'nested' / 'grey.png')
  (tmp_path / 'train' / 'b' / '.DS_Store').write_bytes(b'not an image, and hidden')
  (tmp_path / 'train' / 'README.txt').write_text('files beside the class folders are no class')
  write_tree(tmp_path, {'a': random_images(1), 'b': random_images(1)}, 'test')

  dataset = data.load('my images', 'folder', str(tmp_path))
  assert dataset.name == 'my images' and dataset.class_names == ('a', 'b')
  # Back in the listing's order, sorted by path: large.jpg, wide.png, nested/grey.png.
  listed = np.argsort(folder.training_order(3))
  train_images = dataset.train.images[listed]
  np.testing.assert_array_equal(dataset.train.labels[listed], [0, 0, 1])
  large_jpeg = Image.open(tmp_path / 'train' / 'a' / 'large.jpg').convert('RGB')
  np.testing.assert_array_equal(
      train_images[0], np.asarray(large_jpeg.resize((32, 32), Image.Resampling.LANCZOS)))
  np.testing.assert_array_equal(train_images[1], wide[:, 8:40])
  np.testing.assert_array_equal(train_images[2], np.stack([grey] * 3, -1))
  # `predict` sees an image exactly as training did.
  np.testing.assert_array_equal(
      images.read_image(str(tmp_path / 'train' / 'a' / 'large.jpg')), train_images[0])


def test_decoded_images_are_cached_until_the_folder_changes(tmp_path, monkeypatch):
  small_tree(tmp_path)
  first = data.load('cifar10', 'folder', str(tmp_path))
  cache = tmp_path / folder.CACHE_FOLDER
  (cached,) = os.listdir(cache)

  real_read = images.read_image

  def no_decoding(path):
    raise AssertionError(f'decoded {path} although the cache is current')

  monkeypatch.setattr(images, 'read_image', no_decoding)
  again = data.load('cifar10', 'folder', str(tmp_path))
  np.testing.assert_array_equal(again.train.images, first.train.images)
  np.testing.assert_array_equal(again.test.labels, first.test.labels)

  # A new image changes the fingerprint: decoded again, and the old cache is replaced.
  Image.fromarray(random_images(1, seed=5)[0]).save(tmp_path / 'train' / 'dog' / 'new.png')
  with pytest.raises(AssertionError, match='although the cache is current'):
    data.load('cifar10', 'folder', str(tmp_path))
  monkeypatch.setattr(images, 'read_image', real_read)
  changed = data.load('cifar10', 'folder', str(tmp_path))
  assert len(changed.train.labels) == 5
  assert os.listdir(cache) != [cached] and len(os.listdir(cache)) == 1

  # A damaged cache is decoded again and rewritten.
  (cache / os.listdir(cache)[0]).write_bytes(b'PK\x03\x04 cut short')
  np.testing.assert_array_equal(data.load('cifar10', 'folder', str(tmp_path)).train.images,
                                changed.train.images)
  monkeypatch.setattr(images, 'read_image', no_decoding)
  data.load('cifar10', 'folder', str(tmp_path))


def test_a_folder_that_cannot_be_written_is_cached_per_user(tmp_path, monkeypatch):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'user_cache'))
  small_tree(tmp_path / 'images')
  # A file where the cache folder would go: what a read-only folder does to the write.
  (tmp_path / 'images' / folder.CACHE_FOLDER).write_text('')
  first = data.load('cifar10', 'folder', str(tmp_path / 'images'))
  (cached,) = os.listdir(tmp_path / 'user_cache' / 'cifar_jax' / 'folders')
  assert cached.endswith('.npz')
  monkeypatch.setattr(images, 'read_image', lambda path: pytest.fail(f'decoded {path}'))
  again = data.load('cifar10', 'folder', str(tmp_path / 'images'))
  np.testing.assert_array_equal(again.train.images, first.train.images)


def _missing_test(root):
  write_tree(root, {'cat': random_images(1), 'dog': random_images(1)}, 'train')


def _unreadable(root):
  small_tree(root)
  (root / 'train' / 'dog' / 'notes.png').write_text('not an image')
  (root / 'test' / 'cat' / 'cut.png').write_bytes(b'\x89PNG\r\n\x1a\n')


def _empty_class(root):
  small_tree(root)
  for path in (root / 'test' / 'dog').iterdir():
    path.unlink()


def _mismatched(root):
  small_tree(root, names=('bird', 'cat', 'dog'))
  small_tree(root / 'other', names=('cat', 'dog', 'fish'))
  (root / 'test' / 'bird').rename(root / 'spare')
  (root / 'other' / 'test' / 'fish').rename(root / 'test' / 'fish')


def _no_images(root):
  for split in ('train', 'test'):
    (root / split / 'cat').mkdir(parents=True)


def _one_class(root):
  small_tree(root, names=('cat',))


@pytest.mark.parametrize('make, message', [
    (_missing_test, 'has no test/ folder: the folder source reads DIR/train/<class>/<images> and '
                    'DIR/test/<class>/<images>'),
    (_unreadable, 'ROOT/train/dog/notes.png: not an image Pillow can read'),
    (_empty_class, 'No images in ROOT/test/dog: every class needs training and test images'),
    (_mismatched, 'differ (only in train/: bird; only in test/: fish): every class needs a folder '
                  'in both'),
    (_no_images, 'ROOT holds no images'),
    (_one_class, 'ROOT has one class, cat: a classifier needs at least two class folders'),
])
def test_mistakes_in_the_folder_are_one_line_naming_them(tmp_path, make, message):
  root = tmp_path / 'images'
  root.mkdir()
  make(root)
  with pytest.raises(UserError) as error:
    data.load('cifar10', 'folder', str(root))
  text = str(error.value)
  assert message.replace('ROOT', str(root)) in text
  assert '\n' not in text
  if make is _unreadable:  # The first in the order read, and the count of the others.
    assert text.endswith('(and 1 more unreadable file(s)). Remove or replace it in '
                         f'{root}.')


def test_the_folder_source_needs_a_folder(tmp_path):
  with pytest.raises(UserError, match='needs --config.dataset.data_dir=DIR'):
    data.load('cifar10', 'folder', '')
  with pytest.raises(UserError, match='is not a directory'):
    data.load('cifar10', 'folder', str(tmp_path / 'nowhere'))


def test_a_run_trains_on_a_folder_and_predicts_its_class_names(tmp_path):
  # `tiny_config`'s shapes (256 training and 100 test images of 10 classes), so the compiled
  # programs are those of the synthetic tiny runs of other tests: this one adds no compilation.
  names = ('apple', 'banana', 'cherry', 'date', 'elderberry', 'fig', 'grape', 'kiwi', 'lemon',
           'mango')
  dataset = data.load('cifar10', 'synthetic', synthetic_train_size=256, synthetic_test_size=100)
  root = tmp_path / 'fruit'
  for split in ('train', 'test'):
    pictures, labels = getattr(dataset, split).images, getattr(dataset, split).labels
    write_tree(root, {name: pictures[labels == i] for i, name in enumerate(names)}, split)
  config = tiny_config(**{'dataset.source': 'folder', 'dataset.data_dir': str(root),
                          'dataset.name': 'fruit', 'max_steps': 3})
  run_dir = tmp_path / 'workdir'
  state = loop.train_and_evaluate(config, str(run_dir))
  assert state.params['head']['kernel'].shape[-1] == 10
  assert workdir.load_classes(str(run_dir))['class_names'] == list(names)
  (record,) = workdir.read_metrics(str(run_dir))
  assert record['step'] == 3 and record['test_num_examples'] == 100

  results = predict.predict(str(run_dir), [str(root / 'test' / 'banana')], 'latest', top_k=10)
  assert len(results) == 10
  for result in results:
    assert sorted(p['class'] for p in result['predictions']) == list(names)
