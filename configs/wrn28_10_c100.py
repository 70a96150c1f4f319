"""WRN-28-10 on CIFAR-100 with the Wide ResNet paper's recipe.

    python -m cifar_jax.main --config=configs/wrn28_10_c100.py --workdir=/tmp/wrn28_10_c100

SGD 0.1 with Nesterov momentum 0.9, weight decay 5e-4, batch 128, 200 epochs, the rate times 0.2
at epochs 60, 120 and 160, dropout 0.3 between the convolutions of a block. The paper reports
80.75% test accuracy (and 83.5% is published with SAM, `--config.optimizer.sam_rho=0.05`); not
yet measured with this codebase.
"""

from cifar_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.dataset.name = 'cifar100'
  # The base config's `width` is the ResNets'; Wide ResNets keep their own (16).
  config.model = config_lib.model_config('wrn28_10', dropout_rate=0.3, dtype='float32')
  config.optimizer.nesterov = True
  config.schedule.name = 'piecewise'
  config.schedule.boundaries_epochs = (60, 120, 160)
  config.schedule.decay_factor = 0.2
  return config
