"""Dynamic loss scaling for float16 compute (per-device code, in the update half of the step).

float16 keeps about 3 significant digits like bfloat16 but only 5 exponent bits: gradients
below 6e-8 flush to zero, values above 65504 overflow to infinity. Multiplying the loss by a
large scale before differentiating lifts the small gradients into range; the gradients are
divided by it again before the optimiser sees them. When the scale is too large, some
gradient overflows: the step is then skipped (parameters, optimiser state, BatchNorm
statistics, EMA and lookahead stay as they were) and the scale is divided by `factor`. After
`growth_interval` steps in a row with finite gradients it is multiplied by `factor`, so it
stays near the largest scale that does not overflow. This is the scheme of Micikevicius et
al., "Mixed Precision Training" (arXiv 1710.03740), as PyTorch's GradScaler and jmp run it.

A skipped step still counts as a train step (its batch is used up; the data order, the
augmentation and `hem.start_fraction` go by the train step), but the optimiser's own step
count, which the learning-rate schedule reads, does not advance, as with
`optax.apply_if_finite`: the schedule runs `skipped_steps` behind the train step.

At the floor (`min`), a non-finite step is no longer an overflow the scale can cure: it is
applied like any other, the parameters become non-finite, and the loop stops the run as it
stops any diverging run.
"""
import flax
import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

from cifar_jax.errors import UserError
from cifar_jax.sharding import DATA_AXIS


@flax.struct.dataclass
class LossScaleState:
  """The scaler's state, part of the train state, so it is checkpointed and resumes exactly."""
  scale: jax.Array  # float32: the global batch's loss is multiplied by it.
  finite_steps: jax.Array  # int32: steps with finite gradients since the scale last changed.
  skipped_steps: jax.Array  # int32: steps skipped in the whole run.


def enabled(model_config: ml_collections.ConfigDict) -> bool:
  """Whether the model computes in float16, so its gradients need loss scaling."""
  return 'dtype' in model_config and model_config.dtype == 'float16'


def check_config(loss_scale: ml_collections.ConfigDict) -> None:
  """Raises a UserError for a `config.loss_scale` field no run can use (checked whatever the
  dtype, as every group is)."""
  if not 0 < loss_scale.min <= loss_scale.initial < float('inf'):
    raise UserError(f'config.loss_scale.initial={loss_scale.initial} and min={loss_scale.min} '
                    'must satisfy 0 < min <= initial < inf.')
  if not loss_scale.factor > 1:
    raise UserError(f'config.loss_scale.factor must be > 1, got {loss_scale.factor}.')
  if not (isinstance(loss_scale.growth_interval, int) and loss_scale.growth_interval >= 1):
    raise UserError(f'config.loss_scale.growth_interval must be a positive number of steps, '
                    f'got {loss_scale.growth_interval!r}.')


def init(loss_scale: ml_collections.ConfigDict) -> LossScaleState:
  return LossScaleState(scale=jnp.array(loss_scale.initial, jnp.float32),
                        finite_steps=jnp.array(0, jnp.int32),
                        skipped_steps=jnp.array(0, jnp.int32))


def all_finite_on_every_device(*trees) -> jax.Array:
  """Whether every floating-point number of `trees` is finite on every device of the data
  axis: the same bool on all of them, so they all skip, or all apply, the same step."""
  leaves = [x for tree in trees for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  local = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
  return lax.pmin(local.astype(jnp.int32), DATA_AXIS) == 1


def update(state: LossScaleState, finite, *, growth_interval: int, factor: float,
           minimum: float) -> tuple[LossScaleState, jax.Array]:
  """The scaler after a step whose gradients were `finite` (or not), and whether to skip it."""
  skip = ~finite & (state.scale > minimum)
  finite_steps = jnp.where(finite, state.finite_steps + 1, 0)
  grow = finite_steps >= growth_interval
  grown = state.scale * factor
  scale = jnp.where(finite,
                    jnp.where(grow & jnp.isfinite(grown), grown, state.scale),
                    jnp.maximum(state.scale / factor, minimum))
  new_state = LossScaleState(scale=scale.astype(jnp.float32),
                             finite_steps=jnp.where(grow, 0, finite_steps).astype(jnp.int32),
                             skipped_steps=state.skipped_steps + skip.astype(jnp.int32))
  return new_state, skip
