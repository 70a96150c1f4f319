"""Every config field the code reads, declared once, with its meaning and unit.

Config files in `configs/` start from `base_config()` and override a few fields.
The returned ConfigDict is locked, so a misspelt override (`--config.bach_size`)
is an error instead of being silently ignored. Each group's values are checked by
the code that uses them, when a run is set up and before any data is loaded
(`check_config` in `augment/inputs.py`, `training/update.py`, `training/hem.py`,
`training/optim.py`, `training/setup.py`, and each model family's own fields when it is
created), so a bad value is one line naming its field. `training/setup.py` also refuses a
batch size whose activations cannot fit in memory.
"""
import importlib.util
import os

import ml_collections


def from_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file such as `configs/resnet_c10.py`."""
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def base_config() -> ml_collections.ConfigDict:
  """ResNet-18 on CIFAR-100 with the classic SGD recipe; configs override from here."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Parameter init, data order and augmentation all derive from it.

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'cifar100'  # 'cifar10' | 'cifar100'; with `folder`, any name for reports.
  # 'local' (official archives) | 'tfds' | 'synthetic' | 'folder' (your images in
  # data_dir/train/<class>/ and data_dir/test/<class>/, any number of classes; see data/folder.py).
  c.dataset.source = 'local'
  c.dataset.data_dir = ''  # '' means the per-user cache (~/.cache/cifar_jax); `folder` needs one.
  c.dataset.download = True  # Fetch the official archive when `local` finds none.
  # Training examples held out (fixed by `seed`) to tune on instead of the test
  # split; 0 means evaluate on the test split.
  c.dataset.validation_size = 0
  c.dataset.synthetic_train_size = 2048  # Examples, `synthetic` source only.
  c.dataset.synthetic_test_size = 512

  c.augment = ml_collections.ConfigDict()
  c.augment.crop_padding = 4  # Pixels of padding before a random 32x32 crop (translation).
  c.augment.padding_mode = 'zeros'  # 'zeros' | 'reflect' (mirrors the border, no edge repeat).
  c.augment.flip = True  # Random horizontal flips.
  # With `flip`: each training image gets a fixed random flip (drawn once per run) that is
  # inverted every odd epoch, so over any two epochs it is seen once flipped and once not.
  c.augment.alternating_flip = False
  c.augment.cutout_size = 0  # Side of the zeroed square in pixels; 0 is off.
  c.augment.randaugment_ops = 0  # RandAugment operations per image; 0 is off.
  c.augment.randaugment_magnitude = 9.0  # RandAugment's magnitude, 0 to 10.
  # Mixup and CutMix pair the examples of each device's share of the batch.
  c.augment.mixup_alpha = 0.0  # Beta(alpha, alpha) mixing weight; 0 is off.
  c.augment.cutmix_alpha = 0.0  # 0 is off.
  c.augment.mix_switch_prob = 0.5  # With both on: the chance a batch gets CutMix.
  # torchvision's ColorJitter, after crop and flip and before cutout: per image, one factor per
  # operation and the four operations in a random order. Each 0 is off.
  c.augment.color_jitter = ml_collections.ConfigDict()
  # Pixels multiplied by a factor uniform in [max(0, 1 - brightness), 1 + brightness].
  c.augment.color_jitter.brightness = 0.0
  # Blend with the mean grey level, factor uniform in [max(0, 1 - contrast), 1 + contrast].
  c.augment.color_jitter.contrast = 0.0
  # Blend with the greyscale image, factor uniform in [max(0, 1 - saturation), 1 + saturation].
  c.augment.color_jitter.saturation = 0.0
  # Hue shifted by an amount uniform in [-hue, hue], in turns of the colour wheel; at most 0.5.
  c.augment.color_jitter.hue = 0.0

  c.model = model_config('resnet18', width=64, dtype='float32')

  c.num_epochs = 200.0  # Length of the learning-rate schedule, in epochs; may be a fraction.
  c.max_steps = 0  # Stop after this many train steps; 0 means no limit.
  c.batch_size = 128  # Global: split evenly across all devices.
  c.eval_batch_size = 500  # Global; the last batch is padded and masked.
  c.eval_every_epochs = 1.0  # May be a fraction; at least one step.
  # Train steps per compiled call (a loop on the device), so Python dispatch
  # never limits small models; metrics reach the host once per call. 0 means
  # a whole epoch but at most 100 steps on GPU/TPU, and 1 on CPU, where XLA
  # runs convolutions inside device loops far slower than outside them.
  c.steps_per_call = 0
  # (first, last): a jax.profiler trace of train steps first to last (counted from 1, as
  # metrics.jsonl's `step`; inclusive) in WORKDIR/profile/. Whole compiled calls are traced,
  # so with several steps per call the trace covers every call that takes any of them; the
  # run's first call includes compilation. () is off.
  c.profile_steps = ()

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
  # Parameter groups by path ('group1_norm1/bias': module names and the parameter's, joined by
  # '/'), each a regular expression matched with re.search; the first matching pair applies.
  # (pattern, multiplier) pairs: the step along the gradient is multiplied, the weight-decay
  # step is not (airbench's BatchNorm-bias scaler).
  c.optimizer.lr_multipliers = ()
  # (pattern, epochs) pairs: the parameters train for the first `epochs` epochs and are frozen
  # from then on, no longer updated or decayed; 0 freezes them from the start (e.g. a layer
  # initialised from the data).
  c.optimizer.frozen_after_epochs = ()
  # Sharpness-aware minimisation: the radius of the ascent step; 0 is off.
  # Each step then costs two forward and backward passes.
  c.optimizer.sam_rho = 0.0

  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = 'cosine'  # 'constant' | 'piecewise' | 'cosine' | 'onecycle' | 'linear'.
  c.schedule.warmup_epochs = 0.0  # Linear warm-up from 0 ('cosine' only).
  c.schedule.boundaries_epochs = (60, 120, 160)  # 'piecewise' only.
  c.schedule.decay_factor = 0.2  # Rate multiplier at each boundary ('piecewise').
  # 'linear': (fraction of the run's steps, multiplier of the rate) points, the first at 0 and
  # the last at 1, joined by straight lines; a point's step is int(fraction * total steps).
  c.schedule.points = ((0.0, 1.0), (1.0, 0.0))

  c.label_smoothing = 0.0  # Share of each target spread evenly over all classes.
  # How the per-example losses of the global batch become the loss: 'mean', or 'sum' (the
  # gradient is then batch_size times larger, so the learning rate is that much smaller).
  c.loss_reduction = 'mean'
  # Exponential moving average of the weights, evaluated beside the raw weights
  # (`ema_*` metrics): ema <- decay * ema + (1 - decay) * params every step; 0 is off.
  c.ema_decay = 0.0
  c.eval_flip_tta = False  # Evaluate on the mean logits of each image and its mirror.
  # Pixels: also evaluate each image translated by this many pixels up-left and down-right
  # (reflect-padded), weighting the untranslated view 1/2 and each translated one 1/4 (each
  # view mirror-averaged with `eval_flip_tta`: 6 views in all, as airbench's level 2); 0 is off.
  c.eval_translate_tta = 0

  # Lookahead: every `every` steps the weights and BatchNorm statistics move to a running
  # average, avg <- d * avg + (1 - d) * weights with d = decay**every * (step / total)**power,
  # and the network is reset to it; after the last step the network takes the average.
  c.lookahead = ml_collections.ConfigDict()
  c.lookahead.every = 0  # Steps between averages; 0 is off.
  c.lookahead.decay = 0.95  # Per step.
  c.lookahead.power = 3.0  # The decay grows from 0 to decay**every as (step / total)**power.

  # Dynamic loss scaling, used only when `model.dtype` is 'float16' (see
  # `training/loss_scale.py`): the loss of the global batch is multiplied by the scale before
  # differentiating and the gradients divided by it; a step with a non-finite gradient is
  # skipped and the scale divided by `factor`, and after `growth_interval` steps in a row with
  # finite gradients it is multiplied by `factor`.
  c.loss_scale = ml_collections.ConfigDict()
  c.loss_scale.initial = 2.0**15  # A multiplier of the loss; powers of 2 scale exactly.
  c.loss_scale.growth_interval = 2000  # Train steps with finite gradients in a row.
  c.loss_scale.factor = 2.0
  # The floor: a non-finite step at this scale is applied, and the loop stops the run.
  c.loss_scale.min = 1.0

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
  # Share of the run's steps trained without mining before it starts (2/3: the last third).
  c.hem.start_fraction = 0.0

  # Fine-tuning a pretrained model (`model.init_from`): the parameters under
  # `head` form one group, all others the backbone.
  c.finetune = ml_collections.ConfigDict()
  c.finetune.backbone_lr_scale = 1.0  # Backbone rate as a fraction of the scheduled rate.
  # Train steps during which only the head learns; the backbone's optimiser
  # state starts at the unfreeze, and its schedule carries on from that step.
  c.finetune.freeze_backbone_steps = 0

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.keep_latest = 2  # The best checkpoint is kept besides these.

  # Weights & Biases, optional (`pip install -e ".[wandb]"`): the scalars of metrics.jsonl and,
  # when training ends, the report's figures, in a W&B run that a resumed run continues (its
  # id is kept in WORKDIR/wandb_id). Process 0 alone logs.
  c.logging = ml_collections.ConfigDict()
  c.logging.wandb_project = ''  # '' is off.
  c.logging.wandb_entity = ''  # The W&B user or team; '' is your default one.
  # 'online' | 'offline' (upload later: `wandb sync WORKDIR/wandb/offline-run-*`) | 'disabled';
  # '' leaves it to W&B ($WANDB_MODE, else online).
  c.logging.wandb_mode = ''

  c.lock()
  return c


