"""airbench96 on CIFAR-10 (airbench's own figure: 96.05% mean in 46.3 s on one A100).

    python -m cifar_jax.main --config=configs/airbench96_c10.py --workdir=/tmp/airbench96

Wider (128/512/512) with three convolutions per group and a residual connection around the
last two, translations up to 4 pixels, 12-pixel cutout and 40 epochs. One difference from
airbench: its cutout square lies wholly inside the image, this codebase's is centred anywhere
in it and clipped at the border (`augment.crop_flip`). Not measured here yet.
"""
from cifar_jax import config as config_lib


def get_config():
  return config_lib.airbench_config(
      epochs=40.0, lr=9.0, translate=4, cutout=12, widths=(128, 512, 512), convs_per_group=3,
      residual=True)
