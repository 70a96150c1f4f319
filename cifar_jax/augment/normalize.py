"""Normalisation and resizing of images for the model, and the channel statistics they use."""

import jax
import jax.numpy as jnp
import numpy as np

from cifar_jax.errors import check_choice

# Images per chunk in `channel_stats`: 1024 CIFAR images are 25 MB as float64.
_STATS_CHUNK = 1024


def normalize(images, mean, std, dtype=jnp.float32):
  """Maps [B, H, W, C] images in [0, 255] units (uint8, or float after mixup) to standard units.

  Args:
    images: uint8 or float [B, H, W, C] in [0, 255] units.
    mean: Per-channel mean [C], in [0, 1] units.
    std: Per-channel standard deviation [C], in [0, 1] units.
    dtype: Output dtype; the arithmetic is done in float32 first.

  Returns:
    (images / 255 - mean) / std in `dtype`.
  """
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return ((images.astype(jnp.float32) / 255.0 - mean) / std).astype(dtype)


def resize(images, size: int):
  """Bilinearly resizes float [B, H, W, C] images to [B, size, size, C] (a no-op at that size).

  Feeds 32x32 CIFAR images to a model pretrained at a higher resolution, such as 224 or 384.
  """
  if images.shape[1:3] == (size, size):
    return images
  return jax.image.resize(images, (images.shape[0], size, size, images.shape[3]), 'bilinear')


def model_inputs(images, mean, std, input_size: int):
  """uint8 (or [0, 255] float) images -> the model's normalised float32 inputs at its size."""
  return resize(normalize(images, mean, std), input_size)


# Fixed per-channel (mean, std) in [0, 1] units and RGB order, by `config.model.normalization`
# name; 'split' is computed from the training split instead. A fine-tuning run normalises as its
# weights were pretrained.
FIXED_STATS = {
    # The CIFAR-10 training split's statistics as airbench and many PyTorch recipes hard-code them.
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    # ImageNet's: torchvision's and timm's ImageNet weights (ResNets, VGG-BN: IMAGENET_DEFAULT_MEAN
    # and _STD in timm), Keras applications' `torch` mode (e.g. DenseNet).
    'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # Keras applications' `caffe` mode (VGG16/19, ResNet50): the ImageNet mean pixel subtracted in
    # [0, 255] units, not scaled. Keras also flips RGB to BGR; the loaders reverse the first
    # convolution's input channels instead, so the mean is given here in RGB order.
    'caffe': ((123.68 / 255, 116.779 / 255, 103.939 / 255), (1 / 255, 1 / 255, 1 / 255)),
    # [-1, 1]: the original ViT and AugReg `.npz` releases ((x - 127.5) / 127.5 in
    # vit_jax/input_pipeline.py), Keras applications' `tf` mode (Xception, InceptionV3,
    # MobileNet), timm's IMAGENET_INCEPTION_MEAN and _STD.
    'inception': ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
NORMALIZATIONS = ('split', *FIXED_STATS)


def check_normalization(name: str) -> None:
  """Raises a UserError for a `config.model.normalization` that is not one of NORMALIZATIONS."""
  check_choice('config.model.normalization', name, NORMALIZATIONS)


def input_stats(name: str, train_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The (mean, std) inputs are normalised with: fixed ones, or the training split's own."""
  if name == 'split':
    return channel_stats(train_images)
  mean, std = FIXED_STATS[name]
  return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and (population) standard deviation of uint8 NHWC images.

  Sums are accumulated in float64 over chunks of images, so a whole training set is never copied
  to floating point at once. The sums of uint8 values and of their squares are integers that
  float64 holds exactly for up to ~10^11 pixels per channel.

  Args:
    images: uint8 [N, H, W, C] on the host, N > 0.

  Returns:
    (mean, std), each float32 [C] in [0, 1] units.
  """
  if images.ndim != 4 or len(images) == 0:
    raise ValueError(f'expected a non-empty [N, H, W, C] array, got shape {images.shape}')
  channels = images.shape[-1]
  total = np.zeros(channels, np.float64)
  total_sq = np.zeros(channels, np.float64)
  for start in range(0, len(images), _STATS_CHUNK):
    chunk = images[start:start + _STATS_CHUNK].reshape(-1, channels).astype(np.float64)
    total += chunk.sum(axis=0)
    total_sq += np.square(chunk).sum(axis=0)
  count = images.size // channels
  mean = total / count
  var = np.maximum(total_sq / count - np.square(mean), 0.0)
  return (mean / 255).astype(np.float32), (np.sqrt(var) / 255).astype(np.float32)