# The fields of `config.model` every model has; all others are the model family's own.
MODEL_SETTINGS = ('name', 'init_from', 'input_size', 'normalization')


def model_config(name: str, **fields) -> ml_collections.ConfigDict:
  """`config.model` for model `name`: the fields every model has, plus the family's `fields`.

  `fields` are keyword arguments of the family's constructor (see `cifar_jax.models`), e.g.
  `width` and `dtype` ('float32' | 'bfloat16' | 'float16' compute, the last with
  `config.loss_scale`) for ResNets.
  """
  return ml_collections.ConfigDict({
      'name': name,  # A key of `cifar_jax.models.MODELS`.
      # A pretrained checkpoint to start from (see `cifar_jax.pretrained`); '' is
      # a fresh initialisation. A workdir's own checkpoints take precedence.
      'init_from': '',
      # Side of the square images the model sees: the 32x32 images are resized
      # on the device (bilinear), e.g. to a pretrained model's 224 or 384.
      'input_size': 32,
      # The channel statistics inputs are normalised with: 'split' (the training split's own
      # per-channel mean and standard deviation), 'cifar10' (fixed CIFAR-10 statistics), or a
      # pretraining's: 'imagenet' (torchvision, timm), 'caffe' (Keras' VGG and ResNet50: mean
      # subtracted in [0, 255] units), 'inception' ([-1, 1]: the ViT releases, Keras' `tf` mode).
      # See `augment/normalize.py`.
      'normalization': 'split',
      **fields,
  })


