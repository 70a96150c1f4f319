"""ResNet and VGG weights written by PyTorch load into the flax models and give the same logits.

The ResNet reference is a torchvision-layout ResNet defined here in PyTorch: its state dict is
saved as `.safetensors` or `.pth`, or converted to Keras' `.h5` layout, loaded with
`cifar_jax.pretrained`, and the flax model's logits are compared with PyTorch's on the same
images. The VGG references are torchvision's and timm's own `vgg19_bn` (and torchvision's
`vgg19`), with random weights and BatchNorm statistics. Skipped when PyTorch is not installed;
the VGG tests also when torchvision or timm is not.
"""
import h5py
import numpy as np
import pytest
import safetensors.numpy
from conftest import (
  WritesAFileWhenUnpickled,
  assert_load_refused,
  import_torchvision,
  random_images,
  zero_variables,
)

from cifar_jax import models, pretrained
from cifar_jax.augment import normalize
from cifar_jax.errors import UserError

torch = pytest.importorskip('torch')
nn = torch.nn
F = torch.nn.functional


class TorchBasicBlock(nn.Module):
  expansion = 1

  def __init__(self, in_channels, channels, stride, bias, eps, stride_in_1x1=False):
    super().__init__()
    del stride_in_1x1  # Basic blocks have no 1x1 convolution.
    self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=bias)
    self.bn1 = nn.BatchNorm2d(channels, eps=eps)
    self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=bias)
    self.bn2 = nn.BatchNorm2d(channels, eps=eps)
    self.downsample = _shortcut(in_channels, channels, stride, bias, eps)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchBottleneck(nn.Module):
  expansion = 4

  def __init__(self, in_channels, channels, stride, bias, eps, stride_in_1x1=False):
    super().__init__()
    stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
    self.conv1 = nn.Conv2d(in_channels, channels, 1, stride_1x1, bias=bias)
    self.bn1 = nn.BatchNorm2d(channels, eps=eps)
    self.conv2 = nn.Conv2d(channels, channels, 3, stride_3x3, 1, bias=bias)
    self.bn2 = nn.BatchNorm2d(channels, eps=eps)
    self.conv3 = nn.Conv2d(channels, channels * 4, 1, bias=bias)
    self.bn3 = nn.BatchNorm2d(channels * 4, eps=eps)
    self.downsample = _shortcut(in_channels, channels * 4, stride, bias, eps)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


def _shortcut(in_channels, out_channels, stride, bias, eps):
  if stride == 1 and in_channels == out_channels:
    return None
  return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=bias),
                       nn.BatchNorm2d(out_channels, eps=eps))


class TorchResNet(nn.Module):
  """torchvision's ResNet layout: conv1/bn1, maxpool, layer1..layer4, fc."""

  def __init__(self, block, stage_sizes, width, num_classes, bias=False, eps=1e-5,
               stride_in_1x1=False):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=bias)
    self.bn1 = nn.BatchNorm2d(width, eps=eps)
    channels = width
    for stage, size in enumerate(stage_sizes):
      blocks = []
      for index in range(size):
        stride = 2 if stage > 0 and index == 0 else 1
        blocks.append(block(channels, width * 2**stage, stride, bias, eps, stride_in_1x1))
        channels = width * 2**stage * block.expansion
      setattr(self, f'layer{stage + 1}', nn.Sequential(*blocks))
    self.fc = nn.Linear(channels, num_classes)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
    for stage in range(1, 5):
      x = getattr(self, f'layer{stage}')(x)
    return self.fc(x.mean((2, 3)))


def randomised(net):
  """`net` in eval mode with random BatchNorm statistics and affine parameters."""
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, nn.BatchNorm2d):
        for tensor, low, high in ((module.weight, 0.5, 1.5), (module.bias, -0.2, 0.2),
                                  (module.running_mean, -0.3, 0.3), (module.running_var, 0.5, 2)):
          tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
      if isinstance(module, nn.Conv2d) and module.bias is not None:
        module.bias.copy_(torch.rand(module.bias.shape, generator=generator) * 0.2 - 0.1)
  return net.eval()


