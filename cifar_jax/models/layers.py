"""Pieces the model families share, and the fields they share.

Every family declares these fields itself, in its own order (its config fields follow that
order), and they mean the same in each:

  dtype: Compute dtype. Parameters and BatchNorm statistics are always float32.
  bn_axis_name: Named mesh axis over which BatchNorm averages batch statistics, so that a
    `shard_map`ped step over that axis matches a single-device step on the global batch.
    None normalises each device's examples on their own.
  bn_momentum: Decay of the BatchNorm running averages (0.9 equals PyTorch's momentum=0.1).

Each family checks its own fields when it is created (`check_fields` in its `__post_init__`), so
a bad config is one line naming the field, before any data is loaded (`models.check_config`).

Every family's `__call__(x, *, train)` takes normalised images, float [B, H, W, C], and returns
float32 logits [B, num_classes]. With `train=True` it normalises with batch statistics and
updates the running averages (apply it with `mutable=['batch_stats']`) and applies dropout and
stochastic depth where the family has them (they need a 'dropout' rng); with `train=False` it
uses the running averages and keeps every unit.
"""
import functools
import math
import numbers
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cifar_jax.errors import UserError

# A module constructor with the shared settings already bound; blocks call it with a name.
ModuleDef = Callable[..., nn.Module]

# PyTorch pads a 3x3 convolution by one pixel on every side. Flax's 'SAME' pads only at the
# bottom/right for stride 2 on even sizes, which would shift the sampling grid.
PAD_3X3 = ((1, 1), (1, 1))


def is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


# What each kind of field must be: its description, and the test of one value.
_RULES = {
    'sizes': ('a positive integer', lambda v: is_int(v) and v > 0),  # Widths, depths, heads.
    'counts': ('an integer >= 0', lambda v: is_int(v) and v >= 0),
    'rates': ('a number in [0, 1)', lambda v: _is_number(v) and 0 <= v < 1),  # Dropout, momenta.
    'positive': ('a positive number', lambda v: _is_number(v) and v > 0),
}


def check_fields(module: nn.Module, **fields) -> None:
  """Raises a UserError naming the first field of `module` that breaks its kind's rule.

  `fields` maps a kind of `_RULES` to field names, e.g. `sizes=('width',), rates=('bn_momentum',)`;
  a tuple-valued field (a width per stage) must be non-empty and each entry must keep the rule.
  """
  for kind, names in fields.items():
    what, ok = _RULES[kind]
    for name in names:
      value = getattr(module, name)
      many = isinstance(value, (tuple, list))
      values = value if many else (value,)
      if not values or not all(map(ok, values)):
        rule = f'a non-empty tuple, each entry {what}' if many else what
        raise UserError(f'config.model.{name} must be {rule}, got {value!r}.')


def patch_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
               dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """`lax.conv_general_dilated`, computed on a CPU as matrix products of image patches.

  XLA's CPU backend runs convolutions through Eigen, well below the speed its matrix products
  reach (about 1.6x slower, forward and backward, for a 3x3 convolution of 64 -> 256 channels
  measured on a 2-core AVX-512 CPU). On a CPU this gathers each output pixel's patch (the
  kernel's window of every input channel, "im2col") and multiplies the [pixels, window]
  matrix by the kernel reshaped to [window, features]: the same sums in another order, a few
  images at a time (`_patch_product`), so the patches stay in the processor's cache. On other
  platforms, and for convolutions it does not cover (dilation, feature groups, layouts other
  than NHWC/HWIO), it calls `lax.conv_general_dilated` itself. The models pass it to
  `nn.Conv(conv_general_dilated=...)`, so parameters are laid out as usual.
  """
  args = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
              dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
              precision=precision, **kwargs)
  kh, kw, cin, cout = rhs.shape
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ('NHWC', 'HWIO', 'NHWC'))
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), window_strides, padding)
  if (jax.default_backend() != 'cpu' or feature_group_count != 1 or kwargs
      or any(d not in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
      or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != nhwc
      or any(p < 0 for pad in padding for p in pad) or lhs.shape[-1] != cin):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **args)
  geometry = ((kh, kw), tuple(map(tuple, padding)), tuple(window_strides))
  return _patch_product(lhs, _varying_like(rhs, lhs), geometry, precision)


def _varying_like(kernel, x):
  """`kernel` made per-device over the mesh axes that `x` differs over inside `shard_map`, as
  JAX's autodiff does by itself where they meet: `_patch_product`'s kernel gradient is one
  device's, and this conversion's transpose sums it over those axes. Outside `shard_map`, and
  for a kernel that already differs, `kernel` itself."""
  missing = jax.typeof(x).manual_axis_type.varying - jax.typeof(kernel).manual_axis_type.varying
  return lax.pcast(kernel, tuple(sorted(missing)), to='varying') if missing else kernel


