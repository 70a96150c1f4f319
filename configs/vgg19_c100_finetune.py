"""Keras' ImageNet-pretrained VGG19 fine-tuned on CIFAR-100 at 64x64 (a Keras project claim).

    python -m cifar_jax.main --config=configs/vgg19_c100_finetune.py --workdir=/tmp/vgg19_c100 \
        --config.model.init_from=/path/to/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5

Takes Keras applications' VGG19 weights (the legacy `.h5` download, or a Keras 3 `.weights.h5` /
`.keras` file of `keras.applications.VGG19`; see the README) into `vgg19` without BatchNorm, as
Keras' VGG19 has none, and normalises inputs as Keras pretrained it ('caffe': the ImageNet mean
pixel subtracted in [0, 255] units; the BGR order is absorbed into the first convolution on
loading). The 32x32 images are upsampled on the device to 64x64, so the fifth block still sees
a 4x4 map and ends at 2x2 (mean-pooled) instead of 1x1; sizes that are multiples of 32 pool
exactly as the pretrained network does. The file's fc1, fc2 and predictions layers are left out:
one Dense layer on the pooled 512 features, starting at zero, replaces them. SGD with momentum
0.9, weight decay 5e-4, batch 64, cosine decay from 0.001 over 30 epochs (23,430 steps): a small
rate, since without BatchNorm the raw-pixel ('caffe') inputs give the first layers large
gradients. The Keras project reported all its ImageNet-pretrained models above 72% test accuracy
on CIFAR-100; not yet measured with this codebase (no CIFAR-100 copy here).

torchvision's `vgg19_bn` (`VGG19_BN_Weights.IMAGENET1K_V1`, `.pth` or `.safetensors`) or timm's
`vgg19_bn.tv_in1k` load into the same config with `--config.model.batch_norm=True
--config.model.normalization=imagenet`.
Its row in the README's "Claims of the projects cifar_jax replaces" says what is measured.
"""
from cifar_jax import config as config_lib


def get_config():
  config = config_lib.finetune_config('vgg19', 'cifar100', 'caffe', batch_norm=False,
                                      dtype='float32')
  config.model.input_size = 64
  config.batch_size = 64
  config.num_epochs = 30
  config.schedule.name = 'cosine'
  config.optimizer.learning_rate = 0.001
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 5e-4
  return config