def assert_same_logits(torch_net, flax_model, params, batch_stats):
  images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    expected = torch_net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  got = flax_model.apply({'params': params, 'batch_stats': batch_stats}, images, train=False)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-4, atol=2e-4)


def state_dict_arrays(net):
  return {name: tensor.numpy() for name, tensor in net.state_dict().items()}


def test_torchvision_resnet18_from_safetensors_gives_pytorchs_logits(tmp_path):
  torch.manual_seed(0)
  net = randomised(TorchResNet(TorchBasicBlock, (2, 2, 2, 2), width=64, num_classes=10))
  path = str(tmp_path / 'resnet18.safetensors')
  safetensors.numpy.save_file(state_dict_arrays(net), path)

  model = models.create_model('resnet18', num_classes=10, stem='imagenet')
  params, batch_stats, notes = pretrained.load(path, model, *zero_variables(model, size=64))
  assert notes == ['left out of the file: bn1.num_batches_tracked, '
                   'layer1.0.bn1.num_batches_tracked, layer1.0.bn2.num_batches_tracked, '
                   'layer1.1.bn1.num_batches_tracked ...']
  assert_same_logits(net, model, params, batch_stats)


def test_torchvision_resnet50_from_pth_gives_pytorchs_logits(tmp_path):
  torch.manual_seed(0)
  net = randomised(TorchResNet(TorchBottleneck, (3, 4, 6, 3), width=16, num_classes=7))
  path = str(tmp_path / 'resnet50.pth')
  # As a training checkpoint would hold it: nested, with DistributedDataParallel's prefix.
  torch.save({'epoch': 3, 'state_dict': {f'module.{k}': v for k, v in net.state_dict().items()}},
             path)
  model = models.create_model('resnet50', num_classes=7, width=16, stem='imagenet')
  params, batch_stats, _ = pretrained.load(path, model, *zero_variables(model, size=64))
  assert_same_logits(net, model, params, batch_stats)


def write_keras_h5(net, path):
  """`net`'s weights in the HDF5 layout of Keras' ResNet50 (the file keras.applications uses)."""
  layers = {}
  for name, module in net.named_modules():
    parts = name.split('.')
    if name in ('conv1', 'bn1'):
      keras_layer = f'conv1_{"conv" if name == "conv1" else "bn"}'
    elif name == 'fc':
      keras_layer = 'predictions'
    elif len(parts) >= 3 and parts[0].startswith('layer'):
      stage, block, layer = int(parts[0][5:]) + 1, int(parts[1]) + 1, parts[2]
      number = '0' if layer == 'downsample' else layer[-1]
      if layer == 'downsample':
        if len(parts) == 3:
          continue
        kind = 'conv' if parts[3] == '0' else 'bn'
      else:
        kind = 'conv' if layer.startswith('conv') else 'bn'
      keras_layer = f'conv{stage}_block{block}_{number}_{kind}'
    else:
      continue
    if isinstance(module, nn.Conv2d):
      kernel = module.weight.detach().numpy().transpose(2, 3, 1, 0)
      if name == 'conv1':
        kernel = kernel[:, :, ::-1]  # Keras' ResNet50 takes BGR images.
      layers[keras_layer] = {'kernel': kernel, 'bias': module.bias.detach().numpy()}
    elif isinstance(module, nn.BatchNorm2d):
      layers[keras_layer] = {'gamma': module.weight, 'beta': module.bias,
                             'moving_mean': module.running_mean,
                             'moving_variance': module.running_var}
      layers[keras_layer] = {k: v.detach().numpy() for k, v in layers[keras_layer].items()}
    elif isinstance(module, nn.Linear):
      layers[keras_layer] = {'kernel': module.weight.detach().numpy().T,
                             'bias': module.bias.detach().numpy()}
  with h5py.File(path, 'w') as f:
    # Weightless layers are listed too, with no weight names.
    names = ['input_1', 'conv1_pad', *layers, 'avg_pool']
    f.attrs['layer_names'] = np.array([n.encode() for n in names])
    f.attrs['keras_version'] = b'2.2.4'
    for layer in names:
      group = f.create_group(layer)
      weights = layers.get(layer, {})
      group.attrs['weight_names'] = np.array([f'{layer}/{w}:0'.encode() for w in weights],
                                             dtype='S')
      for weight, array in weights.items():
        group.create_dataset(f'{layer}/{weight}:0', data=array)


