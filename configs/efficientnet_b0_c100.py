"""EfficientNet-B0 (stem stride 1 for 32x32 inputs) trained from scratch on CIFAR-100.

    python -m cifar_jax.main --config=configs/efficientnet_b0_c100.py --workdir=/tmp/effnet_c100

SGD 0.1 with Nesterov momentum 0.9, weight decay 5e-4 on kernels only, batch 128, cosine over
200 epochs, dropout 0.2 and stochastic depth 0.2. No published from-scratch CIFAR-100 figure
for this exact recipe is the target; compare it with `resnet_c100.py`. Not yet measured with
this codebase.
"""

from cifar_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.dataset.name = 'cifar100'
  config.model = config_lib.model_config('efficientnet_b0', dtype='float32')
  config.optimizer.nesterov = True
  config.optimizer.decay_norm_and_bias = False
  return config
