"""Keras' ImageNet-pretrained ResNet50 fine-tuned on CIFAR-100 at 32x32, the Keras project's recipe.

    python -m cifar_jax.main --config=configs/resnet50_c100_finetune.py --workdir=/tmp/r50_c100 \
        --config.model.init_from=/path/to/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5

Takes Keras applications' ResNet50 weights (the legacy `.h5` download, or a Keras 3
`.weights.h5` / `.keras` file of `keras.applications.ResNet50`; see the README) into the
`resnet50_keras` model (ResNet v1 with convolution biases), and normalises inputs as Keras
pretrained it ('caffe': the ImageNet mean pixel subtracted in [0, 255] units; the BGR order is
absorbed into the first convolution on loading). As in `resnet50_c10_finetune.py`, a fresh 3x3
stride-1 stem replaces the file's 7x7 one, the head starts at zero, and SGD 0.01 with momentum
0.9, weight decay 5e-4, batch 64 trains for 60 epochs at a constant rate. The Keras project
reported 78% test accuracy; not yet measured with this codebase (no CIFAR-100 copy here). With
the pretrained stem instead: `--config.model.stem=imagenet --config.model.input_size=224`.
Its row in the README's "Claims of the projects cifar_jax replaces" says what is measured.
"""
from cifar_jax import config as config_lib


def get_config():
  return config_lib.resnet50_finetune_config('resnet50_keras', 'cifar100', 'caffe')
