"""Every config field the code reads, declared once, with its meaning and unit.

Config files in `configs/` start from `base_config()` and override a few fields.
The returned ConfigDict is locked, so a misspelt override (`--config.bach_size`)
is an error instead of being silently ignored. Each group's values are checked by
the code that uses them, when a run is set up (`check_config` in `augment/inputs.py`,
`training/update.py`, `training/hem.py`, `training/optim.py`, `training/setup.py`,
and `models.from_config`), so a bad value is one line naming its field.
"""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """ResNet-18 on CIFAR-100 with the classic SGD recipe; configs override from here."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Parameter init, data order and augmentation all derive from it.

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'cifar100'  # 'cifar10' | 'cifar100'.
  c.dataset.source = 'local'  # 'local' (official archives) | 'tfds' | 'synthetic'.
  c.dataset.data_dir = ''  # '' means the per-user cache (~/.cache/cifar_jax).
  c.dataset.download = True  # Fetch the official archive when `local` finds none.
  # Training examples held out (fixed by `seed`) to tune on instead of the test
  # split; 0 means evaluate on the test split.
  c.dataset.validation_size = 0
  c.dataset.synthetic_train_size = 2048  # Examples, `synthetic` source only.
  c.dataset.synthetic_test_size = 512

  c.augment = ml_collections.ConfigDict()
  c.augment.crop_padding = 4  # Pixels of zero padding before a random 32x32 crop.
  c.augment.flip = True  # Random horizontal flips.
  c.augment.cutout_size = 0  # Side of the zeroed square in pixels; 0 is off.
  c.augment.randaugment_ops = 0  # RandAugment operations per image; 0 is off.
  c.augment.randaugment_magnitude = 9.0  # RandAugment's magnitude, 0 to 10.
  # Mixup and CutMix pair the examples of each device's share of the batch.
  c.augment.mixup_alpha = 0.0  # Beta(alpha, alpha) mixing weight; 0 is off.
  c.augment.cutmix_alpha = 0.0  # 0 is off.
  c.augment.mix_switch_prob = 0.5  # With both on: the chance a batch gets CutMix.

  c.model = model_config('resnet18', width=64, dtype='float32')

  c.num_epochs = 200  # Length of the learning-rate schedule, in epochs.
  c.max_steps = 0  # Stop after this many train steps; 0 means no limit.
  c.batch_size = 128  # Global: split evenly across all devices.
  c.eval_batch_size = 500  # Global; the last batch is padded and masked.
  c.eval_every_epochs = 1.0  # May be a fraction; at least one step.
  # Train steps per compiled call (a loop on the device), so Python dispatch
  # never limits small models; metrics reach the host once per call. 0 means
  # 10 on GPU/TPU and 1 on CPU, where XLA runs convolutions inside device loops
  # far slower than outside them.
  c.steps_per_call = 0

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'sgd'  # 'sgd' | 'adamw'.
  c.optimizer.learning_rate = 0.1  # Peak rate for the global batch.
  c.optimizer.momentum = 0.9  # 'sgd'.
  c.optimizer.nesterov = False  # 'sgd'.
  c.optimizer.b1 = 0.9  # 'adamw'.
  c.optimizer.b2 = 0.999  # 'adamw'.
  # 'sgd': coupled L2, added to the gradient as PyTorch's SGD weight_decay does
  # (Keras' l2(5e-4) regulariser adds 5e-4 * |w|^2 to the loss, i.e. twice
  # this). 'adamw': decoupled, multiplied by the learning rate.
  c.optimizer.weight_decay = 5e-4
  c.optimizer.decay_norm_and_bias = True  # False exempts BatchNorm and biases.
  c.optimizer.grad_clip_norm = 0.0  # Clip the global gradient norm to this; 0 is off.
  # Sharpness-aware minimisation: the radius of the ascent step; 0 is off.
  # Each step then costs two forward and backward passes.
  c.optimizer.sam_rho = 0.0

  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = 'cosine'  # 'constant' | 'piecewise' | 'cosine' | 'onecycle'.
  c.schedule.warmup_epochs = 0.0  # Linear warm-up from 0 ('cosine' only).
  c.schedule.boundaries_epochs = (60, 120, 160)  # 'piecewise' only.
  c.schedule.decay_factor = 0.2  # Rate multiplier at each boundary ('piecewise').

  c.label_smoothing = 0.0  # Share of each target spread evenly over all classes.
  # Exponential moving average of the weights, evaluated beside the raw weights
  # (`ema_*` metrics): ema <- decay * ema + (1 - decay) * params every step; 0 is off.
  c.ema_decay = 0.0
  c.eval_flip_tta = False  # Evaluate on the mean logits of each image and its mirror.

  # The metric evaluated on the validation split (test split when there is
  # none) that drives plateau cuts, early stopping and the best checkpoint.
  c.monitor = 'accuracy'  # 'accuracy' (higher is better) | 'loss'.

  # Keras' ReduceLROnPlateau: multiply the rate by `factor` after `patience`
  # evaluations without an improvement of more than `min_delta`.
  c.plateau = ml_collections.ConfigDict()
  c.plateau.enabled = False
  c.plateau.factor = 0.1
  c.plateau.patience = 10  # Evaluations.
  c.plateau.cooldown = 0  # Evaluations after a cut during which none follows.
  c.plateau.min_delta = 1e-4  # Absolute, in the monitor's units.
  c.plateau.min_scale = 1e-3  # Floor, as a fraction of the scheduled rate.

  c.early_stopping = ml_collections.ConfigDict()
  c.early_stopping.enabled = False
  c.early_stopping.patience = 20  # Evaluations without improvement.
  c.early_stopping.min_delta = 0.0  # Absolute, in the monitor's units.

  # Hard example mining: per-example loss weights, normalised to mean 1 over
  # the global batch so the learning rate keeps its meaning.
  c.hem = ml_collections.ConfigDict()
  c.hem.mode = 'off'  # 'off' | 'topk' | 'softmax'.
  c.hem.fraction = 0.25  # 'topk': share of the global batch boosted.
  c.hem.boost = 2.0  # 'topk': weight of a hard example relative to the others.
  c.hem.temperature = 1.0  # 'softmax': weight proportional to exp(loss / temperature).

  # Fine-tuning a pretrained model (`model.init_from`): the parameters under
  # `head` form one group, all others the backbone.
  c.finetune = ml_collections.ConfigDict()
  c.finetune.backbone_lr_scale = 1.0  # Backbone rate as a fraction of the scheduled rate.
  # Train steps during which only the head learns; the backbone's optimiser
  # state starts at the unfreeze, and its schedule carries on from that step.
  c.finetune.freeze_backbone_steps = 0

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.keep_latest = 2  # The best checkpoint is kept besides these.

  c.lock()
  return c


# The fields of `config.model` every model has; all others are the model family's own.
MODEL_SETTINGS = ('name', 'init_from', 'input_size')


def model_config(name: str, **fields) -> ml_collections.ConfigDict:
  """`config.model` for model `name`: the fields every model has, plus the family's `fields`.

  `fields` are keyword arguments of the family's constructor (see `cifar_jax.models`), e.g.
  `width` and `dtype` ('float32' | 'bfloat16' compute) for ResNets.
  """
  return ml_collections.ConfigDict({
      'name': name,  # A key of `cifar_jax.models.MODELS`.
      # A pretrained checkpoint to start from (see `cifar_jax.pretrained`); '' is
      # a fresh initialisation. A workdir's own checkpoints take precedence.
      'init_from': '',
      # Side of the square images the model sees: the 32x32 images are resized
      # on the device (bilinear), e.g. to a pretrained model's 224 or 384.
      'input_size': 32,
      **fields,
  })


def vit_finetune_config(model_name: str, dataset_name: str) -> ml_collections.ConfigDict:
  """The ViT paper's fine-tuning recipe at 384x384, for a pretrained `model_name` ('vit_b16'...).

  SGD with momentum 0.9, no weight decay, batch 512, global gradient-norm clipping at 1, a
  linear warm-up of 5 epochs (485 steps) then cosine decay from 0.03, 26 epochs (2,522 steps).
  `model.init_from` is left for the command line to fill.
  """
  c = base_config()
  c.dataset.name = dataset_name
  c.model = model_config(model_name, dtype='bfloat16')
  c.model.init_from = ml_collections.config_dict.placeholder(str)  # Required: the weights file.
  c.model.input_size = 384
  c.batch_size = 512
  c.num_epochs = 26
  c.optimizer.learning_rate = 0.03
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip_norm = 1.0
  c.schedule.name = 'cosine'
  c.schedule.warmup_epochs = 5.0
  return c
