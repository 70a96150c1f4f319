"""The registered models' architectures: parameter counts against their references, layer names
and shapes against the checkpoints they load.

Everything here is traced with `jax.eval_shape`, which builds no arrays and compiles nothing, so
even ViT-L/16 at 224x224 costs only tracing. What the models compute is tested in
test_models.py.
"""

import flax
import jax
import jax.numpy as jnp
import pytest

from cifar_jax.errors import UserError
from cifar_jax.models import TINY, count_params, create_model


def _shapes(model, image_size=32):
  """The variables `model` creates for image_size x image_size images, as shapes."""
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)), train=False))


@pytest.mark.parametrize('name,image_size,num_classes,expected', [
    ('resnet18', 32, 10, 11_173_962),
    ('resnet34', 32, 10, 21_282_122),
    ('resnet50', 32, 10, 23_520_842),
    # Two conv blocks, Dense 128 on the 8x8x64 features, head.
    ('simple_cnn', 32, 10, 591_914),
    ('vgg11', 32, 10, 9_231_114),
    ('vgg13', 32, 10, 9_416_010),
    ('vgg16', 32, 10, 14_728_266),
    ('vgg19', 32, 10, 20_040_522),
    # 1,024 more than the common PyTorch version, which has no final BatchNorm.
    ('preact_resnet18', 32, 10, 11_172_170),
    ('wrn16_8', 32, 10, 10_961_370),
    # The paper's 36.5M.
    ('wrn28_10', 32, 10, 36_479_194),
    ('wide_resnet', 32, 10, 36_479_194),  # Defaults to WRN-28-10.
    # Embedding 16*16*3*768 + 768 = 590,592; class token 768; position embedding
    # (1 + 14*14) * 768 = 151,296; each of 12 blocks 7,087,872 (two LayerNorms 3,072, attention
    # 4 * (768*768 + 768) = 2,362,368, MLP 768*3072 + 3072 + 3072*768 + 768 = 4,722,432); final
    # LayerNorm 1,536; head 768*1000 + 1000 = 769,000.
    ('vit_b16', 224, 1000, 86_567_656),
    # Only the position embedding grows: (1 + 24*24 - 197) * 768 more.
    ('vit_b16', 384, 1000, 86_859_496),
    # Embedding 32*32*3*768 + 768 = 2,360,064; position embedding 50 * 768 = 38,400.
    ('vit_b32', 224, 1000, 88_224_232),
    # 24 blocks of 12,596,224; embedding 787,456; position embedding 201,728; head 1,025,000.
    ('vit_l16', 224, 1000, 304_326_632),
    ('vit_tiny_p4', 32, 10, 5_362_762),
    ('vit_small_p4', 32, 10, 21_342_346),
    # The reference EfficientNet-B0 count; the CIFAR stem stride changes no shape.
    ('efficientnet_b0', 224, 1000, 5_288_548),
    ('efficientnet_b0', 32, 1000, 5_288_548),
    ('efficientnet_b0', 32, 10, 5_288_548 - 1280 * 990 - 990),
    ('efficientnet_b0', 32, 100, 4_135_648),  # The README's CIFAR-100 figures.
    # timm's tf_efficientnetv2_b0 and Keras' EfficientNetV2B0 (less its BatchNorm statistics).
    ('efficientnetv2_b0', 224, 1000, 7_139_704),
    ('efficientnetv2_b0', 32, 10, 7_139_704 - 1280 * 990 - 990),
    ('efficientnetv2_b0', 32, 100, 5_986_804),
    ('xception', 32, 10, 2_699_082),
])
def test_param_counts(name, image_size, num_classes, expected):
  model = create_model(name, num_classes=num_classes)
  assert count_params(_shapes(model, image_size)['params']) == expected


def test_resnet_layers():
  params = _shapes(create_model('resnet18', num_classes=10))['params']
  assert {'stem_conv', 'stem_bn', 'stage1_block0', 'stage4_block1', 'head'} <= params.keys()
  assert {'proj_conv', 'proj_bn'} <= params['stage2_block0'].keys()
  assert 'proj_conv' not in params['stage1_block0']


def test_vgg_layers():
  params = _shapes(create_model('vgg16', num_classes=10))['params']
  convs = [name for name in params if '_conv' in name]
  assert len(convs) == 13
  assert params['block5_conv3']['kernel'].shape == (3, 3, 512, 512)
  assert params['head']['kernel'].shape == (512, 10)


def test_preact_resnet_layers():
  params = _shapes(create_model('preact_resnet18', num_classes=10))['params']
  # The stem is a bare convolution: the first block normalises its output.
  assert 'stem_bn' not in params and 'final_bn' in params
  assert 'proj_conv' not in params['stage1_block0']
  assert params['stage2_block0']['proj_conv']['kernel'].shape == (1, 1, 64, 128)
  # The first block normalises its input, so its first BatchNorm has the input's width.
  assert params['stage2_block0']['bn1']['scale'].shape == (64,)