def _patches(x, geometry):
  """[n, oh, ow, kh * kw * cin]: each output pixel's window of the zero-padded input."""
  (kh, kw), padding, (sh, sw) = geometry
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  windows = [x[:, dy:dy + (oh - 1) * sh + 1:sh, dx:dx + (ow - 1) * sw + 1:sw]
             for dy in range(kh) for dx in range(kw)]
  return windows[0] if len(windows) == 1 else jnp.concatenate(windows, axis=-1)


# Images per matrix product: the fewest whose patches give this many rows. At batch 1024 the
# patches of one 3x3 convolution are 9 times its input (530 MB for 64 channels at 15x15); a few
# images' worth stays in cache, which made forward and backward of that convolution 1.6x faster
# and of 256 channels at 7x7 1.2x faster on a 2-core CPU.
PATCH_ROWS = 1024


def _chunk(batch: int, rows_per_image: int) -> int:
  """The smallest divisor of `batch` whose images give `PATCH_ROWS` patch rows (else `batch`)."""
  return next((c for c in range(1, batch) if batch % c == 0 and c * rows_per_image >= PATCH_ROWS),
              batch)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _patch_product(x, kernel, geometry, precision):
  """The convolution, `_chunk` images at a time. Its gradient saves only the input and the
  kernel, not the patches (9 times the input for a 3x3 kernel): the backward pass gathers each
  chunk's patches again, in cache."""
  return _patch_product_fwd(x, kernel, geometry, precision)[0]


