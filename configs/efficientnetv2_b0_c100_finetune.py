"""ImageNet-pretrained EfficientNetV2-B0 fine-tuned on CIFAR-100 at 224x224.

    python -m cifar_jax.main --config=configs/efficientnetv2_b0_c100_finetune.py \
        --workdir=/tmp/effnetv2_b0_c100 \
        --config.model.init_from=/path/to/efficientnetv2-b0_notop.h5

Takes Keras applications' `efficientnetv2-b0[_notop].h5` or timm's `tf_efficientnetv2_b0`
state dict (`.safetensors`, or `.pth` with PyTorch installed; see the README for downloads). The
network is the reference's, stem stride 2 included, on the 32x32 images resized to 224x224 (the
size Keras' B0 and timm's evaluation use; timm trained at 192) and normalised with ImageNet's
statistics ('imagenet'), as Keras' B variants do inside the model and timm's port expects. The
head starts at zero. The recipe is `efficientnet_b0_c100_finetune.py`'s
(`config_lib.efficientnet_finetune_config`). It aims at the Keras project this replaces, whose
ImageNet-pretrained models all passed 72% on CIFAR-100. Not yet measured with this codebase.
Its row in the README's "Claims of the projects cifar_jax replaces" says what is measured.
"""
from cifar_jax import config as config_lib


def get_config():
  return config_lib.efficientnet_finetune_config('efficientnetv2_b0', 'cifar100')