def finetune_config(model_name: str, dataset_name: str, normalization: str,
                    **fields) -> ml_collections.ConfigDict:
  """The base config with pretrained model `model_name` (family `fields`) on `dataset_name`.

  `model.init_from` is required and left for the command line to fill; inputs are normalised
  with the statistics of the weights' pretraining, `normalization` (see `model_config`).
  """
  c = base_config()
  c.dataset.name = dataset_name
  c.model = model_config(model_name, **fields)
  c.model.init_from = ml_collections.config_dict.placeholder(str)  # Required: the weights file.
  c.model.normalization = normalization
  return c


def vit_finetune_config(model_name: str, dataset_name: str) -> ml_collections.ConfigDict:
  """The ViT paper's fine-tuning recipe at 384x384, for a pretrained `model_name` ('vit_b16'...).

  SGD with momentum 0.9, no weight decay, batch 512, global gradient-norm clipping at 1, a
  linear warm-up of 5 epochs (485 steps) then cosine decay from 0.03, 26 epochs (2,522 steps).
  Inputs in [-1, 1] ('inception'), as the ViT and AugReg releases were pretrained.
  `model.init_from` is left for the command line to fill.
  """
  c = finetune_config(model_name, dataset_name, 'inception', dtype='bfloat16')
  c.model.input_size = 384
  c.batch_size = 512
  c.num_epochs = 26
  c.optimizer.learning_rate = 0.03
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip_norm = 1.0
  c.schedule.name = 'cosine'
  c.schedule.warmup_epochs = 5.0
  return c


def resnet50_finetune_config(model_name: str, dataset_name: str,
                             normalization: str) -> ml_collections.ConfigDict:
  """The Keras project's ResNet-50 fine-tuning recipe at 32x32, for 'resnet50' or 'resnet50_keras'.

  The file's 7x7 stride-2 stem and its max-pool give way to a fresh 3x3 stride-1 convolution
  (`stem='cifar'`), so 32x32 images keep their resolution; SGD 0.01 with momentum 0.9, weight
  decay 5e-4, batch 64, 60 epochs at a constant rate.
  """
  c = finetune_config(model_name, dataset_name, normalization, width=64, stem='cifar',
                      frozen_batch_stats=False, dtype='float32')
  c.batch_size = 64
  c.num_epochs = 60
  c.schedule.name = 'constant'
  c.optimizer.learning_rate = 0.01
  c.optimizer.weight_decay = 5e-4
  return c