def _patch_product_fwd(x, kernel, geometry, precision):
  n = x.shape[0]
  matrix = kernel.reshape(-1, kernel.shape[-1])

  def product(xc):
    patches = _patches(xc, geometry)
    out = jnp.dot(patches.reshape(-1, matrix.shape[0]), matrix, precision=precision,
                  preferred_element_type=jnp.float32)
    return out.reshape(*patches.shape[:-1], matrix.shape[1])

  rows_per_image = math.prod(jax.eval_shape(product, x[:1]).shape[1:3])
  c = _chunk(n, rows_per_image)
  if c == n:
    out = product(x)
  else:
    out = lax.map(product, x.reshape(n // c, c, *x.shape[1:]))
    out = out.reshape(n, *out.shape[2:])
  return out.astype(x.dtype), (x, kernel)


def _patch_product_bwd(geometry, precision, residuals, g):
  x, kernel = residuals
  n = x.shape[0]
  matrix = kernel.reshape(-1, kernel.shape[-1])
  c = _chunk(n, g.shape[1] * g.shape[2])

  def grads(xc, gc):
    """(kernel gradient, input gradient) of one chunk, in float32."""
    patches = _patches(xc, geometry)
    rows = gc.reshape(-1, matrix.shape[1])
    dkernel = jnp.dot(patches.reshape(-1, matrix.shape[0]).T, rows, precision=precision,
                      preferred_element_type=jnp.float32)
    dpatches = jnp.dot(rows, matrix.T, precision=precision, preferred_element_type=jnp.float32)
    # Each patch's gradient added back where the patch came from: `_patches` transposed (its
    # float32 patches are never used, so never computed).
    _, scatter = jax.vjp(lambda t: _patches(t, geometry), xc.astype(jnp.float32))
    return dkernel, scatter(dpatches.reshape(patches.shape))[0]

  if c == n:
    dkernel, dx = grads(x, g)
  else:
    def add_chunk(dkernel, chunk):
      dkernel_chunk, dx_chunk = grads(*chunk)
      return dkernel + dkernel_chunk, dx_chunk

    # The sum starts per-device inside shard_map, as each chunk's gradient is.
    zero = _varying_like(jnp.zeros(matrix.shape, jnp.float32), x)
    dkernel, dx = lax.scan(add_chunk, zero, [a.reshape(n // c, c, *a.shape[1:]) for a in (x, g)])
    dx = dx.reshape(x.shape)
  return dx.astype(x.dtype), dkernel.reshape(kernel.shape).astype(kernel.dtype)


_patch_product.defvjp(_patch_product_fwd, _patch_product_bwd)


def max_pool(x, window: int):
  """`nn.max_pool(x, (window, window), strides=(window, window))`: non-overlapping windows,
  VALID padding (rows and columns past the last whole window are dropped), NHWC.

  On a CPU it is a reshape and a max, and its gradient goes to the first maximum of each
  window in row-major order, as XLA's and PyTorch's pooling gradients do; XLA:CPU otherwise
  computes that gradient with a scatter of index arrays the size of the input (replacing it made
  the airbench step at batch 1024 about 1.28x faster on a 2-core CPU). Elsewhere it calls
  `nn.max_pool`.
  """
  n, h, w, c = x.shape
  if h < window or w < window:  # Pooled to nothing: an error, not an empty map.
    raise ValueError(f'a {h}x{w} feature map is smaller than the {window}x{window} pooling '
                     'window')
  if jax.default_backend() != 'cpu':
    return nn.max_pool(x, (window, window), strides=(window, window))
  return _window_max(x[:, :h // window * window, :w // window * window], window)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _window_max(x, k):
  n, h, w, c = x.shape
  return x.reshape(n, h // k, k, w // k, k, c).max(axis=(2, 4))


def _window_max_fwd(x, k):
  out = _window_max(x, k)
  return out, (x, out)


def _window_max_bwd(k, residuals, g):
  x, out = residuals
  n, h, w, c = x.shape
  windows = x.reshape(n, h // k, k, w // k, k, c)
  taken = jnp.zeros(out.shape, bool)  # Whether an earlier position of the window was the max.
  rows = []
  for i in range(k):
    row = []
    for j in range(k):
      first = (windows[:, :, i, :, j] == out) & ~taken
      taken = taken | first
      row.append(jnp.where(first, g, jnp.zeros_like(g)))
    rows.append(jnp.stack(row, axis=3))  # [n, h/k, w/k, k, c]
  grad = jnp.stack(rows, axis=2)  # [n, h/k, k, w/k, k, c]
  return (grad.reshape(x.shape),)


_window_max.defvjp(_window_max_fwd, _window_max_bwd)


@jax.custom_jvp
def gelu_exact(x):
  """GELU in its exact form, x * Phi(x) (PyTorch's default; `nn.gelu(x, approximate=False)`).

  The derivative Phi(x) + x * phi(x) is written out instead of left to autodiff: jax 0.12
  differentiates `erfc` through a polynomial whose coefficients it does not mark as varying
  over the mesh axis, which fails inside `shard_map` ("Primitive polynomial requires varying
  manual axes to match"). The values are `nn.gelu`'s exactly; the gradient agrees with autodiff's
  to about 1e-7 in float32.
  """
  return x * _normal_cdf(x)


def _normal_cdf(x):
  return 0.5 * lax.erfc(-x * jnp.asarray(0.5 ** 0.5, x.dtype))


@gelu_exact.defjvp
def _gelu_exact_jvp(primals, tangents):
  x, = primals
  cdf = _normal_cdf(x)
  pdf = jnp.exp(-0.5 * x * x) * jnp.asarray((2 * jnp.pi) ** -0.5, x.dtype)
  return x * cdf, (cdf + x * pdf) * tangents[0]


def conv(module: nn.Module, **kwargs) -> ModuleDef:
  """The convolution constructor of a family, computing in `module.dtype`.

  Kernels are He (kaiming) normal with fan_out, as torchvision initialises its ResNets and the
  EfficientNet reference its convolutions; parameters are float32. `kwargs` bind further
  `nn.Conv` arguments (`use_bias`, `padding`, ...).
  """
  return functools.partial(
      nn.Conv, kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
      dtype=module.dtype, param_dtype=jnp.float32, conv_general_dilated=patch_conv, **kwargs)


def batch_norm(module: nn.Module, *, train: bool, epsilon: float = 1e-5) -> ModuleDef:
  """The BatchNorm constructor of a CNN family, bound from `module`'s fields.

  Parameters and running statistics stay float32 whatever the compute dtype;
  in training, batch statistics are averaged over `module.bn_axis_name`, so a
  step split across devices normalises with the global batch's statistics.
  """
  return functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=module.bn_momentum,
      epsilon=epsilon, dtype=module.dtype, param_dtype=jnp.float32,
      axis_name=module.bn_axis_name)


def zero_head(module: nn.Module, features):
  """float32 logits [B, module.num_classes] from a zero-initialised Dense layer named 'head'.

  A zero head makes every initial prediction uniform, so early training is not dominated by
  arbitrary confident logits; standard in big_vision and the ViT fine-tuning recipe, whose
  pretrained checkpoints are also fine-tuned from a freshly zeroed head.
  """
  logits = nn.Dense(module.num_classes, kernel_init=nn.initializers.zeros, dtype=module.dtype,
                    param_dtype=jnp.float32, name='head')(features)
  return logits.astype(jnp.float32)
