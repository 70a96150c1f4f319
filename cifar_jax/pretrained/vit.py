"""The ViT `.npz` checkpoints' names and the resampling of their position embeddings.

The original ViT and AugReg releases flatten their flax parameter tree with '/' separators, and
`cifar_jax.models.vit` uses the same module names, so a name is the parameter's path.
"""
import jax
import numpy as np


def npz_name(path: tuple[str, ...]) -> str:
  """E.g. ('params', 'Transformer', 'encoder_norm', 'scale') -> 'Transformer/encoder_norm/scale'."""
  return '/'.join(path[1:])


def npz_value(path: tuple[str, ...], array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """The file's array, with the position embedding resampled to the model's patch grid."""
  if path[-1] == 'pos_embedding' and array.shape != shape:
    return resize_position_embedding(array, shape)
  return array


def resize_position_embedding(embedding: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """Bilinearly resamples a [1, extra + g*g, D] embedding to `shape` = [1, extra + G*G, D].

  The patch tokens' embeddings form a g x g grid; they are resampled as an image to G x G, as
  when fine-tuning at a higher resolution than pre-training (Dosovitskiy et al., 2021, sec. 3.2).
  The leading class-token embedding (when both have one) is kept as it is.

  Raises:
    ValueError: when either token count is not a square grid plus the same leading tokens.
  """
  (_, old_tokens, width), (_, new_tokens, new_width) = embedding.shape, shape
  extra = new_tokens - int(np.sqrt(new_tokens)) ** 2  # Leading tokens: 1 with a class token.
  old_grid, new_grid = int(np.sqrt(old_tokens - extra)), int(np.sqrt(new_tokens - extra))
  if old_grid**2 + extra != old_tokens or width != new_width:
    raise ValueError(f'cannot resample a position embedding of shape {embedding.shape} to '
                     f'{shape}: not {extra} leading tokens plus a square grid of the same width')
  grid = embedding[0, extra:].reshape(old_grid, old_grid, width)
  grid = np.asarray(jax.image.resize(grid, (new_grid, new_grid, width), 'bilinear'))
  return np.concatenate([embedding[0, :extra], grid.reshape(-1, width)])[None]