def efficientnet_finetune_config(model_name: str,
                                 dataset_name: str) -> ml_collections.ConfigDict:
  """ImageNet EfficientNet weights fine-tuned at 224x224: 'efficientnet_b0', 'efficientnetv2_b0'.

  The reference network (stem stride 2, TensorFlow's padding, BatchNorm epsilon 1e-3: Keras'
  files and timm's `tf_` ports) on the 32x32 images resized to 224x224, the pretraining's
  resolution, normalised with ImageNet's statistics as both releases were pretrained. SGD with
  Nesterov momentum 0.9 from 0.02 for the global batch of 128 (one warm-up epoch, then cosine),
  10 epochs (3,900 steps on 50,000 images), weight decay 1e-4 on kernels only, label smoothing
  0.1, the reference's dropout and stochastic depth (0.2), bfloat16 compute. timm's own
  `efficientnet_b0` weights need `--config.model.padding=symmetric
  --config.model.bn_epsilon=1e-5`.
  """
  c = finetune_config(model_name, dataset_name, 'imagenet', dropout_rate=0.2,
                      drop_connect_rate=0.2, stem_strides=2, padding='same', bn_epsilon=1e-3,
                      dtype='bfloat16')
  c.model.input_size = 224
  c.batch_size = 128
  c.num_epochs = 10
  c.optimizer.learning_rate = 0.02
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 1e-4
  c.optimizer.decay_norm_and_bias = False
  c.schedule.name = 'cosine'
  c.schedule.warmup_epochs = 1.0
  c.label_smoothing = 0.1
  return c


def airbench_config(*, epochs: float, lr: float, weight_decay: float = 0.0153,
                    momentum: float = 0.85, batch_size: int = 1024, bias_lr_scale: float = 64.0,
                    whiten_bias_epochs: float = 3, translate: int = 2, cutout: int = 0,
                    **model_fields) -> ml_collections.ConfigDict:
  """airbench's CIFAR-10 recipe (arXiv 2404.00498) for the `airbench` network.

  `lr` and `weight_decay` are in airbench's decoupled form, per 1024 examples; the
  conversion below is its own. SGD with Nesterov momentum on the summed label-smoothed (0.2)
  loss, weight decay added to the gradient; BatchNorm biases take `bias_lr_scale` times the
  gradient step without more decay; the whitening kernel is computed from the data and frozen,
  its bias trains for `whiten_bias_epochs`; the rate rises linearly from 0.2x to 1x over 23% of
  the steps, then falls to 0.07x; lookahead every 5 steps; alternating flips and reflect-padded
  translations by up to `translate` pixels; evaluation on 6 views (mirror x 3 translations).
  """
  c = base_config()
  c.dataset.name = 'cifar10'
  c.model = model_config('airbench', **{
      'widths': (64, 256, 256), 'convs_per_group': 2, 'residual': False,
      'whiten_examples': 5000, 'dtype': 'float32', **model_fields})
  c.model.normalization = 'cifar10'  # airbench's fixed channel statistics.
  c.batch_size = batch_size
  c.eval_batch_size = 1000
  c.num_epochs = epochs
  c.eval_every_epochs = 1.0

  # Steps of Nesterov SGD are 1 + 1 / (1 - momentum) times the gradient when gradients are
  # constant; dividing by that (per 1024 examples) keeps the step size independent of the
  # momentum. The decay step, lr * coefficient, is `weight_decay` per 1024 examples.
  kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
  c.loss_reduction = 'sum'
  c.label_smoothing = 0.2
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = lr / kilostep_scale
  c.optimizer.momentum = momentum
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = (weight_decay * batch_size / kilostep_scale) / (lr / kilostep_scale)
  c.optimizer.lr_multipliers = ((r'_norm\d+/bias$', bias_lr_scale),)
  c.optimizer.frozen_after_epochs = (('^whiten/kernel$', 0), ('^whiten/bias$', whiten_bias_epochs))
  c.schedule.name = 'linear'
  c.schedule.points = ((0.0, 0.2), (0.23, 1.0), (1.0, 0.07))
  c.lookahead.every = 5
  c.lookahead.decay = 0.95
  c.lookahead.power = 3.0

  c.augment.crop_padding = translate
  c.augment.padding_mode = 'reflect'
  c.augment.flip = True
  c.augment.alternating_flip = True
  c.augment.cutout_size = cutout
  c.eval_flip_tta = True
  c.eval_translate_tta = 1
  return c