def test_wide_resnet_layers():
  params = _shapes(create_model('wrn28_10', num_classes=10))['params']
  # (28 - 4) / 6 = 4 blocks in each of three stages, widths 160, 320, 640.
  assert {f'stage{s}_block{b}' for s in (1, 2, 3) for b in range(4)} < params.keys()
  assert 'stage1_block4' not in params and 'stage4_block0' not in params
  # Even the first stage widens 16 to 160 channels, so it starts with a projection.
  assert params['stage1_block0']['proj_conv']['kernel'].shape == (1, 1, 16, 160)
  assert params['stage3_block3']['conv2']['kernel'].shape == (3, 3, 640, 640)


@pytest.mark.parametrize('name,image_size,shape', [
    ('vit_tiny_p4', 32, (1, 1 + 8 * 8, 192)),
    ('vit_b16', 224, (1, 1 + 14 * 14, 768)),
    ('vit_b16', 384, (1, 1 + 24 * 24, 768)),
])
def test_vit_position_embedding_has_the_class_token_and_one_token_a_patch(name, image_size, shape):
  params = _shapes(create_model(name, num_classes=10), image_size)['params']
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == shape


def test_vit_position_embedding_is_sized_at_initialisation():
  model = TINY['vit_b16'](num_classes=10)
  variables = _shapes(model, 32)
  with pytest.raises(flax.errors.ScopeParamShapeError, match='pos_embedding'):
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 16, 16, 3)), train=False), variables)


def test_vit_parameters_follow_the_original_checkpoint_layout():
  """The flattened keys and shapes of the original checkpoints (e.g. ViT-B_16.npz)."""
  model = TINY['vit_b16'](num_classes=10, representation_size=24)
  d, heads, mlp, p = model.hidden_size, model.num_heads, model.mlp_dim, model.patch_size
  tokens = 1 + (32 // p)**2
  block = {
      'LayerNorm_0/scale': (d,), 'LayerNorm_0/bias': (d,),
      'MultiHeadDotProductAttention_1/query/kernel': (d, heads, d // heads),
      'MultiHeadDotProductAttention_1/query/bias': (heads, d // heads),
      'MultiHeadDotProductAttention_1/key/kernel': (d, heads, d // heads),
      'MultiHeadDotProductAttention_1/key/bias': (heads, d // heads),
      'MultiHeadDotProductAttention_1/value/kernel': (d, heads, d // heads),
      'MultiHeadDotProductAttention_1/value/bias': (heads, d // heads),
      'MultiHeadDotProductAttention_1/out/kernel': (heads, d // heads, d),
      'MultiHeadDotProductAttention_1/out/bias': (d,),
      'LayerNorm_2/scale': (d,), 'LayerNorm_2/bias': (d,),
      'MlpBlock_3/Dense_0/kernel': (d, mlp), 'MlpBlock_3/Dense_0/bias': (mlp,),
      'MlpBlock_3/Dense_1/kernel': (mlp, d), 'MlpBlock_3/Dense_1/bias': (d,),
  }
  expected = {
      'embedding/kernel': (p, p, 3, d), 'embedding/bias': (d,),
      'cls': (1, 1, d),
      'Transformer/posembed_input/pos_embedding': (1, tokens, d),
      **{f'Transformer/encoderblock_{i}/{key}': shape
         for i in range(model.num_layers) for key, shape in block.items()},
      'Transformer/encoder_norm/scale': (d,), 'Transformer/encoder_norm/bias': (d,),
      'pre_logits/kernel': (d, 24), 'pre_logits/bias': (24,),
      'head/kernel': (24, 10), 'head/bias': (10,),
  }
  variables = _shapes(model)
  assert variables.keys() == {'params'}  # No BatchNorm statistics.
  shapes = {key: leaf.shape for key, leaf in
            flax.traverse_util.flatten_dict(variables['params'], sep='/').items()}
  assert shapes == expected

  # Average pooling needs no class token, and no representation size means no pre-logits.
  gap = _shapes(model.clone(classifier='gap', representation_size=None))['params']
  assert gap.keys() == {'embedding', 'Transformer', 'head'}
  assert gap['Transformer']['posembed_input']['pos_embedding'].shape == (1, tokens - 1, d)


def test_vit_rejects_an_unknown_classifier_when_created():
  with pytest.raises(UserError, match="config.model.classifier='pool'.*gap"):
    TINY['vit_b16'](num_classes=10, classifier='pool')
