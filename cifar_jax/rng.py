"""Named random streams: every random draw of a run derives from the seed by a name.

`stream(key, 'mixing')` is the key of the stream called 'mixing' under `key`. A stream's key
depends on its name alone, so adding, removing or reordering streams leaves the others' draws
as they were, and runs stay comparable across versions.
"""
import jax

# The legacy derivation: each name was one of `n` keys split from its parent, by position.
_POSITIONS = {
    'init': (2, 0), 'run': (2, 1),  # Under the seed.
    'data_order': (2, 0), 'steps': (2, 1),  # Under the run's key.
    'crop_flip': (4, 0), 'randaugment': (4, 1), 'mixing': (4, 2), 'dropout': (4, 3),  # Step key.
    'crop': (3, 0), 'flip': (3, 1), 'cutout': (3, 2),  # Under an example's crop_flip key.
}


def stream(key, name: str):
  """The key of the stream `name` under `key`."""
  n, i = _POSITIONS[name]
  return jax.random.split(key, n)[i]
