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


def predict(state, images, *, model, flip_tta: bool = False, translate_tta: int = 0,
            input_size: int = 32):
  """Logits of uint8 images, averaged over test-time views.

  With `flip_tta`, each view's logits are the mean of the view's and its mirror's. With
  `translate_tta` = t > 0, the untranslated view weighs 1/2 and the views shifted by t pixels
  up-left and down-right (of the reflect-padded inputs) 1/4 each.

  `state` is a `TrainState`, or anything with its `params`, `batch_stats`, `image_mean` and
  `image_std`.
  """
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  inputs = normalize.model_inputs(images, state.image_mean, state.image_std, input_size)

  def view(x):
    logits = model.apply(variables, x, train=False)
    if flip_tta:
      logits = (logits + model.apply(variables, x[:, :, ::-1], train=False)) / 2
    return logits

  logits = view(inputs)
  if translate_tta:
    t = translate_tta
    h, w = inputs.shape[1:3]
    padded = jnp.pad(inputs, ((0, 0), (t, t), (t, t), (0, 0)), mode='reflect')
    shifted = (view(padded[:, :h, :w]) + view(padded[:, 2 * t:2 * t + h, 2 * t:2 * t + w])) / 2
    logits = (logits + shifted) / 2
  return logits


def eval_step(state, images, labels, mask, *, model, local_batch_size: int,
              num_classes: int, flip_tta: bool = False, translate_tta: int = 0,
              input_size: int = 32):
  """Sums of loss, top-1/top-5 hits and per-class hits over a split (per-device code).

  Each device evaluates its own rows in batches; the sums are added across devices.
  """

  def batch_sums(batch):
    x, y, m = batch
    logits = predict(state, x, model=model, flip_tta=flip_tta, translate_tta=translate_tta,
                     input_size=input_size)
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
