"""ImageNet-pretrained EfficientNet-B0 fine-tuned on CIFAR-100 at 224x224.

    python -m cifar_jax.main --config=configs/efficientnet_b0_c100_finetune.py \
        --workdir=/tmp/effnet_b0_c100 --config.model.init_from=/path/to/efficientnetb0_notop.h5

Takes Keras applications' `efficientnetb0[_notop].h5` or timm's `tf_efficientnet_b0` state dict
(`.safetensors`, or `.pth` with PyTorch installed); timm's own `efficientnet_b0` weights also
need `--config.model.padding=symmetric --config.model.bn_epsilon=1e-5` (see the README for
downloads). The network is the reference's, stem stride 2 included, on the 32x32 images resized
to 224x224 and normalised with ImageNet's statistics ('imagenet'): Keras' model takes [0, 255]
images and normalises them itself with those statistics (its normalisation layer's weights are
left out of the file), timm's tf_ ports expect them. The head starts at zero. The recipe
(`config_lib.efficientnet_finetune_config`): SGD with Nesterov momentum 0.9 from 0.02 at batch
128, one warm-up epoch then cosine, 10 epochs, weight decay 1e-4 on kernels, label smoothing
0.1, dropout and stochastic depth 0.2, bfloat16. It aims at the Keras project this replaces,
whose ImageNet-pretrained models all passed 72% on CIFAR-100. Not yet measured with this
codebase. Its row in the README's "Claims of the projects cifar_jax replaces" says what is
measured.
"""
from cifar_jax import config as config_lib


def get_config():
  return config_lib.efficientnet_finetune_config('efficientnet_b0', 'cifar100')
