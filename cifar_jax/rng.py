"""Named random streams: every random draw of a run derives from the seed by a name.

`stream(key, 'mixing')` is the key of the stream called 'mixing' under `key`: `key` with a
number folded in that is computed from the name alone (its CRC-32). Adding, removing or
reordering streams therefore leaves the other streams' draws as they were, and runs stay
comparable across versions of the code.

The streams of a run: under the seed, 'init' (parameters) and 'run' (the state's key); under
the run's key, 'data_order' (one permutation per epoch), 'steps' (one key per step, by step
number) and 'alternating_flip' (one bit per training example, by row); under a step's key,
'crop_flip', 'color_jitter', 'randaugment', 'mixing' and 'dropout'; under an example's
'crop_flip' key, 'crop', 'flip' and 'cutout'; under an example's 'color_jitter' key, 'order'
and 'factors'.
"""
import zlib

import jax


def stream(key, name: str):
  """The key of the stream `name` under `key` (typed or raw)."""
  return jax.random.fold_in(key, zlib.crc32(name.encode()))
