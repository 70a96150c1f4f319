"""Evaluation: the model's prediction, and per-device sums of metrics over a whole split.

Used by the training loop and by the commands on trained workdirs (`cifar_jax.results`).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from cifar_jax.augment import normalize
from cifar_jax.sharding import DATA_AXIS


def predict(state, images, *, model, flip_tta: bool = False, input_size: int = 32):
  """Logits of uint8 images; with `flip_tta`, the mean of the image's and its mirror's.

  `state` is a `TrainState`, or anything with its `params`, `batch_stats`, `image_mean` and
  `image_std`.
  """
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  inputs = normalize.model_inputs(images, state.image_mean, state.image_std, input_size)
  logits = model.apply(variables, inputs, train=False)
  if flip_tta:
    logits = (logits + model.apply(variables, inputs[:, :, ::-1], train=False)) / 2
  return logits


def eval_step(state, images, labels, mask, *, model, local_batch_size: int,
              num_classes: int, flip_tta: bool = False, input_size: int = 32):
  """Sums of loss, top-1/top-5 hits and per-class hits over a split (per-device code).

  Each device evaluates its own rows in batches; the sums are added across devices.
  """

  def batch_sums(batch):
    x, y, m = batch
    logits = predict(state, x, model=model, flip_tta=flip_tta, input_size=input_size)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    top5 = lax.top_k(logits, min(5, num_classes))[1]
    hit1 = (top5[:, 0] == y) & m
    hit5 = jnp.any(top5 == y[:, None], axis=-1) & m
    one_hot = jax.nn.one_hot(y, num_classes, dtype=jnp.int32) * m[:, None]
    return {
        'loss_sum': jnp.sum(jnp.where(m, losses, 0.0)),
        'correct': jnp.sum(hit1), 'correct_top5': jnp.sum(hit5), 'count': jnp.sum(m),
        'class_correct': jnp.sum(one_hot * hit1[:, None], 0), 'class_count': jnp.sum(one_hot, 0),
    }

  batches = jax.tree.map(
      lambda a: a.reshape(-1, local_batch_size, *a.shape[1:]), (images, labels, mask))
  per_batch = lax.map(batch_sums, batches)
  return lax.psum(jax.tree.map(lambda a: jnp.sum(a, 0), per_batch), DATA_AXIS)


def summarize_eval(sums) -> dict:
  """Evaluation sums -> loss, accuracy, top-5 accuracy, per-class accuracy, count."""
  sums = jax.device_get(sums)
  count = int(sums['count'])
  return {
      'loss': float(sums['loss_sum']) / count,
      'accuracy': float(sums['correct']) / count,
      'top5_accuracy': float(sums['correct_top5']) / count,
      'num_examples': count,
      'per_class_accuracy': (sums['class_correct'] / np.maximum(sums['class_count'], 1)).tolist(),
  }