def test_keras_resnet50_h5_gives_the_reference_logits(tmp_path):
  """Keras' ResNet50 is ResNet v1: strides in the first 1x1, convolution biases, eps 1.001e-5."""
  torch.manual_seed(0)
  net = randomised(TorchResNet(TorchBottleneck, (3, 4, 6, 3), width=16, num_classes=5,
                               bias=True, eps=1.001e-5, stride_in_1x1=True))
  path = str(tmp_path / 'resnet50_weights.h5')
  write_keras_h5(net, path)
  model = models.create_model('resnet50_keras', num_classes=5, width=16, stem='imagenet')
  params, batch_stats, notes = pretrained.load(path, model, *zero_variables(model, size=64))
  assert notes == []
  assert_same_logits(net, model, params, batch_stats)

  # The same file does not fit torchvision's ResNet-50, which has no convolution biases.
  torchvision_layout = models.create_model('resnet50', num_classes=5, width=16, stem='imagenet')
  with pytest.raises(UserError, match=r'no place for.*conv1_conv/bias'):
    pretrained.load(path, torchvision_layout, *zero_variables(torchvision_layout, size=64))



def test_a_pth_that_would_run_code_is_refused_without_running_it(tmp_path):
  marker = tmp_path / 'ran'
  path = str(tmp_path / 'evil.pth')
  torch.save({'conv1.weight': torch.zeros(1), 'payload': WritesAFileWhenUnpickled(str(marker))},
             path)
  model = models.create_model('resnet10', num_classes=10, width=4)
  with pytest.raises(UserError, match='could not read .*evil.pth as a PyTorch file'):
    pretrained.load(path, model, *zero_variables(model, size=64))
  assert not marker.exists()


def torchvision_vgg(name):
  """torchvision's `name` ('vgg19_bn', 'vgg19') with random weights and BatchNorm statistics,
  in eval mode. Its classifier keeps torchvision's names but narrows 4096 to 8 units: the real
  one's first layer alone holds 103M weights."""
  torchvision = import_torchvision()
  with torch.device('meta'):
    net = getattr(torchvision.models, name)()
  net.features.to_empty(device='cpu')
  net.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 8), nn.ReLU(True), nn.Dropout(),
                                 nn.Linear(8, 8), nn.ReLU(True), nn.Dropout(), nn.Linear(8, 1000))
  return randomised_vgg(net)


def timm_vgg19_bn():
  """timm's `vgg19_bn` (as `vgg19_bn.tv_in1k`) with random weights and BatchNorm statistics; its
  `pre_logits` narrowed to 8 units (the real one's 7x7 convolution holds 103M weights)."""
  import_torchvision()  # timm imports it.
  timm = pytest.importorskip('timm')
  torch.manual_seed(0)
  return randomised_vgg(timm.create_model('vgg19_bn', pretrained=False, mlp_ratio=8 / 4096))


def randomised_vgg(net):
  generator = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for module in net.features:
      if isinstance(module, nn.Conv2d):
        fan_in = module.weight[0].numel()
        module.weight.copy_(torch.randn(module.weight.shape, generator=generator)
                            * np.sqrt(2 / fan_in))
  return randomised(net)


