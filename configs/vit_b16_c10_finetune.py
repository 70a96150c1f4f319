"""ViT-B/16 pretrained on ImageNet-21k, fine-tuned on CIFAR-10 at 384x384 (the ViT recipe).

    python -m cifar_jax.main --config=configs/vit_b16_c10_finetune.py --workdir=/tmp/vit_b16_c10 \
        --config.model.init_from=/path/to/ViT-B_16.npz

Takes a `.npz` of the original ViT or AugReg releases (see the README for downloads). The 32x32
images are upsampled on the device to 384x384 (a 24x24 patch grid; the checkpoint's position
embedding is resampled to it) and scaled to [-1, 1] as the releases were pretrained
('inception'); the head starts at zero and the pre-training "pre_logits" layer is dropped. The
recipe of the ViT paper's fine-tuning: SGD with momentum 0.9, no weight decay, batch 512,
global gradient-norm clipping at 1, a linear warm-up of about 500 steps, then cosine decay from
0.03; here 26 epochs (2,522 steps). The paper reports 99.02% for ViT-B/16
(ImageNet-21k) on CIFAR-10, and 98.88% for ViT-B/32. Not yet measured with this codebase.
"""
from cifar_jax import config as config_lib


def get_config():
  return config_lib.vit_finetune_config('vit_b16', 'cifar10')
