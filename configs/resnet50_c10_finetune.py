"""ImageNet-pretrained ResNet-50 fine-tuned on CIFAR-10 at 32x32, the Keras project's recipe.

    python -m cifar_jax.main --config=configs/resnet50_c10_finetune.py --workdir=/tmp/r50_c10 \
        --config.model.init_from=/path/to/resnet50.safetensors

Takes torchvision's ResNet-50 weights (`.safetensors`, or `.pth` with PyTorch installed; see the
README for downloads), and normalises inputs with ImageNet's channel statistics, as torchvision
pretrained them ('imagenet'). As in the Keras project, the 7x7 stride-2 stem and its max-pool
give way to a fresh 3x3 stride-1 convolution so 32x32 images keep their resolution; every other
layer starts from the pretrained weights and the head starts at zero. Its optimiser: SGD 0.01
with momentum 0.9, weight decay 5e-4, 60 epochs, batch 64, a constant rate. That recipe is
reported at 93.45% test accuracy; not yet measured with this codebase. To fine-tune with the
pretrained stem instead, add `--config.model.stem=imagenet --config.model.input_size=224`.
Its row in the README's "Claims of the projects cifar_jax replaces" says what is measured.
"""
from cifar_jax import config as config_lib


def get_config():
  return config_lib.resnet50_finetune_config('resnet50', 'cifar10', 'imagenet')