def assert_same_features(features, model, params, batch_stats, size):
  """The flax VGG's logits are the torch network's mean-pooled `features` through its head."""
  images = random_images(2, size=size)
  mean, std = normalize.input_stats('imagenet', None)
  inputs = normalize.model_inputs(images, mean, std, size)
  rng = np.random.default_rng(2)
  head = {'kernel': rng.normal(size=(512, 3)).astype(np.float32) / np.sqrt(512),
          'bias': rng.normal(size=3).astype(np.float32)}
  with torch.no_grad():
    pooled = features(torch.from_numpy(np.asarray(inputs).transpose(0, 3, 1, 2))).mean((2, 3))
  expected = pooled.numpy() @ head['kernel'] + head['bias']
  got = model.apply({'params': {**params, 'head': head}, 'batch_stats': batch_stats}, inputs,
                    train=False)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4,
                             atol=1e-4 * np.abs(expected).max())


def save_state_dict(net, path):
  if path.endswith('.safetensors'):
    safetensors.numpy.save_file(state_dict_arrays(net), path)
  else:
    torch.save(net.state_dict(), path)


@pytest.mark.parametrize('source, suffix, size', [
    ('torchvision vgg19_bn', '.safetensors', 32),
    ('torchvision vgg19_bn', '.pth', 64),  # A 2x2 final map, mean-pooled.
    ('timm vgg19_bn', '.safetensors', 64),
    ('torchvision vgg19', '.pth', 32),
])
def test_torch_vgg19_gives_the_same_features(source, suffix, size, tmp_path):
  library, name = source.split()
  net = torchvision_vgg(name) if library == 'torchvision' else timm_vgg19_bn()
  path = str(tmp_path / f'{name}{suffix}')
  save_state_dict(net, path)
  model = models.create_model('vgg19', num_classes=3, batch_norm=name.endswith('_bn'))
  params, batch_stats, notes = pretrained.load(path, model, *zero_variables(model, size))
  classifier = {'torchvision': 'classifier.0.bias, classifier.0.weight, classifier.3.bias, '
                               'classifier.3.weight ...',
                'timm': 'head.fc.bias, head.fc.weight, pre_logits.fc1.bias, '
                        'pre_logits.fc1.weight ...'}[library]
  assert notes == ["head/bias: starts afresh in place of the file's classifier",
                   "head/kernel: starts afresh in place of the file's classifier",
                   f'left out of the file: {classifier}']
  features = net.features if library == 'torchvision' else net.forward_features
  assert_same_features(features, model, params, batch_stats, size)


@pytest.fixture(scope='module')
def vgg19_bn_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('vgg') / 'vgg19_bn.safetensors')
  save_state_dict(torchvision_vgg('vgg19_bn'), path)
  return path


@pytest.mark.parametrize('model_name, fields, message', [
    ('vgg19', {'batch_norm': False}, r"has no 'features.2.bias' for the model's "
                                     r'block1_conv2/bias \(64,\)'),
    # VGG-16's third block has one convolution less: its fourth block starts 3 layers earlier.
    ('vgg16', {}, r"has no 'features.25.bias' for the model's block4_bn1/bias \(512,\)"),
    ('vgg19', {'width': 32}, r"features.1.bias has shape \(64,\) but the model's "
                             r'block1_bn1/bias needs \(32,\)'),
    ('resnet50', {}, r"has no 'layer1.0.bn1.bias' for the model's stage1_block0/bn1/bias"),
])
def test_a_torch_vgg_file_of_another_architecture_is_refused_naming_the_weight(
    vgg19_bn_file, model_name, fields, message):
  model = models.create_model(model_name, num_classes=10, **fields)
  assert_load_refused(vgg19_bn_file, model, message)


def test_a_truncated_vgg_state_dict_is_refused_in_one_line(vgg19_bn_file, tmp_path):
  model = models.create_model('vgg19', num_classes=10)
  for suffix, format_name in (('.safetensors', 'safetensors'), ('.pth', 'PyTorch')):
    path = tmp_path / f'vgg19_bn{suffix}'
    if suffix == '.pth':
      torch.save({k: torch.from_numpy(v) for k, v in
                  safetensors.numpy.load_file(vgg19_bn_file).items()}, path)
    else:
      path.write_bytes(open(vgg19_bn_file, 'rb').read())
    path.write_bytes(path.read_bytes()[:100_000])
    assert_load_refused(str(path), model, f'could not read .* as a {format_name} file')
